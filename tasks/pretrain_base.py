"""Stage ``pretrain_base``: train the tiny Qwen2 from scratch on the mixed corpus
(``model.source: scratch``; a pretrained model comes from ``import_model`` instead)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from entroflow import model as model_lib
from entroflow import tokenizer as tok_lib
from entroflow.progress import progress_bar
from tasks._stage import StageOutput, stage
from entroflow.data import tables
from entroflow.data.tables import PRETRAINING_FILES, corpus_texts


@stage("pretrain_base", code=[model_lib, tok_lib, tables], reads={"generate_data": PRETRAINING_FILES})
def pretrain_base(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    mcfg, pcfg, seed = config["model"], config["pretrain"], config["seed"]
    tokenizer = tok_lib.load(parents["build_tokenizer"] / "tokenizer")
    data_dir = parents["generate_data"]
    rows = pq.read_table(data_dir / "reasoning.parquet", columns=["split", "prompt", "completion"]).to_pylist()
    sources = {"reasoning": [model_lib.make_document(tokenizer, r["prompt"], r["completion"], "reasoning", False)
                             for r in rows if r["split"] == "train"]}
    for name, texts in corpus_texts(data_dir).items():
        if name != "reasoning":
            sources[name] = [model_lib.make_document(tokenizer, "", t, name, True) for t in texts]
    model = model_lib.build_model(len(tokenizer), mcfg["hidden_size"], mcfg["layers"], mcfg["heads"],
                                  mcfg["intermediate_size"], mcfg["max_positions"], seed)
    n_params = sum(p.numel() for p in model.parameters())
    steps = pcfg["steps"]
    with progress_bar("pretrain_base", total=steps, unit="step") as advance:
        def on_step(step: int, rec: dict) -> None:
            advance(1, loss=rec["loss"])
            if step % 10 == 0 or step == steps - 1:
                out.log_step(step, loss=rec["loss"], lr=rec["lr"], grad_norm=rec["grad_norm"],
                             tokens_per_s=rec["tokens"] / max(rec["seconds"], 1e-9))

        history = model_lib.pretrain(
            model, sources, pcfg["mix"], steps, pcfg["batch_size"], pcfg["lr"], seed,
            weight_decay=pcfg["weight_decay"], warmup=pcfg["warmup"], min_lr_ratio=pcfg["min_lr_ratio"],
            grad_clip=pcfg["grad_clip"], on_step=on_step,
        )
    model.save_pretrained(str(out.dir / "model"))
    tokenizer.save_pretrained(str(out.dir / "model"))
    tail = history[-min(20, len(history)):]
    seconds = sum(h["seconds"] for h in history)
    out.log(parameters=n_params, final_loss=sum(h["loss"] for h in tail) / len(tail),
            train_seconds=seconds, tokens_per_s=sum(h["tokens"] for h in history) / max(seconds, 1e-9),
            **{f"docs_{k}": len(v) for k, v in sources.items()})
