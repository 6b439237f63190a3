"""MLflow tracking: one parent run per pipeline run, one child run per stage.

Everything goes through ``MlflowClient`` with explicit run ids. MLflow's fluent "active run" is
thread-local, so a stage running in a Prefect worker thread would not see the flow's run; an
explicit ``mlflow.parentRunId`` tag works from any thread or process.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from entroflow import workspace

MAX_ARTIFACT_BYTES = 50 * 2**20  # bigger files (real checkpoints) are referenced by path, not copied
PIPELINE_TAG = "entroflow.kind"


def metric_key(name: str) -> str:
    r"""An MLflow-legal metric name: ``pass@8`` -> ``pass_at_8``, ``base+em_inf`` -> ``base_plus_em_inf``,
    ``rollout[grpo,s0]`` -> ``rollout_grpo_s0_`` (MLflow allows only ``[A-Za-z0-9_\-. :/]``)."""
    name = name.replace("@", "_at_").replace("+", "_plus_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=workspace.tracking_uri())


def ensure_experiment(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # An explicit artifact location: with a DB backend MLflow would otherwise write ./mlruns.
    root = workspace.mlflow_artifacts() / name
    root.mkdir(parents=True, exist_ok=True)
    return c.create_experiment(name, artifact_location=root.as_uri())


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


def _log_params(c: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def _log_metrics(c: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), 1000):
        c.log_batch(run_id, metrics=metrics[i:i + 1000])


def start_parent(c: MlflowClient, experiment_id: str, run_name: str, flow_run_id: str,
                 params: dict[str, str], tags: dict[str, str]) -> str:
    """The parent run of a flow run; reused when Prefect retries the same flow run."""
    found = c.search_runs([experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
                          max_results=1)
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = c.create_run(experiment_id, run_name=run_name,
                       tags={**tags, PIPELINE_TAG: "pipeline", "prefect.flow_run_id": flow_run_id})
    _log_params(c, run.info.run_id, params)
    return run.info.run_id


def log_stage(c: MlflowClient, experiment_id: str, parent_run_id: str, manifest: dict,
              stage_dir: Path, cached: bool, run_name: str | None = None) -> str:
    """A child run for one stage, from its manifest: params, metrics, step history, artifacts.

    Cached stages get the same params and metrics (tag ``cached=true``), so runs compare side by
    side in the MLflow UI whether or not a stage recomputed. Their artifacts are not copied again:
    the tag ``artifacts_run_id`` names the child run that computed this output and holds them
    (they are copied only when no such run is in this tracking store).
    """
    stage = manifest["stage"]
    run = c.create_run(experiment_id, run_name=run_name or stage, tags={
        "mlflow.parentRunId": parent_run_id, PIPELINE_TAG: "stage", "stage": stage,
        "cached": str(cached).lower(), "cache_key": manifest["key"], "digest": manifest["digest"],
        "code_version": manifest["code_version"], "git_commit": manifest["git_commit"],
        "output_path": str(stage_dir),
    })
    rid = run.info.run_id
    _log_params(c, rid, flatten(manifest["config"]))
    now = int(time.time() * 1000)
    ms = [Metric(metric_key(k), float(v), now, 0) for k, v in manifest["metrics"].items()]
    ms.append(Metric("duration_s", float(manifest["duration_s"]), now, 0))
    hist = stage_dir / "history.parquet"
    if hist.exists():
        for row in pq.read_table(hist).to_pylist():
            ms += [Metric(metric_key(f"step/{k}"), float(v), now, int(row["step"]))
                   for k, v in row.items() if k != "step" and v is not None]
    _log_metrics(c, rid, ms)
    if cached:
        origin = c.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                               filter_string=f"tags.cache_key = '{manifest['key']}' and tags.cached = 'false' "
                                             f"and tags.digest = '{manifest['digest']}'")
        if origin:
            c.set_tag(rid, "artifacts_run_id", origin[0].info.run_id)
            c.set_terminated(rid, "FINISHED")
            return rid
    for p in sorted(stage_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(stage_dir)
        if p.stat().st_size > MAX_ARTIFACT_BYTES:
            c.set_tag(rid, f"artifact_not_copied.{rel.as_posix()}", str(p))
            continue
        c.log_artifact(rid, str(p), artifact_path=rel.parent.as_posix() if rel.parent != Path(".") else None)
    c.set_terminated(rid, "FINISHED")
    return rid


def finish_parent(c: MlflowClient, run_id: str, status: str, metrics: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    _log_metrics(c, run_id, [Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()])
    c.set_terminated(run_id, status)
