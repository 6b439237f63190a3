"""Stage ``watermark_compare``: every scheme's detection and quality side by side (Parquet +
Markdown + plots) and the watermark claims of the seed papers."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow.watermark import compare as compare_lib
from entroflow.watermark import metrics, plots
from tasks._stage import StageOutput, stage


@stage("watermark_compare", code=[compare_lib, metrics, plots], main_table="summary.parquet")
def watermark_compare(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    """Parents are named ``detect/<scheme>``, ``quality/<scheme>`` (and ``quality/none``) and
    ``selector/<scheme>``."""
    seeds = config["seeds"]
    detect, quality, det_dirs = {}, {}, {}
    for name, d in parents.items():
        kind, scheme = name.split("/")
        m = json.loads((d / "manifest.json").read_text())["metrics"]
        if kind == "detect":
            detect[scheme], det_dirs[scheme] = m, d
        elif kind == "quality":
            quality[scheme] = m
    order = ["none", *[s["name"] for s in config["schemes"]]]
    quality = {s: quality[s] for s in order if s in quality}
    summ = compare_lib.summary(detect, quality, seeds)
    rows = [{"scheme": s, **{f"{c}": v[0] for c, v in r.items()}, **{f"{c}_sd": v[1] for c, v in r.items()}}
            for s, r in summ.items()]
    out.table("summary", pa.Table.from_pylist(rows))
    claim_rows = compare_lib.claims(summ, detect, seeds)
    out.table("claims", pa.Table.from_pylist(claim_rows))

    z = config["detect"]["z_threshold"]
    roc, lengths = {}, {}
    for scheme, d in det_dirs.items():
        t = pq.read_table(d / "detections.parquet", columns=["variant", "attack", "score", "z_at_T"]).to_pylist()
        pos = [r for r in t if r["variant"] == "watermarked"]
        neg = {pool: [r["score"] for r in t if r["variant"] == pool] for pool in ("unwatermarked", "human", "other_key")}
        roc[scheme] = ([r["score"] for r in pos], neg["unwatermarked"])
        plots.plot_z_histograms([r["score"] for r in pos], neg, out.dir / f"z_{scheme}.png", z_threshold=z,
                                title=f"{scheme}: detector scores")
        n = max((len(r["z_at_T"]) for r in pos), default=0)
        grid = sorted({t for t in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if t <= n} | ({n} if n else set()))
        if grid:
            lengths[scheme] = metrics.detection_vs_length([r["z_at_T"] for r in pos], grid, z)
    names = ["roc.png", "roc_log.png", "tradeoff.png", "attacks.png", "length.png"]
    plots.plot_roc(roc, out.dir / "roc.png")
    plots.plot_roc(roc, out.dir / "roc_log.png", log_fpr=True)
    none_ppl = summ.get("none", {}).get("perplexity", (None,))[0]
    points = {s: [{"ppl": r["perplexity"][0], "tpr": r["tpr_1pct"][0], "ppl_err": r["perplexity"][1],
                   "tpr_err": r["tpr_1pct"][1]}] for s, r in summ.items() if s != "none" and "tpr_1pct" in r}
    plots.plot_quality_tradeoff(points, out.dir / "tradeoff.png", reference_ppl=none_ppl)
    curves = compare_lib.attack_curves(detect, config["attacks"], seeds)
    label = "TPR @ 1% FPR"
    if not curves:  # too few negatives to resolve 1% FPR: AUROC instead
        curves, label = compare_lib.attack_curves(detect, config["attacks"], seeds, metric="auroc"), "AUROC"
    if curves:
        plots.plot_attack_strength(curves, out.dir / "attacks.png", metric_label=label)
    else:
        names.remove("attacks.png")
    plots.plot_detection_vs_length(lengths, out.dir / "length.png", metric_label=f"TPR at z >= {z:g}")
    names += [f"z_{s}.png" for s in det_dirs]
    (out.dir / "watermark.md").write_text(compare_lib.render(summ, claim_rows, config["schemes"], seeds,
                                                             config["oracle"], config["prompts"], names))
    for scheme, r in summ.items():
        out.log(**{f"{scheme}/{c}": v[0] for c, v in r.items()})
    out.log(claims_holding=sum(c["verdict"] == compare_lib.HOLDS for c in claim_rows), claims_total=len(claim_rows))
