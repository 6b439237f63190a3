"""Stage ``build_tokenizer``: a BPE tokenizer trained on the generated corpus (HF format)."""
from __future__ import annotations

from pathlib import Path

from entroflow import tokenizer as tok_lib
from entroflow.data import tables
from entroflow.data.tables import PRETRAINING_FILES, corpus_texts
from tasks._stage import StageOutput, stage


@stage("build_tokenizer", code=[tok_lib, tables], reads={"generate_data": PRETRAINING_FILES})
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
