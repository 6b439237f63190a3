"""Stage ``compare``: the reasoning methods side by side (Parquet + Markdown + plots)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow.rl import compare as compare_lib
from tasks._stage import StageOutput, stage


@stage("compare", code=[compare_lib], main_table="comparison.parquet")
def compare(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    """Parents are named ``evaluate/<model>/<seed>`` and ``train/<method>/<seed>``."""
    kmax = max(config["evaluate"]["ks"])
    evals, histories, curves = {}, {}, {}
    for name, d in parents.items():
        kind, model, seed = name.split("/")
        if kind == "evaluate":
            evals[(model, int(seed))] = json.loads((d / "manifest.json").read_text())["metrics"]
        elif kind == "train":
            if (d / "history.parquet").exists():
                histories[(model, int(seed))] = pq.read_table(d / "history.parquet")
            if (d / "evals.parquet").exists():
                curves[(model, int(seed))] = pq.read_table(d / "evals.parquet")
    rows = compare_lib.rows_from_metrics(evals, kmax)
    out.table("comparison", pa.Table.from_pylist(rows))
    summary = compare_lib.summarise(rows)
    training = compare_lib.training_summary(histories)
    methods = config["rl"]["methods"]
    models = [compare_lib.BASE, compare_lib.BASE_EM_INF, *methods]
    claim_rows = compare_lib.claims(summary, training, methods)
    out.table("claims", pa.Table.from_pylist(claim_rows))
    base_gain = summary.get(compare_lib.BASE, {}).get("self_consistency_gain")
    compare_lib.plot_accuracy(summary, models, kmax, out.dir / "accuracy.png")
    if methods:  # training curves; a run without RL methods has none
        compare_lib.plot_curves(histories, curves, out.dir / "curves.png")
    (out.dir / "comparison.md").write_text(
        compare_lib.render(summary, training, claim_rows, models, kmax, len(config["rl"]["seeds"]), base_gain,
                           settings=compare_lib.method_settings(methods, config["rl"]["train"],
                                                                config["rl"]["per_method"]),
                           temperature=config["rollout"]["temperature"]))
    for model, s in summary.items():
        out.log(**{f"{model}/sampled_acc": s["sampled_acc"][0], f"{model}/greedy_acc": s["greedy_acc"][0],
                   f"{model}/maj_acc": s["maj_acc"][0]})
    out.log(claims_holding=sum(bool(c["holds"]) for c in claim_rows), claims_total=len(claim_rows))
