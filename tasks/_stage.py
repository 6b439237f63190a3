"""The stage contract: a core function wrapped as a cached, retried Prefect task.

A stage body is a plain function ``body(out, config, parents)``: it reads its parents' output
directories, writes files into ``out.dir`` (a staging dir) and records metrics on ``out``. The
wrapper adds what every stage needs:

* cache key = sha256(stage name, canonical JSON of its config section, parents' digests, code
  version of the modules it runs) -- computed by :meth:`Stage.key`, used by Prefect's cache and as
  the store path. A stage declares which files of a parent it ``reads`` (glob patterns); the
  parent's digest in its key then covers those files only, so a change to data the stage never
  reads (say the OOD suites, for pretraining) leaves it cached;
* the store short-cut: a verified output already at the key is returned without running (so a lost
  Prefect cache record never forces recomputation, and a corrupted output never survives);
* atomic commit with a manifest (config, parents, code version, git commit, package versions,
  metrics, timings);
* retries for transient errors, none for errors that would fail again (bad data, NaN loss).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pyarrow as pa
from prefect import task

from entroflow import provenance, workspace
from entroflow.store import ArtifactRef, Store, combine_digests, write_table

FAILPOINT_ENV = "ENTROFLOW_FAILPOINT"
_failpoints_fired: set[str] = set()


class InjectedFault(RuntimeError):
    """Raised by the ``ENTROFLOW_FAILPOINT`` test hook to simulate a crash mid-stage."""


class PermanentStageError(RuntimeError):
    """An error that a retry cannot fix."""


PERMANENT = (ValueError, TypeError, KeyError, FileNotFoundError, FloatingPointError,
             PermanentStageError)


class StageOutput:
    """What a stage body writes into."""

    def __init__(self, dir: Path, work_dir: Path | None = None):
        self.dir = dir
        self._work_dir = work_dir
        self.metrics: dict[str, float] = {}
        self.history: list[dict] = []  # step-wise metrics: {"step": int, name: value, ...}

    @property
    def work_dir(self) -> Path:
        """A scratch dir that survives a killed process (checkpoints live here): the same for
        every attempt at this stage and key, removed once the output is committed."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir

    def table(self, name: str, table: pa.Table) -> Path:
        path = self.dir / f"{name}.parquet"
        write_table(table, path)
        return path

    def log(self, **metrics: float) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def log_step(self, step: int, **metrics: float) -> None:
        self.history.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})

    def flush(self) -> None:
        (self.dir / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
        if self.history:
            keys = sorted({k for r in self.history for k in r} - {"step"})
            cols = {"step": pa.array([r["step"] for r in self.history], pa.int64())}
            for k in keys:
                cols[k] = pa.array([r.get(k) for r in self.history], pa.float64())
            write_table(pa.table(cols), self.dir / "history.parquet")


def _failpoint(stage: str) -> None:
    """Test hook: ``ENTROFLOW_FAILPOINT=stage`` crashes the stage after it wrote its files and
    before the commit; ``stage:once`` crashes only the first attempt in this process (a transient
    error that the task retry absorbs)."""
    spec = os.environ.get(FAILPOINT_ENV, "")
    for item in filter(None, spec.split(",")):
        name, _, mode = item.partition(":")
        if name != stage:
            continue
        if mode == "once":
            if stage in _failpoints_fired:
                return
            _failpoints_fired.add(stage)
            raise InjectedFault(f"injected transient fault in stage '{stage}'")
        raise PermanentStageError(f"injected fault in stage '{stage}' ({FAILPOINT_ENV})")


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True


def _cache_key(ctx, params) -> str:
    return params["key"]


@dataclass
class Stage:
    name: str
    body: Callable[[StageOutput, dict, dict[str, Path]], None]
    code: list[ModuleType | str | Path]
    main_table: str | None
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # parent alias -> file globs it reads
    task: object = field(repr=False, default=None)

    @property
    def code_version(self) -> str:
        return provenance.code_version(self.code)

    def parent_digest(self, alias: str, ref: dict | ArtifactRef) -> str:
        """The digest of what this stage reads of a parent: the files matching ``reads[alias]``,
        or the whole output when the stage declares nothing for it."""
        ref = ArtifactRef.model_validate(ref)
        patterns = self.reads.get(alias)
        if not patterns or not ref.file_digests:
            return ref.digest
        return combine_digests({f: d for f, d in ref.file_digests.items()
                                if any(fnmatch.fnmatch(f, p) for p in patterns)})

    def key(self, config: dict, parents: dict[str, dict]) -> str:
        digests = {k: self.parent_digest(k, v) for k, v in sorted(parents.items())}
        return provenance.sha256_text(provenance.canonical_json(
            {"stage": self.name, "config": config, "parents": digests, "code": self.code_version}
        ))[:24]

    def execute(self, key: str, config: dict, parents: dict[str, dict], force: bool = False) -> dict:
        """Run (or reuse) the stage and return its ArtifactRef as a dict. Runs inside the task."""
        store = Store(workspace.store_root())
        if not force:
            ref, _ = store.lookup(self.name, key)
            if ref is not None:
                return {**ref.model_dump(), "reused": True}
        store.clean_tmp()
        parent_dirs = {k: store.resolve(v) for k, v in parents.items()}
        work = store.root / ".work" / self.name / key
        if force and work.exists():  # a forced stage starts over, not from old checkpoints
            shutil.rmtree(work)
        t0 = time.time()
        with store.staging(self.name) as tmp:
            out = StageOutput(tmp, work)
            self.body(out, config, parent_dirs)
            out.flush()
            _failpoint(self.name)
            manifest = {
                "stage": self.name, "key": key, "config": config,
                "parents": {k: {"stage": v["stage"], "key": v["key"], "digest": self.parent_digest(k, v)}
                            for k, v in parents.items()},
                "code_version": self.code_version, "git_commit": provenance.git_commit(),
                "packages": provenance.package_versions(), "metrics": out.metrics,
                "duration_s": round(time.time() - t0, 3),
            }
            ref = store.commit(tmp, self.name, key, self.main_table, manifest)
        shutil.rmtree(work, ignore_errors=True)
        return {**ref.model_dump(), "reused": False}


def stage(name: str, code: list, main_table: str | None = None, retries: int = 2,
          reads: dict[str, tuple[str, ...]] | None = None):
    """Declare a stage: ``@stage("rollout", code=[entroflow.rollout], reads={"generate_data": (...)})``
    over a body function. ``reads`` names, per parent, the files the body opens (glob patterns)."""

    def deco(body):
        s = Stage(name=name, body=body, code=[*code, body.__globals__["__file__"]],
                  main_table=main_table, reads=dict(reads or {}))

        @task(name=name, task_run_name=name, cache_key_fn=_cache_key, persist_result=True,
              result_serializer="json", retries=retries, retry_delay_seconds=1,
              retry_condition_fn=_retry_transient, cache_result_in_memory=False)
        def run(key: str, config: dict, parents: dict[str, dict], force: bool = False) -> dict:
            return s.execute(key, config, parents, force)

        s.task = run
        return s

    return deco
