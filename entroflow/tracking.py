"""MLflow tracking: one parent run per pipeline run, one child run per stage.

Everything goes through ``MlflowClient`` with explicit run ids. MLflow's fluent "active run" is
thread-local, so a stage running in a Prefect worker thread would not see the flow's run; an
explicit ``mlflow.parentRunId`` tag works from any thread or process.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
import uuid
from functools import lru_cache
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from entroflow import workspace
from entroflow.store import pid_alive

MAX_ARTIFACT_BYTES = 50 * 2**20  # bigger files (real checkpoints) are referenced by path, not copied
PIPELINE_TAG = "entroflow.kind"
log = logging.getLogger(__name__)


def metric_key(name: str) -> str:
    r"""An MLflow-legal metric name: ``pass@8`` -> ``pass_at_8``, ``base+em_inf`` -> ``base_plus_em_inf``,
    ``rollout[grpo,s0]`` -> ``rollout_grpo_s0_`` (MLflow allows only ``[A-Za-z0-9_\-. :/]``)."""
    name = name.replace("@", "_at_").replace("+", "_plus_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


class TrackingStoreError(RuntimeError):
    """The tracking DB cannot be used as it is (one line, naming the file and what to do)."""


def client() -> MlflowClient:
    uri = workspace.tracking_uri()
    ensure_sqlite_db(uri)
    return MlflowClient(tracking_uri=uri)


def _tables(path: Path) -> tuple[set[str], int | None]:
    """(table names, number of runs or None when there is no runs table) of a SQLite file.

    Read-only first; a writer SIGKILLed mid-transaction leaves a hot journal, which SQLite must
    roll back before anyone reads, and a read-only connection cannot ("attempt to write a readonly
    database"): then a read-write connection reads it (and so performs the rollback)."""
    for uri in (f"file:{path}?mode=ro", f"file:{path}?mode=rw"):
        con = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            names = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
            runs = con.execute("select count(*) from runs").fetchone()[0] if "runs" in names else None
            return names, runs
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e) or uri.endswith("rw"):
                raise
        finally:
            con.close()
    raise AssertionError("unreachable")


