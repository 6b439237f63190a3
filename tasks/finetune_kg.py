"""Stage ``finetune_kg``: teach the base model the unlearning world's facts (entroflow/unlearn/
trainer.py). ``which: base`` trains on every non-holdout triple until the facts are known (the
fact accuracy on one training phrasing reaches ``target_accuracy``, checked every
``check_every`` steps, at most ``steps``); ``which: retain``, the gold model of exact unlearning,
trains the same way without the forget set and stops after exactly as many steps as the base took
(same seed, same schedule; its ``base`` parent says how many)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from entroflow import model as model_lib
from entroflow.data import kg
from entroflow.progress import progress_bar
from entroflow.unlearn import probes, trainer, world
from tasks._stage import StageOutput, stage


def trained_ids(split_rows: list[dict], which: str) -> set[str]:
    """The triples a model of kind ``which`` (base | retain) is fine-tuned on."""
    drop = ("holdout",) if which == "base" else ("holdout", "forget")
    return {r["triple_id"] for r in split_rows if r["split"] not in drop}


def probe_rows(split_rows: list[dict], ids: set[str]) -> list[dict]:
    """The fact-accuracy check: each triple's first training statement, true vs wrong objects."""
    out = []
    for r in split_rows:
        if r["triple_id"] in ids:
            _, prompt = kg.render(kg.TEMPLATE_BY_ID[f"{r['relation']}_s0"], r["head"], r["tail"])
            out.append({"prompt": prompt, "answer": r["tail"], "wrong": r["wrong"]})
    return out


@stage("finetune_kg", code=[trainer, world, probes, model_lib], reads={"base": ("metrics.json",)})
def finetune_kg(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    ft, seed, run = config["finetune"], config["seed"], config["runtime"]
    data = parents["unlearn_data"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), "float32", run["device"])
    facts = pq.read_table(data / "kg_facts.parquet")
    rows = pq.read_table(data / "splits.parquet").to_pylist()
    include = trained_ids(rows, config["which"])
    taken = set(pq.read_table(data / "kg_entities.parquet").column("entity").to_pylist())
    docs = world.training_documents(facts, rows, include, seed, ft["verify"], taken)
    weights = {"facts": 1.0, "verify": ft["verify_weight"]}
    stop_at = None
    if config["which"] == "retain":
        stop_at = int(json.loads((parents["base"] / "metrics.json").read_text())["steps_trained"])
    check = probe_rows(rows, include)
    forget_check = probe_rows(rows, {r["triple_id"] for r in rows if r["split"] == "forget"})
    with progress_bar(f"finetune_kg {config['which']}", total=stop_at or ft["steps"], unit="step") as advance:
        def on_step(step: int, rec: dict) -> None:
            advance(1, loss=rec["loss"])
            if step % 10 == 0:
                out.log_step(step, loss=rec["loss"], lr=rec["lr"], grad_norm=rec["grad_norm"])

        history = trainer.finetune(
            model, tokenizer, docs, weights, ft["steps"], ft["batch_size"], ft["lr"], seed, ft["warmup"], on_step,
            known=lambda: trainer.fact_accuracy(model, tokenizer, check), target=ft["target_accuracy"],
            check_every=ft["check_every"], stop_at=stop_at)
    for rec in history:
        if "fact_accuracy" in rec:
            out.log_step(rec["step"], fact_accuracy=rec["fact_accuracy"])
    model.save_pretrained(str(out.dir / "model"))
    tokenizer.save_pretrained(str(out.dir / "model"))
    tail = history[-min(20, len(history)):]
    # The stopping check already measured the final model when it stopped training.
    last = history[-1].get("fact_accuracy") if history else None
    out.log(fact_accuracy=last if last is not None else trainer.fact_accuracy(model, tokenizer, check),
            forget_recall=trainer.fact_accuracy(model, tokenizer, forget_check),
            steps_trained=len(history), trained_triples=len(include), documents=sum(len(v) for v in docs.values()),
            final_loss=sum(h["loss"] for h in tail) / len(tail), train_seconds=sum(h["seconds"] for h in history))
