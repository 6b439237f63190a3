"""Real kills: `entroflow run` is SIGKILLed (its whole process group) at several moments of a run
in a fresh workspace, and the same command is run again each time.

Moments: while MLflow creates its tracking DB, while Prefect creates its DB, during pretraining,
right after a stage's commit, and during an RL stage after its first checkpoint. After every
kill, nothing partial is visible in the store; the final run finishes, stages that had finished
come back Cached, and the RL stage resumes from its checkpoint.

Each run starts its own ephemeral Prefect server, as a user's `entroflow run` does (no shared
test server here: its DB creation is one of the windows under test).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
SMOKE = str(REPO / "configs" / "smoke.yaml")
SMOKE_RL = str(REPO / "configs" / "smoke-rl.yaml")


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    return {**env, "ENTROFLOW_HOME": str(home), "ENTROFLOW_PROGRESS": "0"}


def _run_and_kill(home: Path, config: str, pattern: str, log, timeout: float = 300) -> float:
    """Start `entroflow run config`; SIGKILL its process group as soon as ``pattern`` (a glob
    under the workspace) exists. Returns the seconds it ran; fails if the run ended first."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "entroflow.cli", "run", config], env=_env(home), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not glob.glob(str(home / pattern)):
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {pattern} appeared"
            assert time.time() - t0 < timeout, f"{pattern} did not appear within {timeout} s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.time() - t0


def _assert_nothing_partial(home: Path) -> None:
    """Every output under store/<stage>/<key> verifies against its manifest; LATEST points at one."""
    from entroflow.store import Store

    store = Store(home / "store")
    if not store.root.exists():
        return
    for stage_dir in store.root.iterdir():
        if stage_dir.name.startswith("."):
            continue
        for out in stage_dir.iterdir():
            if out.is_dir():
                ref, why = store.lookup(stage_dir.name, out.name)
                assert ref is not None, f"partial output visible: {out} ({why})"
        latest = stage_dir / "LATEST"
        if latest.exists():
            assert (stage_dir / latest.read_text().strip()).is_dir(), f"{latest} points at nothing"


def _states(stdout: str) -> dict[str, str]:
    """label -> state from the one line per stage that `entroflow run` prints."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("Completed", "Cached", "Failed") and parts[3] == "s":
            out[parts[1]] = parts[0]
    return out


def test_sigkill_at_any_moment_leaves_a_usable_workspace(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    moments = [  # in the order a run reaches them
        (SMOKE, "mlflow.db.init-*"),  # MLflow creates and migrates the tracking DB (the CLI does it first)
        (SMOKE, "prefect/prefect.db"),  # Prefect creates and migrates its DB
        (SMOKE, "store/.tmp/pretrain_base-*"),  # during pretraining
        (SMOKE, "store/rollout/LATEST"),  # right after a stage's commit
        (SMOKE_RL, "store/.work/train_rl/*/checkpoints/step-*"),  # during an RL stage, after a checkpoint
    ]
    with open(tmp_path / "killed-runs.log", "w") as log:
        for config, pattern in moments:
            seconds = _run_and_kill(home, config, pattern, log)
            print(f"killed at {pattern} after {seconds:.1f} s")
            _assert_nothing_partial(home)
    # The tracking DB never became visible half-migrated.
    db = home / "mlflow.db"
    if db.exists():
        tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
        assert not any(t.startswith("_alembic_tmp_") for t in tables)

    # The same command again finishes, and what had finished is not redone.
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "entroflow.cli", "run", SMOKE_RL], env=_env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    print(f"final run: {time.time() - t0:.1f} s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    states = _states(done.stdout)
    for stage in ("generate_data", "build_tokenizer", "pretrain_base", "rollout"):
        assert states[stage] == "Cached", (stage, done.stdout)
    for method in ("grpo", "dapo", "empo", "em_rl", "em_ft"):
        assert states[f"train_rl[{method},s0]"] in ("Cached", "Completed"), done.stdout
    assert states["compare"] == "Completed"
    _assert_nothing_partial(home)
    assert not list((home / "store" / ".tmp").iterdir()), "staging dirs of killed runs were not swept"
    assert not glob.glob(str(home / "mlflow.db.init-*"))
    # The killed RL stage resumed from its checkpoint instead of starting over.
    log_file = done.stdout.split("log: ")[-1].strip()
    assert "resumed" in Path(log_file).read_text(), log_file
    # The report published by the final run is whole.
    assert "greedy_acc" in (home / "reports" / "smoke-rl" / "latest" / "report.md").read_text()
    manifest = json.loads(next((home / "store" / "compare").glob("*/manifest.json")).read_text())
    assert manifest["stage"] == "compare"
