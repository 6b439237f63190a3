"""Stage ``report``: Markdown summary and PNG plots of the run, from the stages' outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from entroflow import report as report_lib
from tasks._stage import StageOutput, stage


@stage("report", code=[report_lib])
def report(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    manifests = {k: json.loads((d / "manifest.json").read_text()) for k, d in parents.items()}
    rollouts = pq.read_table(parents["rollout"] / "rollouts.parquet", columns=["decoding", "entropies"])
    kmax = max(config["evaluate"]["ks"])
    levels = report_lib.per_level_accuracy(manifests["evaluate"]["metrics"], kmax)
    data_cfg = manifests["generate_data"]["config"]["data"]
    table = data_cfg.get("evaluate", "auto")
    table = ("external" if data_cfg.get("external") else "reasoning") if table == "auto" else table
    if table == "reasoning":
        level_labels = {i: f"L{i} ({lv['operands']}x{lv['digits']}d)" for i, lv in enumerate(data_cfg["reasoning"]["levels"])}
    elif table == "word_problems":
        level_labels = {i: f"L{i} ({n} step{'s' * (n > 1)})" for i, n in enumerate(data_cfg["word_problems"]["levels"])}
    else:
        level_labels = {}
    rc = config["rollout"]
    ctx = {
        "title": config["report"]["title"], "name": config["name"], "config_hash": config["config_hash"],
        "git_commit": manifests["evaluate"]["git_commit"], "created": manifests["evaluate"]["created"],
        "stages": [{"stage": m["stage"], "key": m["key"], "rows": m.get("rows"), "duration_s": m["duration_s"]}
                   for m in manifests.values()],
        "model": manifests["model"], "evaluate": manifests["evaluate"],
        "ks": config["evaluate"]["ks"], "kmax": kmax, "levels": levels, "level_labels": level_labels,
        "eval_table": table, "prompt": config.get("prompt"),
        "temperature": rc["temperature"], "top_p": rc["top_p"], "top_k": rc["top_k"], "n_samples": rc["n_samples"],
    }
    if (parents["model"] / "history.parquet").exists():  # pretrained from scratch: the loss curve
        report_lib.plot_loss(parents["model"] / "history.parquet", out.dir / "loss.png")
    if (parents["model"] / "source.json").exists():  # imported: where it came from
        ctx["model_source"] = json.loads((parents["model"] / "source.json").read_text())
    report_lib.plot_levels(levels, level_labels, out.dir / "levels.png")
    report_lib.plot_entropy(rollouts, out.dir / "entropy.png")
    (out.dir / "report.md").write_text(report_lib.render(ctx))
    out.log(**{k: v for k, v in manifests["evaluate"]["metrics"].items() if "/" not in k})
