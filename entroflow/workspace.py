"""Where a run writes: one workspace root holds the stage store, MLflow's DB and artifacts, and
Prefect's home, so a run never writes to ``~`` or the current directory.

Default root: ``artifacts/`` of the project checkout; ``ENTROFLOW_HOME`` overrides it.
:func:`bootstrap` must run before Prefect or MLflow is imported: Prefect reads ``PREFECT_HOME``
and its ephemeral-server settings at import time.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    env = os.environ.get("ENTROFLOW_HOME")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "artifacts"


def store_root() -> Path:
    return home() / "store"


def prefect_results() -> Path:
    return home() / "prefect" / "results"


def mlflow_artifacts() -> Path:
    return home() / "mlflow-artifacts"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def input_digest_memo() -> Path:
    """Where content digests of input files are remembered (see provenance.path_digest)."""
    return store_root() / ".input-digests.json"


def sqlite_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` tracking URI (None for servers and other databases)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def bootstrap() -> Path:
    """Point Prefect, MLflow and Hugging Face at the workspace (explicit env vars win)."""
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(root / "prefect"),
        # A cold ephemeral Prefect server runs its DB migrations at start-up, which takes longer
        # than the default 20 s on a 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_results()),
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # Nothing is ever fetched from a model hub: models are built here or read from local dirs.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        # matplotlib writes its font cache and config to ~/.cache and ~/.config otherwise.
        "MPLCONFIGDIR": str(root / "cache" / "matplotlib"),
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    return root
