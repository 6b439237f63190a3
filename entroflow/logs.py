"""What a run prints, and where the rest goes.

A person watching ``entroflow run`` sees one line per stage, the progress of long stages, the
final table, and every warning and error; Prefect's, MLflow's and transformers' INFO chatter and
the tracebacks of a failed run go to a log file in the workspace, whose path is printed. With
``--verbose`` (or ``ENTROFLOW_LOG_LEVEL=INFO``/``DEBUG``) the console gets everything again.

:func:`quiet_environment` must run before Prefect, MLflow or transformers is imported: they read
their log levels and progress-bar switches from the environment at import time.
:func:`attach` runs after Prefect has set up its logging, and re-points its console handler.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

LEVEL_ENV = "ENTROFLOW_LOG_LEVEL"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s - %(message)s"


def console_level(verbose: bool = False) -> int:
    """WARNING by default; INFO with ``--verbose``; ``ENTROFLOW_LOG_LEVEL`` overrides both."""
    name = os.environ.get(LEVEL_ENV) or ("INFO" if verbose else "WARNING")
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ValueError(f"{LEVEL_ENV}={name!r}: not a log level (DEBUG, INFO, WARNING, ERROR)")
    return level


def quiet_environment(verbose: bool = False) -> None:
    """Third-party switches read at import time (explicit user settings win)."""
    if console_level(verbose) <= logging.INFO:
        return
    for k, v in {
        # Prefect logs INFO to its handlers (so the log file gets it), its console shows WARNING.
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..." etc.
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
        "TRANSFORMERS_VERBOSITY": "error",
        # Bars that use tqdm directly, e.g. transformers' "Converting and de-quantizing GGUF
        # tensors" (tqdm reads TQDM_* defaults when it is imported).
        "TQDM_DISABLE": "1",
    }.items():
        os.environ.setdefault(k, v)


class _NoTraceback(logging.Filter):
    """Keeps tracebacks and Prefect's task/flow state lines off the console: a failed stage gets
    one line from the runner and the run one line from the CLI; the rest is in the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (record.exc_info or "Traceback (most recent call last)" in msg
                    or msg.startswith("Finished in state"))


def log_path(home: Path, name: str) -> Path:
    d = home / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def attach(path: Path, verbose: bool = False) -> logging.Handler:
    """Send every INFO+ record (with tracebacks) to ``path``; filter the console handlers."""
    level = console_level(verbose)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    for h in root.handlers:  # Prefect's console handler (its logging config owns the root)
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(level)
            if level > logging.INFO:
                h.addFilter(_NoTraceback())
    root.addHandler(fh)
    for name in ("mlflow", "prefect._internal"):  # loggers that do not propagate to the root
        logging.getLogger(name).addHandler(fh)
    for name in ("entroflow", "tasks", "flows"):  # our own INFO (e.g. "resumed from step 25") reaches the file
        logging.getLogger(name).setLevel(logging.INFO)
    if level > logging.INFO:  # a warning is one line (Python's default adds the source line that raised it)
        warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {message}\n"
    return fh
