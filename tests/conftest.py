"""Test harness: a throw-away workspace, one session-scoped Prefect server, a pre-migrated MLflow DB.

The environment is set at import time, before any test module imports Prefect or MLflow: Prefect
reads PREFECT_HOME and its server settings when it is imported.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="entroflow-tests-"))
os.environ["ENTROFLOW_HOME"] = str(_SESSION_DIR / "home")
os.environ["ENTROFLOW_PROGRESS"] = "0"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("ENTROFLOW_FAILPOINT", None)

from entroflow import workspace  # noqa: E402

workspace.bootstrap()

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect API server for the whole session (startup ~20 s on 2 cores, so share it)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    """An MLflow SQLite DB migrated once; workspaces copy it (0.3 s) instead of migrating (8 s)."""
    from mlflow.tracking import MlflowClient

    path = _SESSION_DIR / "mlflow-template.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def fresh_home(tmp_path, monkeypatch, mlflow_template):
    """Point the workspace (and MLflow) at a new empty dir for one test."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("ENTROFLOW_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    return home


@contextmanager
def module_workspace(tmp_path_factory, mlflow_template, name: str):
    """A workspace for a whole test module (ENTROFLOW_HOME and MLflow pointed at it, with a copy
    of the pre-migrated MLflow DB); the environment is restored afterwards."""
    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    old = {k: os.environ.get(k) for k in ("ENTROFLOW_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["ENTROFLOW_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    try:
        yield home
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
