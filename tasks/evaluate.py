"""Stage ``evaluate``: answers, correctness and accuracy metrics of the rollouts."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow import answers, metrics
from tasks._stage import StageOutput, stage
from entroflow.data import tables
from entroflow.data.tables import EVAL_FILES, read_eval_table, read_world

SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("decoding", pa.string(), nullable=False),
        pa.field("level", pa.int32(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("mean_entropy", pa.float32(), nullable=False),
        pa.field("style", pa.string(), nullable=False),  # worked | direct | other
    ],
    metadata={"schema_version": "1", "table": "evaluation"},
)


def completion_style(text: str) -> str:
    """Whether a synthetic completion worked the steps (``a+b=c,...#c``) or answered directly."""
    t = text.strip()
    if t.startswith("#"):
        return "direct"
    return "worked" if "=" in t else "other"


@stage("evaluate", code=[answers, metrics, tables], main_table="evaluation.parquet", reads={"generate_data": EVAL_FILES})
def evaluate(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    data_dir = parents["generate_data"]
    fmt = read_world(data_dir)["answer_format"]
    problems = {r["id"]: r for r in read_eval_table(data_dir, ["id", "answer", "level"]).to_pylist()}
    rollouts = pq.read_table(parents["rollout"] / "rollouts.parquet",
                             columns=["prompt_id", "sample_idx", "decoding", "text", "n_tokens", "entropies"])
    rows = []
    for r in rollouts.to_pylist():
        gold = problems[r["prompt_id"]]["answer"]
        pred = answers.extract(r["text"], fmt)
        ent = r["entropies"]
        rows.append({
            "prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"], "decoding": r["decoding"],
            "level": problems[r["prompt_id"]]["level"], "answer": pred, "gold": gold,
            "correct": answers.is_correct(pred, gold, fmt), "n_tokens": r["n_tokens"],
            "mean_entropy": sum(ent) / len(ent) if ent else 0.0, "style": completion_style(r["text"]),
        })
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    out.table("evaluation", table)
    summary = metrics.summarise(table, config["evaluate"]["ks"], fmt)
    sampled = [r for r in rows if r["decoding"] == "sampled"]
    greedy = [r for r in rows if r["decoding"] == "greedy"]
    summary["sampled_direct_fraction"] = sum(r["style"] == "direct" for r in sampled) / max(1, len(sampled))
    summary["greedy_direct_fraction"] = sum(r["style"] == "direct" for r in greedy) / max(1, len(greedy))
    kmax = max(k for k in config["evaluate"]["ks"])
    if f"maj@{kmax}" in summary and "greedy_acc" in summary:
        summary["self_consistency_gain"] = summary[f"maj@{kmax}"] - summary["greedy_acc"]
    out.log(**summary)