def _migrate(uri: str) -> None:
    """Create or upgrade MLflow's tables in ``uri`` (what MLflow does on first use), then let go
    of the file: MLflow caches one engine per URI."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, workspace.mlflow_artifacts().as_uri())
    store.engine.dispose()
    SqlAlchemyStore._engine_map.pop(uri, None)


@lru_cache(maxsize=None)
def ensure_sqlite_db(uri: str) -> None:
    """Make the SQLite tracking DB safe to open, whatever moment an earlier process was killed at.

    MLflow creates its tables on first use with ~40 Alembic migrations that take tens of seconds
    on a loaded machine and are not one transaction on SQLite: a process killed in the middle
    leaves a half-migrated file (``_alembic_tmp_*`` tables) that every later open rejects. So:

    * a new DB is created and migrated under a temporary name in the same folder and linked into
      place in one step (``os.link`` fails if another process got there first; then its DB is
      used and ours discarded). A kill leaves only the temporary file, removed by the next run;
    * an existing half-migrated DB with no runs (only a first migration was interrupted) is moved
      aside to ``<name>.broken-<time>`` and recreated; one that holds runs is never moved or
      deleted: Alembic's leftover copy tables are resolved (an unfinished copy is dropped while
      its original exists; a finished copy whose original was already dropped is renamed back)
      and the migration is resumed, or the run stops with a one-line error saying what to do.
    """
    path = workspace.sqlite_path(uri)
    if path is None or str(path) in ("", ":memory:"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.init-*"):  # temporaries of killed runs
        if not pid_alive(stale.name.split("-")[1]):
            stale.unlink(missing_ok=True)
    if path.exists():
        names, runs = _tables(path)
        leftovers = sorted(n for n in names if n.startswith("_alembic_tmp_"))
        if not leftovers and {"runs", "experiments", "alembic_version"} <= names:
            return  # healthy (a pending upgrade of an intact DB is MLflow's own business)
        if not runs:
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("tracking DB %s was left half-created by a killed run; moved it aside to %s "
                        "(it held no runs) and created a new one", path, aside.name)
        else:
            _repair(path, uri, names, leftovers, runs)
            return
    tmp = path.with_name(f"{path.name}.init-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _migrate(f"sqlite:///{tmp}")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first; use that one
    finally:
        tmp.unlink(missing_ok=True)


def _repair(path: Path, uri: str, names: set[str], leftovers: list[str], runs: int) -> None:
    con = sqlite3.connect(path, timeout=30)
    try:
        for tmp_table in leftovers:
            original = tmp_table[len("_alembic_tmp_"):]
            if original in names:  # the copy was not finished: the original is intact
                con.execute(f'drop table "{tmp_table}"')
            else:  # the original was dropped after a complete copy: the copy is the table
                con.execute(f'alter table "{tmp_table}" rename to "{original}"')
        con.commit()
    finally:
        con.close()
    try:
        _migrate(uri)
    except Exception as e:  # noqa: BLE001 - any failure here ends in the same advice
        raise TrackingStoreError(
            f"{path}: MLflow tracking DB with {runs} runs was left half-migrated by a killed process and could "
            f"not be repaired ({type(e).__name__}: {str(e).splitlines()[0][:120]}); back it up, then run "
            f"`mlflow db upgrade {uri}`, or point ENTROFLOW_HOME at a new workspace") from None
    log.warning("tracking DB %s was left half-migrated by a killed run; repaired it (%d runs kept)", path, runs)


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
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, list | tuple) else str(v)
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
        for k, v in process_tags().items():  # the retry's process owns the run now
            c.set_tag(found[0].info.run_id, k, v)
        return found[0].info.run_id
    run = c.create_run(experiment_id, run_name=run_name,
                       tags={**tags, PIPELINE_TAG: "pipeline", "prefect.flow_run_id": flow_run_id})
    _log_params(c, run.info.run_id, params)
    return run.info.run_id


def process_tags() -> dict[str, str]:
    """Which process owns a run, so `entroflow runs` can tell a killed run from a running one."""
    import socket

    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def run_process_alive(run) -> bool:
    """False when a RUNNING run's process is gone (killed): same host and no such pid. A run from
    another host, or without these tags, is taken as alive (nothing here can tell)."""
    import socket

    tags = run.data.tags
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return True
    return pid_alive(tags["pid"])


def log_stage(c: MlflowClient, experiment_id: str, parent_run_id: str, manifest: dict,
              stage_dir: Path, cached: bool, run_name: str | None = None, meta: dict | None = None) -> str:
    """A child run for one stage, from its manifest: params, metrics, step history, artifacts.

    ``meta`` (flow, stage, method, seed, model, model source, the trained model's key
    hyper-parameters) is logged as params and as tags, with the same keys in every flow, so the
    UI's compare page, parallel coordinates and group-by can split runs by method and seed.

    Cached stages get the same params and metrics (tag ``cached=true``), so runs compare side by
    side in the MLflow UI whether or not a stage recomputed. Their artifacts are not copied again:
    the tag ``artifacts_run_id`` names the child run that computed this output and holds them
    (they are copied only when no such run is in this tracking store).
    """
    stage = manifest["stage"]
    meta = {k: json.dumps(v) if isinstance(v, list | tuple) else str(v) for k, v in (meta or {}).items()}
    run = c.create_run(experiment_id, run_name=run_name or stage, tags={**meta,
        "mlflow.parentRunId": parent_run_id, PIPELINE_TAG: "stage", "stage": stage,
        "cached": str(cached).lower(), "cache_key": manifest["key"], "digest": manifest["digest"],
        "code_version": manifest["code_version"], "git_commit": manifest["git_commit"],
        "output_path": str(stage_dir),
    })
    rid = run.info.run_id
    _log_params(c, rid, {**flatten(manifest["config"]), **meta})
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
                               # FINISHED: a run killed while copying its artifacts holds only some
                               filter_string=f"tags.cache_key = '{manifest['key']}' and tags.cached = 'false' "
                                             f"and tags.digest = '{manifest['digest']}' and attributes.status = 'FINISHED'")
        if origin:
            c.set_tag(rid, "artifacts_run_id", origin[0].info.run_id)
            # The manifest alone (a few KB) names every file: it also keeps MLflow 3.17's compare
            # page working, whose Artifacts section fails on a run with no artifacts at all.
            c.log_artifact(rid, str(stage_dir / "manifest.json"))
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
