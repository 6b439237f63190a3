"""Stage ``unlearn_evaluate``: one model (the fine-tuned base = no-op bound, the gold retain model =
retrain bound, or an unlearned one) on the unlearning world: the per-triple probe table
(``per_triple.parquet``), implicit recall of every forget triple through the rule judge
(``implicit.parquet``), and the run-level metrics (entroflow/unlearn/evaluate.py). The gold retain
model's evaluation is the ``reference`` parent of every other model's (forget quality, PrivLeak,
relative leak). With ``llm_judge`` configured, an OpenAI-compatible endpoint also scores up to
``max_cases`` forget triples on the same subgraphs (``llm_judge.parquet``), calibrated against the
rule judge; no network call happens otherwise."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow import model as model_lib
from entroflow.unlearn import evaluate, judge, metrics, probes
from tasks._stage import StageOutput, stage


def _llm_judge(out: StageOutput, cfg: dict, per: pa.Table, inf: pa.Table) -> dict:
    from entroflow.unlearn import llm_judge

    key = None
    if cfg.get("api_key_env"):
        key = os.environ.get(cfg["api_key_env"])
        if not key:
            raise ValueError(f"unlearning.llm_judge.api_key_env: environment variable {cfg['api_key_env']} is not set")
    client = llm_judge.LLMJudge(cfg["base_url"], cfg["model"], api_key=key, timeout_s=cfg["timeout_s"])
    client.check()
    conf = {(r["head"], r["relation"], r["tail"]): r["p_mean"] for r in per.to_pylist()}
    by_name = {f"{t[1]}({t[0]}, {t[2]})": t for t in conf}
    rows = []
    for r in inf.to_pylist()[:cfg["max_cases"]]:
        target = (r["head"], r["relation"], r["tail"])
        sub = [(by_name[s], 1.0 - conf[by_name[s]]) for s in r["subgraph"] if s in by_name]
        v = client.judge(target, sub)
        rows.append({"triple_id": r["triple_id"], "rule_score": r["judge_score"], "llm_score": v["score"],
                     "llm_inferable": v["inferable"], "called": v["called"], "reply": v["reply"]})
    out.table("llm_judge", pa.Table.from_pylist(rows))
    cal = llm_judge.calibrate([r["rule_score"] for r in rows], [r["llm_score"] for r in rows])
    return {f"llm_judge/{k}": v for k, v in cal.items()}


@stage("unlearn_evaluate", code=[evaluate, judge, metrics, probes, model_lib], main_table="per_triple.parquet",
       reads={"reference": ("per_triple.parquet", "implicit.parquet")})
def unlearn_evaluate(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    e, run = config["evaluate"], config["runtime"]
    data = parents["unlearn_data"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    facts = pq.read_table(data / "kg_facts.parquet")
    rows = pq.read_table(data / "splits.parquet").to_pylist()
    t0 = time.time()
    per = evaluate.per_triple(model, tokenizer, facts, rows, e["batch_size"])
    probe_s = time.time() - t0
    inf = evaluate.implicit(per, rows, e["max_depth"], e["hops"])
    ref = None
    if "reference" in parents:
        ref = (pq.read_table(parents["reference"] / "per_triple.parquet"),
               pq.read_table(parents["reference"] / "implicit.parquet"))
    out.table("per_triple", per)
    out.table("implicit", inf)
    m = evaluate.summarise(per, inf, ref)
    if config.get("llm_judge"):
        m.update(_llm_judge(out, config["llm_judge"], per, inf))
    out.log(**m, probe_seconds=probe_s, evaluate_seconds=time.time() - t0)
