"""The stage store: atomic commits, digest checks, crash leftovers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from entroflow.store import MANIFEST, Store, read_table, write_table

SCHEMA = pa.schema([pa.field("x", pa.int64(), nullable=False), pa.field("s", pa.string())])


def _commit(store: Store, key: str, n: int = 5):
    with store.staging("stage") as tmp:
        write_table(pa.Table.from_pylist([{"x": i, "s": str(i)} for i in range(n)], schema=SCHEMA), tmp / "t.parquet")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.txt").write_text("hello")
        return store.commit(tmp, "stage", key, "t.parquet", {"config": {"a": 1}})


def test_commit_lookup_roundtrip(tmp_path):
    store = Store(tmp_path)
    ref = _commit(store, "k1")
    assert ref.rows == 5 and ref.schema_ == {"x": "int64", "s": "string"}
    assert ref.files == ["sub/f.txt", "t.parquet"]
    found, why = store.lookup("stage", "k1")
    assert found == ref and why == "output verified"
    manifest = json.loads((tmp_path / "stage" / "k1" / MANIFEST).read_text())
    assert manifest["digest"] == ref.digest and manifest["config"] == {"a": 1}
    assert read_table(store.resolve(ref) / "t.parquet", SCHEMA).num_rows == 5
    assert not any((tmp_path / ".tmp").iterdir())
    assert store.latest_manifest("stage")["key"] == "k1"


def test_schema_mismatch_is_an_error(tmp_path):
    store = Store(tmp_path)
    ref = _commit(store, "k1")
    with pytest.raises(ValueError, match="schema does not match"):
        read_table(store.resolve(ref) / "t.parquet", pa.schema([pa.field("x", pa.int32())]))


@pytest.mark.parametrize("damage", ["edit", "delete_file", "delete_manifest", "add_file"])
def test_corruption_is_detected(tmp_path, damage):
    store = Store(tmp_path)
    _commit(store, "k1")
    d = tmp_path / "stage" / "k1"
    if damage == "edit":
        (d / "sub" / "f.txt").write_text("hellO")
    elif damage == "delete_file":
        (d / "t.parquet").unlink()
    elif damage == "delete_manifest":
        (d / MANIFEST).unlink()
    else:
        (d / "extra.bin").write_bytes(b"x")
    ref, why = store.lookup("stage", "k1")
    assert ref is None and ("corrupted" in why or "manifest" in why), why


def test_failed_body_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.staging("stage") as tmp:
            (tmp / "partial.parquet").write_bytes(b"half")
            raise RuntimeError("boom")
    assert store.lookup("stage", "k")[0] is None
    assert not any((tmp_path / ".tmp").iterdir())


def test_recommit_replaces_atomically(tmp_path):
    store = Store(tmp_path)
    a = _commit(store, "k1", n=5)
    b = _commit(store, "k1", n=7)
    assert a.digest != b.digest and store.lookup("stage", "k1")[0].rows == 7
    assert not [p for p in (tmp_path / ".tmp").iterdir()]


WRITER = """
import sys, time
from pathlib import Path
from entroflow.store import Store
store = Store(Path(sys.argv[1]))
with store.staging("stage") as tmp:
    (tmp / "part-0.parquet").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writer_leaves_no_visible_output(tmp_path):
    """SIGKILL mid-stage: nothing appears under the stage, the temp dir is swept by the next run."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert not (tmp_path / "stage").exists()
    leftovers = list((tmp_path / ".tmp").iterdir())
    assert len(leftovers) == 1
    assert Store(tmp_path).clean_tmp() == 1
    assert not any((tmp_path / ".tmp").iterdir())


def test_clean_tmp_spares_live_writers(tmp_path):
    store = Store(tmp_path)
    with store.staging("stage") as tmp:
        time.sleep(0.01)
        assert store.clean_tmp() == 0 and tmp.exists()


def test_run_records_are_checked_but_not_in_the_digest(tmp_path):
    """Same data + different timings -> same digest (downstream stays cached); edited records -> corrupt."""
    store = Store(tmp_path)

    def commit(seconds: float):
        with store.staging("stage") as tmp:
            (tmp / "data.txt").write_text("same data")
            (tmp / "metrics.json").write_text(json.dumps({"seconds": seconds}))
            return store.commit(tmp, "stage", "k", None, {})

    a, b = commit(1.0), commit(2.0)
    assert a.digest == b.digest
    (tmp_path / "stage" / "k" / "metrics.json").write_text("{}")
    ref, why = store.lookup("stage", "k")
    assert ref is None and "records" in why


def test_missing_and_partially_deleted_outputs_are_named_as_such(tmp_path):
    """`entroflow stages` says why a stage reruns: a deleted output is "missing", not a digest of nothing."""
    import shutil

    store = Store(tmp_path)
    ref = _commit(store, "k1")
    (store.resolve(ref) / "t.parquet").unlink()
    assert store.lookup("stage", "k1") == (None, "output corrupted (files missing: t.parquet)")
    shutil.rmtree(store.resolve(ref))
    assert store.lookup("stage", "k1") == (None, "output missing (deleted after it was computed)")
    assert store.lookup("stage", "other") == (None, "no output for this key")


def test_file_digests_let_a_reader_key_on_what_it_reads(tmp_path):
    from entroflow.store import combine_digests

    store = Store(tmp_path)
    ref = _commit(store, "k1")
    assert set(ref.file_digests) == {"sub/f.txt", "t.parquet"}
    assert combine_digests(ref.file_digests) == ref.digest


def test_stage_key_covers_only_the_parent_files_it_reads():
    from tasks._stage import Stage

    reader = Stage(name="r", body=lambda *a: None, code=[__file__], main_table=None, reads={"data": ("a.parquet",)})
    everything = Stage(name="r", body=lambda *a: None, code=[__file__], main_table=None)
    old = {"stage": "d", "key": "k", "path": "d/k", "digest": "D1", "file_digests": {"a.parquet": "1", "b.parquet": "2"}}
    new_b = {**old, "digest": "D2", "file_digests": {"a.parquet": "1", "b.parquet": "3"}}
    new_a = {**old, "digest": "D3", "file_digests": {"a.parquet": "9", "b.parquet": "2"}}
    assert reader.key({}, {"data": old}) == reader.key({}, {"data": new_b})  # b changed: not read
    assert reader.key({}, {"data": old}) != reader.key({}, {"data": new_a})
    assert everything.key({}, {"data": old}) != everything.key({}, {"data": new_b})
