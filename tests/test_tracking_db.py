"""The SQLite tracking DB survives a kill during MLflow's migrations (entroflow.tracking.ensure_sqlite_db).

The half-migrated states are the ones Alembic's batch mode leaves on SQLite: a copy table
``_alembic_tmp_<t>`` beside its intact original (killed while copying), or in its place (killed
after dropping the original). tests/test_kill.py kills real runs; these check each repair."""
from __future__ import annotations

import shutil
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from entroflow import tracking


def _db(tmp_path, mlflow_template, with_run: bool):
    path = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, path)
    uri = f"sqlite:///{path}"
    if with_run:
        c = MlflowClient(uri)
        c.create_run(c.create_experiment("e", artifact_location=(tmp_path / "a").as_uri()).__str__())
        tracking._migrate(uri)  # drops MLflow's cached engine for this file
    return path, uri


def _tables(path):
    return {r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master where type='table'")}


def _runs(path):
    return sqlite3.connect(path).execute("select count(*) from runs").fetchone()[0]


def test_new_db_is_created_whole_and_in_one_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db.init-999999999-deadbeef").write_text("left by a killed run")
    tracking.ensure_sqlite_db(uri)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["mlflow.db"]
    assert {"runs", "experiments", "alembic_version"} <= _tables(tmp_path / "ws" / "mlflow.db")
    assert MlflowClient(uri).get_experiment_by_name("Default") is not None


def test_half_created_db_without_runs_is_moved_aside(tmp_path, mlflow_template):
    path, uri = _db(tmp_path, mlflow_template, with_run=False)
    sqlite3.connect(path).execute("create table _alembic_tmp_trace_tags (x int)").connection.commit()
    tracking.ensure_sqlite_db(uri)
    aside = list(tmp_path.glob("mlflow.db.broken-*"))
    assert len(aside) == 1 and "_alembic_tmp_trace_tags" in _tables(aside[0])  # kept, not deleted
    assert not any(t.startswith("_alembic_tmp_") for t in _tables(path))
    assert MlflowClient(uri).search_experiments()


@pytest.mark.parametrize("killed_state", [
    "create table _alembic_tmp_model_versions as select * from model_versions",  # unfinished copy: dropped
    "alter table model_versions rename to _alembic_tmp_model_versions",  # original dropped: copy renamed back
], ids=["unfinished-copy", "original-dropped"])
def test_half_migrated_db_with_runs_is_repaired_and_runs_kept(tmp_path, mlflow_template, killed_state):
    path, uri = _db(tmp_path, mlflow_template, with_run=True)
    con = sqlite3.connect(path)
    con.execute(killed_state)
    con.commit()
    tracking.ensure_sqlite_db(uri)
    assert "_alembic_tmp_model_versions" not in _tables(path) and "model_versions" in _tables(path)
    assert _runs(path) == 1 and not list(tmp_path.glob("mlflow.db.broken-*"))
    assert len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("e").experiment_id])) == 1


def test_unrepairable_db_with_runs_is_a_clear_error_and_is_kept(tmp_path, mlflow_template):
    path, uri = _db(tmp_path, mlflow_template, with_run=True)
    con = sqlite3.connect(path)
    con.execute("create table _alembic_tmp_runs (x int)")
    con.execute("update alembic_version set version_num = 'no-such-revision'")
    con.commit()
    with pytest.raises(tracking.TrackingStoreError, match=r"mlflow\.db: MLflow tracking DB with 1 runs .* `mlflow db upgrade"):
        tracking.ensure_sqlite_db(uri)
    assert path.exists() and _runs(path) == 1


def test_hot_journal_of_a_killed_writer_is_rolled_back_not_an_error(tmp_path):
    """A writer SIGKILLed mid-transaction leaves a hot journal; a read-only connection cannot roll
    it back ("attempt to write a readonly database", seen once in CI's kill test). The check
    reads the DB anyway, and the killed transaction is gone."""
    import signal
    import sqlite3
    import subprocess
    import sys

    from entroflow.tracking import _tables

    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("create table runs(a)")
    con.execute("insert into runs values (1)")
    con.commit()
    con.close()
    writer = ("import sqlite3, time\n"
              f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
              "con.execute('pragma cache_size=1'); con.execute('begin')\n"
              "for i in range(20000): con.execute('insert into runs values (?)', (i,))\n"
              "print('ready', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    p.stdout.readline()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / "x.db-journal").exists()
    assert _tables(db) == ({"runs"}, 1)
