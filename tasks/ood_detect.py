"""Stage ``ood_detect``: one model's OOD evaluation from its features (entroflow/ood/evaluate.py):
every detector on every layer, the fused layer sets (last, all, the two ID-only entropy
readings, the oracle per shift), metrics per OOD suite, and the model's figures: a layer x
detector AUROC heatmap per shift and a last / fused / oracle bar chart. One MLflow child run per
model (method = the model's kind)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from safetensors import safe_open

from entroflow.ood import compare, detectors, evaluate, fusion, metrics, plots
from tasks._stage import StageOutput, stage


@stage("ood_detect", code=[evaluate, detectors, fusion, metrics, plots, compare], main_table="metrics.parquet")
def ood_detect(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    d, name = config["detect"], config["model"]
    path = parents["features"] / "features.parquet"
    params = {"knn": {"k": d["knn_k"]}, "mahalanobis": {"covariance": d["covariance"]},
              "rmd": {"covariance": d["covariance"]}}
    rows, scores, domains = evaluate.layer_scores(path, d["detectors"], d["pooling"], params)
    probs = None
    probs_file = parents["features"] / "val_probs.safetensors"
    if probs_file.exists():
        with safe_open(str(probs_file), framework="numpy") as fh:
            probs = fh.get_tensor("probs").astype(np.float64)
            ids = fh.metadata()["ids"].split(",")
        val_ids = [r["id"] for r in rows if r["split"] == "val"]
        if ids != val_ids:
            raise ValueError(f"{probs_file}: its rows are not the features' val rows")
    rows_m, selections = evaluate.evaluate(rows, scores, domains, probs, d["exhaustive_max"])
    for r in rows_m:
        r["model"] = name
    out.table("metrics", pa.Table.from_pylist(rows_m))
    out.table("selections", pa.Table.from_pylist(selections))

    table = compare.shift_table(rows_m)
    shifts = [s for s in ("near", "mid", "far", "other-domain") if any(k[3] == s for k in table)]
    series = list(scores)
    heat = {sh: {s: {int(k[2].split(":")[1]): v for k, v in table.items() if k[1] == s and k[3] == sh
                     and k[2].startswith("layer:")} for s in series} for sh in shifts}
    plots.plot_layer_heatmaps(heat, out.dir / "layers.png", f"{name}: AUROC per layer and detector")
    selectors = ["last", *compare.READINGS, *[f"oracle/{s}" for s in shifts]]
    bars = {sh: {s: {sel: table[(name, s, sel, sh)] for sel in selectors if (name, s, sel, sh) in table}
                 for s in series if (name, s, "last", sh) in table} for sh in shifts}
    plots.plot_selector_bars(bars, selectors, out.dir / "fusion.png",
                             f"{name}: last layer vs fused (ID-selected) vs oracle (OOD labels)")
    for (model, s, key, sh), v in table.items():
        if key in ("last", "score_entropy", "mean_softmax_entropy") or key.startswith("oracle/"):
            out.log(**{f"{s}/{key}/auroc_{sh}": v})
    out.log(series=len(series), suites=len({r["suite"] for r in rows_m}))
