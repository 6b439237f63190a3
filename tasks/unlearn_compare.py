"""Stage ``unlearn_compare``: every evaluated model of every seed in ``unlearning_metrics.parquet``,
their seed means in ``summary.parquet``, the per-relation breakdown, the claims rows, the plots
(forget-vs-utility Pareto front, direct vs implicit forgetting, per relation) and
``unlearning.md`` (entroflow/unlearn/compare.py, plots.py). Parents are named
``evaluate/<model>/<seed>``, ``unlearn/<setting>/<seed>``, ``finetune/<base|retain>/<seed>`` and
``data/<seed>``."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow.unlearn import compare, plots
from tasks._stage import StageOutput, stage


def _metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


@stage("unlearn_compare", code=[compare, plots], main_table="unlearning_metrics.parquet")
def unlearn_compare(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    settings = {s["name"]: s for s in config["settings"]}
    rows, per_rel = [], []
    for seed in config["seeds"]:
        for name in config["models"]:
            s = settings.get(name)
            method = s["method"] if s else name
            secs = _metrics(parents[f"unlearn/{name}/{seed}"])["unlearn_seconds"] if s else None
            ev = parents[f"evaluate/{name}/{seed}"]
            rows.append(compare.model_row(name, method, seed, _metrics(ev), s, secs))
            for r in pq.read_table(ev / "implicit.parquet").to_pylist():
                per_rel.append({"model": name, "seed": seed, "relation": r["relation"],
                                "recall": float(r["recall"]), "inferable": float(r["inferable"])})
    summ = compare.summary(rows)
    rel_rows = []
    for name in config["models"]:
        for rel in sorted({r["relation"] for r in per_rel if r["model"] == name}):
            rs = [r for r in per_rel if r["model"] == name and r["relation"] == rel]
            rel_rows.append({"model": name, "relation": rel, "n": len(rs) / len(config["seeds"]),
                             "recall": statistics.fmean(r["recall"] for r in rs),
                             "inferable": statistics.fmean(r["inferable"] for r in rs)})
    claim_rows = compare.claims(summ)
    out.table("unlearning_metrics", pa.Table.from_pylist(rows))
    out.table("summary", pa.Table.from_pylist(summ))
    out.table("per_relation", pa.Table.from_pylist(rel_rows))
    out.table("claims", pa.Table.from_pylist(claim_rows))
    title = config["title"]
    plots.plot_pareto(summ, out.dir / "pareto.png", f"{title}: forgetting vs utility")
    plots.plot_gap(summ, out.dir / "gap.png", f"{title}: direct vs inference-aware forgetting")
    plots.plot_per_relation(rel_rows, out.dir / "per_relation.png", f"{title}: forget set per relation")
    splits = [pq.read_table(parents[f"data/{s}"] / "splits.parquet", columns=["split", "role"]).to_pylist()
              for s in config["seeds"]]
    ft = [_metrics(parents[f"finetune/base/{s}"]) for s in config["seeds"]]
    rt = [_metrics(parents[f"finetune/retain/{s}"]) for s in config["seeds"]]
    f = config["forget"]
    info = {"title": title, "triples": len(splits[0]), "seeds": ", ".join(map(str, config["seeds"])),
            "forget": (f"{f['kind']} (fraction {f['fraction']})" if f["kind"] == "entity"
                       else f"triples ({f['n_targets']} targets + controls)"),
            "closure": config["closure"],
            "forget_triples": f"{statistics.fmean(sum(r['split'] == 'forget' for r in sp) for sp in splits):.0f}",
            "fact_accuracy": f"{statistics.fmean(m['fact_accuracy'] for m in ft):.3f}",
            "retain_forget_recall": f"{statistics.fmean(m['forget_recall'] for m in rt):.2f}",
            "candidates": config["wrong_answers"] + 1}
    (out.dir / "unlearning.md").write_text(compare.render(summ, rel_rows, info, claim_rows))
    out.log(**{f"{s['model']}/{k}": s[k] for s in summ for k in ("gap", "fsr_s", "fsr_k", "retain_recall",
                                                                   "model_utility") if s[k] == s[k]},
            base_fact_accuracy=statistics.fmean(m["fact_accuracy"] for m in ft),
            claims_holding=sum(c["verdict"] == "holds" for c in claim_rows))
