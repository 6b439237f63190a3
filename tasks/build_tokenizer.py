"""Stage ``build_tokenizer``: a BPE tokenizer trained on the generated corpus (HF format)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from entroflow import tokenizer as tok_lib
from tasks._stage import StageOutput, stage
from tasks.generate_data import PRETRAINING_FILES


def corpus_texts(data_dir: Path) -> dict[str, list[str]]:
    """Training texts of the world by source: reasoning prompt+completion, grammar, KG facts."""
    texts: dict[str, list[str]] = {}
    r = pq.read_table(data_dir / "reasoning.parquet", columns=["split", "prompt", "completion"]).to_pylist()
    texts["reasoning"] = [x["prompt"] + x["completion"] for x in r if x["split"] == "train"]
    if (data_dir / "corpus.parquet").exists():
        c = pq.read_table(data_dir / "corpus.parquet", columns=["split", "text"]).to_pylist()
        texts["corpus"] = [x["text"] for x in c if x["split"] == "train"]
    if (data_dir / "kg_facts.parquet").exists():
        f = pq.read_table(data_dir / "kg_facts.parquet", columns=["template_split", "text"]).to_pylist()
        texts["kg"] = [x["text"] for x in f if x["template_split"] == "train"]
    return texts


@stage("build_tokenizer", code=[tok_lib], reads={"generate_data": PRETRAINING_FILES})
def build_tokenizer(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    texts = corpus_texts(parents["generate_data"])
    everything = [t for ts in texts.values() for t in ts]
    tokenizer = tok_lib.train_tokenizer(everything, config["tokenizer"]["vocab_size"])
    # The tokenizer must round-trip every kind of text exactly, or answers cannot be parsed back.
    for source, ts in texts.items():
        for t in ts[:200]:
            back = tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True)
            if back != t:
                raise ValueError(f"tokenizer does not round-trip {source} text {t!r} -> {back!r}")
        lengths = [len(tokenizer.encode(t)) for t in ts[:2000]]
        out.log(**{f"tokens_per_doc_{source}": sum(lengths) / max(1, len(lengths))})
    tok_lib.save(tokenizer, out.dir / "tokenizer")
    out.log(vocab_size=len(tokenizer))
