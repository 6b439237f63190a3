"""Stage ``unlearn``: one method setting unlearns the forget set from the fine-tuned base
(entroflow/unlearn/trainer.py, losses in entroflow/unlearn/losses.py). The forget pairs are the
forget triples under their training phrasings; the retain pairs those of every retained triple."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from entroflow import model as model_lib
from entroflow.progress import progress_bar
from entroflow.unlearn import losses, probes, trainer
from tasks._stage import StageOutput, stage


def training_pairs(data: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(forget, retain) (prompt, answer) pairs of the training phrasings."""
    split = {r["triple_id"]: r["split"] for r in pq.read_table(data / "splits.parquet", columns=["triple_id", "split"]).to_pylist()}
    facts = pq.read_table(data / "kg_facts.parquet", columns=["triple_id", "template_split", "prompt", "answer"]).to_pylist()
    train = [f for f in facts if f["template_split"] == "train"]
    forget = [(f["prompt"], f["answer"]) for f in train if split[f["triple_id"]] == "forget"]
    retain = [(f["prompt"], f["answer"]) for f in train if split[f["triple_id"]] not in ("forget", "holdout")]
    return forget, retain


@stage("unlearn", code=[trainer, losses, probes, model_lib])
def unlearn(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    s, run = config["setting"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), "float32", run["device"])
    forget, retain = training_pairs(parents["unlearn_data"])
    with progress_bar(f"unlearn {s['name']}", total=s["steps"], unit="step") as advance:
        def on_step(step: int, rec: dict) -> None:
            advance(1, loss=rec["loss"])
            out.log_step(step, loss=rec["loss"], grad_norm=rec["grad_norm"])

        history = trainer.unlearn(model, tokenizer, s["method"], forget, retain, s["steps"], s["lr"], s["batch_size"],
                                  config["seed"], s["hp"], on_step)
    model.save_pretrained(str(out.dir / "model"))
    tokenizer.save_pretrained(str(out.dir / "model"))
    out.log(final_loss=history[-1]["loss"], unlearn_seconds=sum(h["seconds"] for h in history),
            forget_pairs=len(forget), retain_pairs=len(retain))
