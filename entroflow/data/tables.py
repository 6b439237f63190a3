"""The data stage's output and how later stages read it.

``generate_data`` writes one Parquet file per table (``reasoning``, ``word_problems``,
``external``, ``corpus``, ``kg_*``, ``ood``) and ``world.json``, which names the evaluated table,
its answer format and, for an external dataset, the split its evaluation rows carry. These
readers are the only way the stages downstream open those files, and they are part of each
reader's code version, so a change to how data is read recomputes what reads it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORLD_FILE = "world.json"
# What the stages downstream read of the data output (their ``reads=``): the pretraining texts,
# and the evaluated problems. A change elsewhere (the OOD suites, say) leaves those stages cached.
PRETRAINING_FILES = ("reasoning.parquet", "corpus.parquet", "paragraphs.parquet", "kg_facts.parquet")
EVAL_FILES = (WORLD_FILE, "reasoning.parquet", "word_problems.parquet", "external.parquet")


def read_world(data_dir: Path) -> dict:
    """``{"answer_format", "eval_table", "eval_split"}`` of a generate_data output: the answer
    format of the evaluated table, its name, and for an external dataset the split its
    evaluation rows carry (None: the rollout's ``split``)."""
    return json.loads((data_dir / WORLD_FILE).read_text())


def read_eval_table(data_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """The table a run evaluates and trains on: the arithmetic problems, the word problems, or
    the external dataset (its ``train`` rows from ``data.external_train``)."""
    return pq.read_table(data_dir / f"{read_world(data_dir)['eval_table']}.parquet", columns=columns)


def eval_problems(data_dir: Path, split: str, n_prompts: int | None) -> pa.Table:
    """The prompts a run evaluates: ``split`` of the evaluated table (an external dataset's rows
    are its configured split, whatever ``split`` says). ``n_prompts`` takes the first problems of
    every level in turn, so a small evaluation still covers each difficulty level."""
    world = read_world(data_dir)
    table = read_eval_table(data_dir)
    table = table.filter(pa.compute.equal(table["split"], world.get("eval_split") or split))
    if not n_prompts or n_prompts >= table.num_rows:
        return table
    by_level: dict[int, list[int]] = {}
    for i, lv in enumerate(table["level"].to_pylist()):
        by_level.setdefault(lv, []).append(i)
    picked = sorted(_round_robin(list(by_level.values()))[:n_prompts])
    return table.take(picked)


def _round_robin(groups: list[list[int]]) -> list[int]:
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def corpus_texts(data_dir: Path) -> dict[str, list[str]]:
    """Training texts of the world by source: reasoning prompt+completion, grammar (paragraphs
    when ``data.corpus.paragraph_sentences`` is set, else sentences), KG facts."""
    texts: dict[str, list[str]] = {}
    r = pq.read_table(data_dir / "reasoning.parquet", columns=["split", "prompt", "completion"]).to_pylist()
    texts["reasoning"] = [x["prompt"] + x["completion"] for x in r if x["split"] == "train"]
    grammar_file = next((f for f in ("paragraphs.parquet", "corpus.parquet") if (data_dir / f).exists()), None)
    if grammar_file:
        c = pq.read_table(data_dir / grammar_file, columns=["split", "text"]).to_pylist()
        texts["corpus"] = [x["text"] for x in c if x["split"] == "train"]
    if (data_dir / "kg_facts.parquet").exists():
        f = pq.read_table(data_dir / "kg_facts.parquet", columns=["template_split", "text"]).to_pylist()
        texts["kg"] = [x["text"] for x in f if x["template_split"] == "train"]
    return texts


WATERMARK_FILES = (WORLD_FILE, "corpus.parquet", "reasoning.parquet", "word_problems.parquet", "external.parquet")


def watermark_prompts(data_dir: Path, source: str, n: int) -> pa.Table:
    """Held-out prompts of the watermark flow with a human-written continuation of each:
    ``{"id", "prompt", "human"}``.

    ``corpus``: prompt i is the i-th held-out grammar sentence and its human text the sentences
    that follow it in the test split (independent draws from the grammar, so any run of them is
    a paragraph the grammar could have produced); ``eval``: the evaluated table's test problems
    with their reference solutions (English word problems for a pretrained model)."""
    if source == "corpus":
        c = pq.read_table(data_dir / "corpus.parquet", columns=["split", "text"])
        texts = c.filter(pa.compute.equal(c["split"], "test"))["text"].to_pylist()
        if len(texts) < 2:
            raise ValueError("watermark: the corpus has fewer than 2 held-out sentences (data.corpus.n_test)")
        n = min(n, len(texts))
        rows = [{"id": f"wm-{i:05d}", "prompt": texts[i],
                 "human": " ".join(texts[(i + j) % len(texts)] for j in range(1, 13))} for i in range(n)]
        return pa.Table.from_pylist(rows)
    world = read_world(data_dir)
    t = read_eval_table(data_dir, ["id", "split", "prompt", "completion"])
    t = t.filter(pa.compute.equal(t["split"], world.get("eval_split") or "test"))
    t = t.slice(0, n)
    return pa.table({"id": t["id"], "prompt": t["prompt"], "human": t["completion"]})
