"""Content-checked, atomically written stage outputs.

Layout: ``<store>/<stage>/<key>/`` holds a stage's files plus ``manifest.json`` (digest, rows,
schema, config, parents, code version, provenance, metrics, created). ``key`` is the stage's
cache key (a hash of everything that determines the output), so the path is addressed by the
content of its inputs, as in Nix or Bazel; ``digest`` is the sha256 of the output files themselves.

Writes go to ``<store>/.tmp/<stage>-<uuid>/`` and become visible in one ``os.rename``; a process
killed mid-stage leaves only a temp dir, which no reader looks at and :meth:`Store.clean_tmp`
removes. A reader always re-hashes the files before trusting them, so a truncated or edited
output is reported as corrupt and the stage recomputes instead of returning bad data.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

MANIFEST = "manifest.json"
# Run records: what a stage measured about itself (timings, throughput, step history). They are
# checked like everything else but kept out of ``digest``, so a recomputed stage whose data came
# out identical keeps its digest and its downstream stages stay cached (early cutoff).
RECORDS = ("metrics.json", "history.parquet")


class ArtifactRef(BaseModel):
    """The small JSON-able handle a stage returns instead of a model or a table."""

    stage: str
    key: str
    path: str  # relative to the store root, so a workspace can move
    digest: str
    rows: int | None = None
    schema_: dict[str, str] | None = None  # column -> Arrow type of the stage's main table
    files: list[str] = []
    file_digests: dict[str, str] = {}  # data file -> sha256, so a reader can key on just what it reads

    model_config = {"populate_by_name": True}


def file_sha256(path: Path) -> str:
    fh = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            fh.update(chunk)
    return fh.hexdigest()


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every data file under ``root`` (not the manifest or run records), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in RECORDS:
            out[rel] = file_sha256(p)
    return out


def combine_digests(digests: dict[str, str]) -> str:
    """One sha256 over (relative path, file sha256) pairs, in path order."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel]}\n".encode())
    return h.hexdigest()


def records_digest(root: Path) -> dict[str, str]:
    return {r: file_sha256(root / r) for r in RECORDS if (root / r).exists()}


def write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file, checking it against ``schema`` when given."""
    t = pq.read_table(path)
    if schema is not None and not t.schema.equals(schema, check_metadata=False):
        raise ValueError(f"{path}: schema does not match the declared one:\n{t.schema}\nexpected\n{schema}")
    return t


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def resolve(self, ref: ArtifactRef | dict) -> Path:
        ref = ArtifactRef.model_validate(ref)
        return self.root / ref.path

    def lookup(self, stage: str, key: str) -> tuple[ArtifactRef | None, str]:
        """The verified output at ``key``, or None and the reason it is not usable."""
        d = self.path(stage, key)
        if not d.is_dir():
            latest = self.root / stage / "LATEST"
            if latest.exists() and latest.read_text().strip() == key:
                return None, "output missing (deleted after it was computed)"
            return None, "no output for this key"
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            return None, "output corrupted (manifest missing or unreadable)"
        found = file_digests(d)
        missing = sorted(set(manifest.get("ref", {}).get("file_digests") or {}) - set(found))
        if missing:
            return None, f"output corrupted (files missing: {', '.join(missing[:3])})"
        digest = combine_digests(found)
        if digest != manifest.get("digest"):
            changed = sorted(k for k, v in found.items() if (manifest["ref"].get("file_digests") or {}).get(k) != v)
            what = f" in {', '.join(changed[:3])}" if changed else ""
            return None, f"output corrupted{what} (digest {digest[:12]} != manifest {str(manifest.get('digest'))[:12]})"
        if records_digest(d) != manifest.get("records", {}):
            return None, "output corrupted (run records differ from the manifest)"
        return ArtifactRef.model_validate(manifest["ref"]), "output verified"

    def manifest(self, ref: ArtifactRef | dict) -> dict:
        return json.loads((self.resolve(ref) / MANIFEST).read_text())

    def latest_manifest(self, stage: str) -> dict | None:
        """The manifest of the stage's most recent commit (to explain why a key changed)."""
        p = self.root / stage / "LATEST"
        if not p.exists():
            return None
        try:
            return json.loads((self.root / stage / p.read_text().strip() / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    @contextmanager
    def staging(self, stage: str):
        """A fresh temp dir for a stage to write into; removed if the body raises."""
        tmp = self.root / ".tmp" / f"{stage}-{uuid.uuid4().hex[:12]}-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, tmp: Path, stage: str, key: str, main_table: str | None, manifest: dict) -> ArtifactRef:
        """Seal ``tmp`` (digest + manifest) and move it to ``<stage>/<key>`` in one rename."""
        rows = schema = None
        if main_table:
            meta = pq.read_metadata(tmp / main_table)
            rows = meta.num_rows
            schema = {f.name: str(f.type) for f in meta.schema.to_arrow_schema()}
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        digests = file_digests(tmp)
        ref = ArtifactRef(stage=stage, key=key, path=f"{stage}/{key}", digest=combine_digests(digests),
                          rows=rows, schema_=schema, files=files, file_digests=digests)
        manifest = {"stage": stage, "key": key, **manifest, "ref": ref.model_dump(), "digest": ref.digest, "rows": rows,
                    "schema": schema, "records": records_digest(tmp),
                    "created": dt.datetime.now(dt.timezone.utc).isoformat()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a forced or corrupted rerun replaces the old output
            trash = self.root / ".tmp" / f"trash-{uuid.uuid4().hex[:12]}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        latest_tmp = final.parent / f".LATEST.{uuid.uuid4().hex[:8]}"
        latest_tmp.write_text(key)
        os.replace(latest_tmp, final.parent / "LATEST")
        return ref

    def clean_tmp(self, older_than_s: float = 0.0) -> int:
        """Remove temp dirs left by killed runs whose process is gone; returns how many."""
        n = 0
        tmp_root = self.root / ".tmp"
        if not tmp_root.exists():
            return 0
        for d in tmp_root.iterdir():
            if not pid_alive(d.name.rsplit("-", 1)[-1]) and time.time() - d.stat().st_mtime >= older_than_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n


def pid_alive(pid: int | str) -> bool:
    """Whether process ``pid`` runs (a pid read from a file name may be any text: not a pid, not
    alive). Temp files and dirs carry their owner's pid, so a leftover of a killed run is told
    from one in use."""
    if isinstance(pid, str):
        if not pid.isdigit():
            return False
        pid = int(pid)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
