"""Stage ``ood_compare``: every model's OOD metrics in one table (``metrics.parquet``: model,
layer, detector, suite, shift, metrics), the shift-level summary, how RL training moved OOD
separability, the claims of "Mysteries of the Deep" at this scale, and ``ood.md`` with its figures.
Parents are named ``detect/<model>`` and ``features/<model>``."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow.ood import compare as compare_lib
from entroflow.ood import features, plots, suites
from entroflow.watermark.metrics import mean_and_spread
from tasks._stage import StageOutput, stage


@stage("ood_compare", code=[compare_lib, plots, features, suites], main_table="summary.parquet")
def ood_compare(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    models = config["models"]  # [{name, kind, seed}] in run order; the first is the spine's base
    rows, n_layers = [], {}
    for m in models:
        t = pq.read_table(parents[f"detect/{m['name']}"] / "metrics.parquet").to_pylist()
        rows += [{**r, "kind": m["kind"], "seed": m["seed"]} for r in t]
        n_layers[m["name"]] = features.file_layers(parents[f"features/{m['name']}"] / "features.parquet")[0]
    out.table("metrics", pa.Table.from_pylist(rows))
    table = compare_lib.shift_table(rows)
    sets = compare_lib.chosen_sets(rows)
    out.table("summary", pa.Table.from_pylist(
        [{"model": k[0], "series": k[1], "selector": k[2], "shift": k[3], "auroc": v} for k, v in table.items()]))
    claim_rows = compare_lib.claims(table, models, n_layers, config["claim_series"])
    out.table("claims", pa.Table.from_pylist(claim_rows))
    base = models[0]["name"]
    effect = compare_lib.rl_effect(table, models, base, n_layers[base], config["claim_series"])
    if effect:
        out.table("rl_effect", pa.Table.from_pylist(effect))

    first = pq.read_table(parents[f"features/{base}"] / "features.parquet",
                          columns=[*features.ROW_COLUMNS]).to_pylist()
    domains = suites.id_domains(first)
    test = [r for r in first if r["split"] == "test"]
    info = {"title": config["title"], "domains": sorted(domains), "layers": n_layers[base],
            "n_fit": sum(r["split"] == "fit" for r in first), "n_val": sum(r["split"] == "val" for r in first),
            "n_test_id": sum(suites.is_id(r, domains) for r in test),
            "n_test_ood": sum(not suites.is_id(r, domains) for r in test), "suites": suites.ood_suites(first, domains)}
    figures = []
    # Bars per model kind; with several base seeds and RL policies, the base the policies started
    # from gets its own bar, so an RL bar is read against its start and not the seeds' mean.
    groups = {k: [m["name"] for m in models if m["kind"] == k] for k in dict.fromkeys(m["kind"] for m in models)}
    n_bases = len(groups.get("base", []))
    if n_bases > 1 and any(k not in ("base", "oracle") for k in groups):
        groups = {f"base ({n_bases} seeds)": groups.pop("base"), f"{base} (RL start)": [base], **groups}
    for shift in ("near", "far"):
        values = {}
        for s in config["claim_series"]:
            for key in ("last", "score_entropy"):
                values[f"{s} {key}"] = {k: mean_and_spread([table.get((name, s, key, shift), float("nan"))
                                                            for name in names])[:2] for k, names in groups.items()}
        if any(k[3] == shift for k in table):
            plots.plot_models(values, out.dir / f"models_{shift}.png", f"AUROC per model, {shift} shift "
                              "(mean ± sd over seeds)")
            figures.append(f"models_{shift}.png")
    for m in models:  # each model's own figures, published with the page
        for fig in ("layers", "fusion"):
            src = parents[f"detect/{m['name']}"] / f"{fig}.png"
            if src.exists():
                name = f"{fig}_{m['name'].replace(',', '_')}.png"
                shutil.copyfile(src, out.dir / name)
                figures.append(name)
    (out.dir / "ood.md").write_text(compare_lib.render(models, table, sets, claim_rows, effect, info, figures))
    out.log(claims_holding=sum(c["verdict"] == compare_lib.HOLDS for c in claim_rows), claims_total=len(claim_rows),
            models=len(models))
    for (model, s, key, sh), v in table.items():
        if model == base and s in config["claim_series"] and key in ("last", *compare_lib.READINGS):
            out.log(**{f"{s}/{key}/auroc_{sh}": v})
