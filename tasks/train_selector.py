"""Stage ``train_selector``: LTW's selector network, trained per seed on the frozen base model
(entroflow/watermark/ltw.py: the differentiable rollout, the quality and detectability losses
and their MGDA combination). Logs both losses and the MGDA weight per step."""
from __future__ import annotations

from pathlib import Path

from entroflow import model as model_lib
from entroflow.data import tables
from entroflow.data.tables import WATERMARK_FILES
from entroflow.progress import progress_bar
from entroflow.watermark import green, keys, ltw, schemes
from tasks._stage import StageOutput, stage


@stage("train_selector", code=[model_lib, tables, green, ltw, schemes, keys], reads={"generate_data": WATERMARK_FILES})
def train_selector(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    cfg, scheme, run = config["ltw"], config["scheme"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), "float32", run["device"])
    fmt_prompts = _train_prompts(parents["generate_data"], config, tokenizer)
    g = schemes.green_list(scheme, model.config.vocab_size, keys.lookup(config["key"]))
    encoder = ltw.ContextEncoder.load(cfg["embedding_model"], tokenizer, vocab_size=model.config.vocab_size,
                                      device=model.device)
    n_seeds = len(config["seeds"])
    with progress_bar("train_selector", total=cfg["steps"] * n_seeds, unit="step") as advance:
        for i, seed in enumerate(config["seeds"]):
            def on_step(rec: dict) -> None:
                advance(1)
                out.log_step(i * cfg["steps"] + rec["step"], **{f"s{seed}/{k}" if n_seeds > 1 else k: v
                                                                  for k, v in rec.items() if k != "step"})

            selector, history = ltw.train_selector(
                model, tokenizer, fmt_prompts, g, scheme["delta"], encoder, steps=cfg["steps"],
                batch_size=cfg["batch_size"], new_tokens=cfg["new_tokens"], lr=cfg["lr"], seed=seed,
                entropy_centre=cfg["entropy_centre"], feature_grad=cfg["feature_grad"], k=cfg["k"], device=model.device, on_step=on_step)
            ltw.save_selector(selector, out.dir / f"selector_s{seed}",
                              {"seed": seed, "scheme": scheme["name"], "embedding_model": cfg["embedding_model"],
                               "encoder_fingerprint": encoder.fingerprint})
            last = history[-min(10, len(history)):]
            out.log(**{f"s{seed}/{k}_end": sum(r[k] for r in last) / len(last)
                       for k in ("loss_quality", "loss_detect", "mgda_alpha", "selected_mean")})


def _train_prompts(data_dir: Path, config: dict, tokenizer) -> list[list[int]]:
    """Token ids of the training prompts: the corpus' *train* sentences (or the evaluated table's
    train problems), never the held-out prompts the flow evaluates on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from entroflow.rollout import PromptFormat

    fmt = PromptFormat.for_tokenizer(tokenizer, **config["prompt"])
    if config["prompts"] == "corpus":
        c = pq.read_table(data_dir / "corpus.parquet", columns=["split", "text"])
        texts = c.filter(pa.compute.equal(c["split"], "train"))["text"].to_pylist()[:2000]
    else:
        t = tables.read_eval_table(data_dir, ["split", "prompt"])
        texts = t.filter(pa.compute.equal(t["split"], "train"))["prompt"].to_pylist()[:2000]
        if not texts:
            raise ValueError("train_selector: the evaluated table has no train split to train LTW's selector on")
    return fmt.encode(tokenizer, [fmt.render(tokenizer, x) for x in texts])
