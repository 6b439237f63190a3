"""Stage ``watermark_quality``: what a watermark costs, for one scheme (or for ``none``).

* perplexity of the completions under the oracle model, conditional on the prompt (the KGW
  convention: only completion tokens are scored), per seed;
* diversity of the completions (distinct-n over the set, SimCTG rep-n and log-diversity per text;
  formulas in entroflow/watermark/quality.py);
* task utility: greedy and sampled accuracy on the reasoning test problems answered under the
  watermark (watermark_generate's ``task`` table), checked like the evaluate stage does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entroflow import answers
from entroflow import model as model_lib
from entroflow.data import tables
from entroflow.data.tables import EVAL_FILES, read_eval_table, read_world
from entroflow.watermark import quality
from tasks._stage import StageOutput, stage


@stage("watermark_quality", code=[model_lib, tables, quality, answers], main_table="quality.parquet",
       reads={"generate_data": EVAL_FILES})
def watermark_quality(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    gen = config["generate"]
    oracle, _ = model_lib.load_model(model_lib.resolve_model_dir(parents["oracle"]), "float32", "auto")
    comp = pq.read_table(parents["generated"] / "completions.parquet")
    comp = comp.filter(pa.compute.is_in(comp["variant"], pa.array(["watermarked", "unwatermarked"])))
    rows = comp.select(["prompt_id", "wm_seed", "prompt_token_ids", "token_ids"]).to_pylist()
    ppl = quality.conditional_perplexity(oracle, [r["prompt_token_ids"] for r in rows], [r["token_ids"] for r in rows],
                                         batch_size=gen["batch_size"], device=oracle.device)
    reps = {n: [quality.repetition_n(r["token_ids"], n) for r in rows] for n in (2, 3, 4)}
    logdiv = [quality.log_diversity(r["token_ids"]) for r in rows]
    out.table("quality", pa.table({
        "prompt_id": [r["prompt_id"] for r in rows], "wm_seed": [r["wm_seed"] for r in rows],
        "perplexity": np.asarray(ppl, dtype=float), "log_diversity": logdiv,
        **{f"rep_{n}": v for n, v in reps.items()}}))

    data_dir = parents["generate_data"]
    fmt = read_world(data_dir)["answer_format"]
    gold = {r["id"]: r["answer"] for r in read_eval_table(data_dir, ["id", "answer"]).to_pylist()}
    task = pq.read_table(parents["generated"] / "task.parquet", columns=["prompt_id", "decoding", "wm_seed", "text"])
    correct = {}
    for r in task.to_pylist():
        ok = answers.is_correct(answers.extract(r["text"], fmt), gold[r["prompt_id"]], fmt)
        correct.setdefault((r["wm_seed"], r["decoding"]), []).append(ok)

    seeds = sorted({r["wm_seed"] for r in rows})
    per_seed = []
    for s in seeds:
        idx = [i for i, r in enumerate(rows) if r["wm_seed"] == s]
        toks = [rows[i]["token_ids"] for i in idx]
        agg = quality.aggregate_perplexity(np.asarray(ppl)[idx])
        m = {"perplexity": agg["ppl"], "perplexity_median": agg["ppl_median"],
             **{f"distinct_{n}": quality.distinct_n(toks, n) for n in (1, 2, 3)},
             **{f"rep_{n}": float(np.mean([reps[n][i] for i in idx])) for n in (2, 3, 4)},
             "log_diversity": float(np.mean([logdiv[i] for i in idx])),
             "task_greedy_acc": float(np.mean(correct.get((s, "greedy"), [np.nan]))),
             "task_sampled_acc": float(np.mean(correct.get((s, "sampled"), [np.nan])))}
        per_seed.append(m)
    for k in per_seed[0]:
        vals = np.array([m[k] for m in per_seed], dtype=float)
        out.log(**{k: float(np.mean(vals))})
        if len(vals) > 1:
            out.log(**{f"{k}/sd": float(np.std(vals, ddof=1))})
        out.log(**{f"s{s}/{k}": float(v) for s, v in zip(seeds, vals)})
