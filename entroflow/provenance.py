"""What produced an output: code version, git commit, package versions, config hash."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType

from entroflow.workspace import PROJECT_ROOT

TRACKED_PACKAGES = ("entroflow", "torch", "transformers", "tokenizers", "pyarrow", "prefect",
                    "mlflow", "numpy", "math-verify")


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config_hash(cfg: dict) -> str:
    return sha256_text(canonical_json(cfg))


def code_version(modules: list[ModuleType | str | Path]) -> str:
    """Hash of the source files a stage runs.

    Prefect's TASK_SOURCE hashes only the task function itself and misses edits to the helpers
    it calls; hashing every module the stage declares catches those.
    """
    h = hashlib.sha256()
    for m in modules:
        path = Path(m.__file__) if isinstance(m, ModuleType) else Path(m)
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def path_digest(path: Path, memo: Path | None = None) -> str:
    """sha256 of a file's content, or of a directory's files (relative path + content), so an
    edited input file changes the cache key of the stage that reads it, whatever its name.

    ``memo`` (a JSON file) remembers digests by (path, size, mtime, inode), as git's index does,
    so a multi-GB model directory is hashed once, not on every run or ``entroflow stages``.
    """
    from entroflow.store import combine_digests, file_sha256

    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    known = {}
    if memo is not None and memo.exists():
        try:
            known = json.loads(memo.read_text())
        except ValueError:
            known = {}
    out, changed = {}, False
    for f in files:
        st = f.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        hit = known.get(str(f))
        if hit and hit[0] == stamp:
            digest = hit[1]
        else:
            digest, changed = file_sha256(f), True
            known[str(f)] = [stamp, digest]
        out[f.relative_to(path).as_posix() if f != path else f.name] = digest
    if memo is not None and changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return out[path.name] if path.is_file() else combine_digests(out)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the checkout, suffixed ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
