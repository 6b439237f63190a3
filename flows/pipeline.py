"""The spine DAG: generate_data -> build_tokenizer -> pretrain_base -> rollout -> evaluate -> report.

Each node names its stage, the config sections that stage's cache key covers, and its parents.
The flow walks the nodes in order; a stage whose verified output already exists for its key comes
back ``Cached``; ``force`` recomputes chosen stages and everything downstream of them. One MLflow
parent run per flow run, one child run per stage (cached or not).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from entroflow import workspace

workspace.bootstrap()  # before Prefect reads its settings

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from entroflow import provenance, tracking  # noqa: E402
from entroflow.config import PIPELINE_STAGES, PipelineConfig, check_stage_names, load_config  # noqa: E402
from entroflow.store import Store  # noqa: E402
from tasks._stage import Stage  # noqa: E402
from tasks.build_tokenizer import build_tokenizer  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.generate_data import generate_data  # noqa: E402
from tasks.pretrain_base import pretrain_base  # noqa: E402
from tasks.report import report  # noqa: E402
from tasks.rollout import rollout  # noqa: E402


@dataclass(frozen=True)
class Node:
    stage: Stage
    parents: tuple[str, ...]
    section: Callable[[PipelineConfig, dict], dict]  # (config, full config dict) -> keyed section
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True


def _scratch(cfg: PipelineConfig) -> bool:
    return cfg.model.source == "scratch"


DAG: list[Node] = [
    Node(generate_data, (), lambda c, d: {"seed": c.seed, "data": d["data"]}),
    Node(build_tokenizer, ("generate_data",), lambda c, d: {"tokenizer": d["tokenizer"]}, _scratch),
    Node(pretrain_base, ("generate_data", "build_tokenizer"),
         lambda c, d: {"seed": c.seed, "model": d["model"],
                       "pretrain": d["pretrain"] if c.model.source == "scratch" else None}),
    Node(rollout, ("generate_data", "pretrain_base"), lambda c, d: {"seed": c.seed, "rollout": d["rollout"]}),
    Node(evaluate, ("generate_data", "rollout"), lambda c, d: {"evaluate": d["evaluate"]}),
    Node(report, ("generate_data", "pretrain_base", "rollout", "evaluate"),
         lambda c, d: {"name": c.name, "config_hash": provenance.config_hash(d), "report": d["report"],
                       "evaluate": d["evaluate"], "rollout": d["rollout"]}),
]
STAGE_NAMES = [n.stage.name for n in DAG]
assert tuple(STAGE_NAMES) == PIPELINE_STAGES, "keep entroflow.config.PIPELINE_STAGES in step with the DAG"


def forced_closure(cfg: PipelineConfig, force: list[str]) -> set[str]:
    """The forced stages and everything downstream of them."""
    check_stage_names(force)
    out = set(force)
    for node in DAG:
        if any(p in out for p in node.parents):
            out.add(node.stage.name)
    return out


def plan(cfg: PipelineConfig, force: list[str] = ()) -> list[dict]:
    """What the next run would do, without running anything: per stage its key, whether it would
    be Cached, and why (used by ``entroflow stages``)."""
    d = cfg.model_dump(mode="json")
    store = Store(workspace.store_root())
    forced = forced_closure(cfg, list(force))
    refs: dict[str, dict | None] = {}
    rows = []
    for node in DAG:
        name = node.stage.name
        if not node.enabled(cfg):
            rows.append({"stage": name, "status": "skipped", "why": "disabled by config", "key": ""})
            continue
        parents = {p: refs.get(p) for p in node.parents if p in refs}
        waiting = [p for p, r in parents.items() if r is None]
        section = node.section(cfg, d)
        if waiting:
            refs[name] = None
            rows.append({"stage": name, "status": "run", "key": "?",
                         "why": f"upstream {', '.join(waiting)} will run, so its key is not known yet"})
            continue
        key = node.stage.key(section, parents)
        ref, why = store.lookup(name, key)
        if name in forced:
            ref, why = None, "forced (--force)"
        elif ref is None:
            why = why + _diff_from_latest(store, node.stage, section, parents)
        refs[name] = ref.model_dump() if ref else None
        rows.append({"stage": name, "status": "cached" if ref else "run", "key": key, "why": why})
    return rows


def _diff_from_latest(store: Store, stage: Stage, section: dict, parents: dict) -> str:
    last = store.latest_manifest(stage.name)
    if last is None:
        return " (never run in this workspace)"
    changed = [k for k in tracking.flatten(section) if tracking.flatten(last["config"]).get(k) != tracking.flatten(section).get(k)]
    changed += [k for k in tracking.flatten(last["config"]) if k not in tracking.flatten(section)]
    reasons = []
    if changed:
        reasons.append("config changed since the last run: " + ", ".join(sorted(set(changed))[:5]))
    if last["code_version"] != stage.code_version:
        reasons.append("code changed since the last run")
    old_parents = {k: v["digest"] for k, v in last["parents"].items()}
    new_parents = {k: v["digest"] for k, v in parents.items()}
    if old_parents != new_parents:
        reasons.append("upstream output changed")
    return f" ({'; '.join(reasons)})" if reasons else ""


@flow(name="entroflow-pipeline", log_prints=True)
def pipeline(config_path: str, overrides: list[str] | None = None, force: list[str] | None = None) -> dict:
    """Run the spine end to end. Returns {stage: {"state", "ref", "seconds"}}."""
    logger = get_run_logger()
    cfg = load_config(config_path, overrides or [])
    d = cfg.model_dump(mode="json")
    forced = forced_closure(cfg, force or [])
    store = Store(workspace.store_root())
    store.clean_tmp()
    c = tracking.client()
    exp_id = tracking.ensure_experiment(c, cfg.experiment)
    chash = provenance.config_hash(d)
    parent = tracking.start_parent(
        c, exp_id, run_name=f"{cfg.name}-{flow_run.get_name() or 'local'}", flow_run_id=flow_run.get_id() or "local",
        params=tracking.flatten(d),
        tags={"config_hash": chash, "config_name": cfg.name, "config_path": str(Path(config_path)),
              "git_commit": provenance.git_commit(), "entroflow_version": provenance.package_versions()["entroflow"],
              "prefect.flow_run_name": flow_run.get_name() or ""},
    )
    refs: dict[str, dict] = {}
    results: dict[str, dict] = {}
    status = "FAILED"
    try:
        for node in DAG:
            name = node.stage.name
            if not node.enabled(cfg):
                continue
            parents = {p: refs[p] for p in node.parents if p in refs}
            section = node.section(cfg, d)
            key = node.stage.key(section, parents)
            verified, why = store.lookup(name, key)
            # Refresh Prefect's cache record when forced, or when the output behind it is gone or corrupt.
            refresh = name in forced or verified is None
            t0 = time.time()
            state = node.stage.task.with_options(
                refresh_cache=refresh, result_storage=workspace.prefect_results()
            )(key=key, config=section, parents=parents, force=name in forced, return_state=True)
            ref = state.result()  # raises if the stage failed
            cached = state.name == "Cached" or bool(ref.get("reused"))
            refs[name] = ref
            results[name] = {"state": "Cached" if cached else state.name, "ref": ref, "seconds": time.time() - t0}
            if refresh and verified is None and why != "no output for this key":
                logger.warning(f"{name}: recomputed because the stored {why}")
            manifest = store.manifest(ref)
            tracking.log_stage(c, exp_id, parent, manifest, store.resolve(ref), cached=cached)
            logger.info(f"{name}: {results[name]['state']} ({results[name]['seconds']:.1f} s) -> {store.resolve(ref)}")
        status = "FINISHED"
    finally:
        summary = {}
        if "evaluate" in refs:
            summary = {k: v for k, v in store.manifest(refs["evaluate"])["metrics"].items() if "/" not in k}
        summary.update({f"seconds/{k}": v["seconds"] for k, v in results.items()})
        summary["stages_cached"] = sum(v["state"] == "Cached" for v in results.values())
        tracking.finish_parent(c, parent, status, summary)
    if "report" in refs:
        latest = workspace.home() / "reports" / cfg.name
        latest.mkdir(parents=True, exist_ok=True)
        src = store.resolve(refs["report"])
        for f in src.iterdir():
            if f.suffix in (".md", ".png"):
                (latest / f.name).write_bytes(f.read_bytes())
        results["report_path"] = str(latest / "report.md")
    results["mlflow_parent_run_id"] = parent
    return results
