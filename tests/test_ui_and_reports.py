"""`entroflow ui` stops promptly, `entroflow retry` finishes a failed run in place, a run leaves
``~`` and the current directory alone, and the reports say what their numbers mean (issue 13).

The integration tests run the CLI in subprocesses, as a user does: each process bootstraps its
own workspace and, unless told otherwise, starts its own ephemeral Prefect server on that
workspace's Prefect DB.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib.figure
from matplotlib.container import BarContainer
import psutil
import pyarrow as pa
import pytest

from entroflow import report, workspace
from entroflow.rl import compare
from tests.conftest import REPO, free_port

SMOKE = str(REPO / "configs" / "smoke.yaml")
STAGES = ["generate_data", "build_tokenizer", "pretrain_base", "rollout", "evaluate", "report"]
# Set by workspace.bootstrap() in this test process: a CLI subprocess must derive them from its own workspace.
BOOTSTRAPPED = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
                "MPLCONFIGDIR")


def cli_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BOOTSTRAPPED and k != "ENTROFLOW_FAILPOINT"}
    return {**env, "ENTROFLOW_HOME": str(home), "ENTROFLOW_PROGRESS": "0", "PYTHONPATH": str(REPO), **extra}


def cli(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entroflow.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def live_members(pgid: int) -> list[str]:
    """Processes of a process group that still run (zombies are dead, only not yet reaped)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:100]}")
        except (OSError, psutil.Error):
            pass
    return out


# --- A: entroflow ui ---------------------------------------------------------------------------

@pytest.mark.integration
def test_ui_stops_within_5_s_of_sigterm_and_links_the_training_runs(fresh_home):
    from entroflow import tracking

    exp_id = tracking.ensure_experiment(tracking.client(), "entroflow")
    port = free_port()
    log = fresh_home / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "entroflow.cli", "ui", "--port", str(port)], cwd=REPO,
                                env={**os.environ, "ENTROFLOW_HOME": str(fresh_home)}, stdout=out,
                                stderr=subprocess.STDOUT)
    pgid = None
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=entroflow"
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline, "the MLflow server did not answer within 120 s"
                time.sleep(0.5)
        (server,) = psutil.Process(proc.pid).children()
        pgid = os.getpgid(server.pid)
        assert pgid != os.getpgid(proc.pid)  # the server has its own group, stopped as a whole
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"`entroflow ui` took {elapsed:.1f} s to stop after SIGTERM"
        assert code == 0, log.read_text()[-3000:]
        assert live_members(pgid) == []
        with socket.socket() as s:  # the port is free again: nothing listens on it
            # SO_REUSEADDR, as every server sets it: the closed server's connections may linger in
            # TIME_WAIT, which only blocks a bind without it; a listening socket blocks either way.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning" in text, text[:500]
        assert "Traceback" not in text, text[-3000:]
    finally:  # never leave a server behind, whatever failed above
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pgid is not None and live_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


# --- B and C: a failed run retried in place, with HOME and the current directory left alone ------

@pytest.fixture(scope="module")
def failed_then_retried(mlflow_template, tmp_path_factory):
    """`entroflow run` made to fail in `evaluate`, then the failed runs listed and the run
    retried by its flow-run id without the failpoint; HOME and the current directory are empty
    dirs that nothing may write to."""
    root = tmp_path_factory.mktemp("retry")
    ws, home, cwd = root / "ws", root / "home", root / "cwd"
    for d in (ws, home, cwd):
        d.mkdir()
    shutil.copy(mlflow_template, ws / "mlflow.db")
    env = cli_env(ws, HOME=str(home))
    failed = cli(["run", SMOKE], {**env, "ENTROFLOW_FAILPOINT": "evaluate"}, cwd=cwd)
    con = sqlite3.connect(ws / "mlflow.db")
    rows = con.execute("select value from tags where key = 'prefect.flow_run_id'").fetchall()
    con.close()
    flow_run_id = rows[0][0] if len(rows) == 1 else None
    listed = cli(["retry"], env, cwd=cwd)
    retried = cli(["retry", flow_run_id], env, cwd=cwd) if flow_run_id else None
    return {"ws": ws, "home": home, "cwd": cwd, "failed": failed, "listed": listed, "retried": retried,
            "flow_run_id": flow_run_id}


@pytest.mark.integration
def test_retry_finishes_the_failed_run_in_place(failed_then_retried):
    r = failed_then_retried
    assert r["failed"].returncode == 1, r["failed"].stdout + r["failed"].stderr
    assert "stage evaluate failed" in r["failed"].stderr
    assert r["flow_run_id"], "the failed run left no MLflow parent run with its flow-run id"
    assert r["flow_run_id"] in r["listed"].stdout and "Failed" in r["listed"].stdout, r["listed"].stdout
    out = r["retried"]
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"retrying flow run {r['flow_run_id']}")
    assert [line.split()[:2] for line in lines[1:7]] == [["Cached", s] for s in STAGES[:4]] + [
        ["Completed", "evaluate"], ["Completed", "report"]], out.stdout
    assert f"flow run {r['flow_run_id']} completed" in out.stdout
    # Quiet: no Prefect analytics tracebacks ("database is locked") or INFO chatter on the console.
    assert out.stderr.strip() == "", out.stderr[-3000:]
    assert len(lines) < 15, out.stdout
    # The same MLflow parent run, now finished; no second parent was created.
    con = sqlite3.connect(r["ws"] / "mlflow.db")
    parents = con.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where t.key = 'prefect.flow_run_id'").fetchall()
    con.close()
    assert len(parents) == 1 and parents[0][1] == "FINISHED", parents
    assert f"MLflow parent run: {parents[0][0]}" in out.stdout


@pytest.mark.integration
def test_retry_of_an_unknown_flow_run_is_one_line(prefect_server, fresh_home):
    out = cli(["retry", "00000000-0000-0000-0000-000000000000"], cli_env(fresh_home, PREFECT_API_URL=prefect_server))
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: no flow run '00000000-0000-0000-0000-000000000000'"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.integration
def test_runs_write_nothing_to_home_or_the_current_directory(failed_then_retried):
    r = failed_then_retried
    assert r["retried"] is not None and r["retried"].returncode == 0
    assert sorted(p.relative_to(r["home"]).as_posix() for p in r["home"].rglob("*")) == []
    assert sorted(p.relative_to(r["cwd"]).as_posix() for p in r["cwd"].rglob("*")) == []
    assert any((r["ws"] / "cache" / "matplotlib").iterdir())  # matplotlib's cache went to the workspace


@pytest.mark.integration
def test_published_report_explains_pass_at_1_and_the_parameter_count(failed_then_retried):
    text = (failed_then_retried["ws"] / "reports" / "smoke" / "latest" / "report.md").read_text()
    assert "pass@1 is the accuracy of all" in text and "avg@1 and maj@1 score the first sample alone" in text
    assert "tied and counted once" in text


# --- C: unit checks -----------------------------------------------------------------------------

def test_bootstrap_points_matplotlib_into_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    workspace.bootstrap()
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "cache" / "matplotlib")
    monkeypatch.setenv("MPLCONFIGDIR", "/somewhere/else")  # an explicit setting wins
    workspace.bootstrap()
    assert os.environ["MPLCONFIGDIR"] == "/somewhere/else"


def _report_ctx() -> dict:
    ev = {"greedy_acc": 0.55, "sampled_acc": 0.629, "avg@1": 0.638, "pass@1": 0.629, "maj@1": 0.638,
          "avg@8": 0.629, "pass@8": 0.976, "maj@8": 0.838}
    return {"title": "t", "name": "n", "config_hash": "0" * 12, "git_commit": "0" * 12, "created": "now",
            "stages": [], "model": {"metrics": {"parameters": 591232, "final_loss": 1.0, "train_seconds": 1.0,
                                                        "tokens_per_s": 1.0}},
            "evaluate": {"metrics": ev}, "ks": [1, 8], "kmax": 8, "levels": {}, "level_labels": {},
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "n_samples": 8}


def test_report_explains_pass_at_1_vs_avg_at_1_and_states_the_counting_rule():
    text = report.render(_report_ctx())
    table_end = text.index("| maj@8 |")
    note = text.index("pass@1 is the accuracy of all of them (= sampled_acc = avg@8)")
    assert note > table_end  # under the table
    assert "avg@1 and maj@1 score the first sample alone" in text
    assert ("591,232 parameters (unique weights: the input embedding and the output head are tied and counted once)"
            in text)


def test_counting_rule_matches_model_parameters():
    """model.parameters() yields a tied weight once: the number the report prints is the unique count."""
    from entroflow.model import build_model

    m = build_model(512, 128, 2, 4, 512, 128, 0)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    unique = sum(p.numel() for p in m.parameters())
    every = sum(p.numel() for _, p in m.named_parameters(remove_duplicate=False))
    assert unique == 591_232 and every - unique == 512 * 128


@pytest.fixture()
def saved_figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figs.append(self))
    return figs


def _summary(n_seeds: int) -> dict:
    keys = ("greedy_acc", "sampled_acc", "maj_acc")
    return {m: {k: (0.5, 0.1 if n_seeds > 1 else 0.0, n_seeds) for k in keys} for m in ("base", "grpo")}


def test_accuracy_plot_says_1_seed_without_error_bars(tmp_path, saved_figures):
    compare.plot_accuracy(_summary(1), ["base", "grpo"], 8, tmp_path / "a.png")
    ax = saved_figures[0].axes[0]
    assert ax.get_title() == "Held-out accuracy per method (1 seed)"
    assert all(c.errorbar is None for c in ax.containers if isinstance(c, BarContainer))
    compare.plot_accuracy(_summary(3), ["base", "grpo"], 8, tmp_path / "b.png")
    ax = saved_figures[1].axes[0]
    assert ax.get_title() == "Held-out accuracy per method (mean ± sd over 3 seeds)"
    assert all(c.errorbar is not None for c in ax.containers if isinstance(c, BarContainer))


def test_curves_are_a_grid_with_one_axis_per_reward_kind(tmp_path, saved_figures):
    methods = ["grpo", "dapo", "empo", "em_rl", "em_ft"]
    hist = {(m, 0): pa.table({"step": [0, 1, 2], "reward_mean": [float(i)] * 3, "accuracy": [0.1] * 3,
                              "token_entropy_mean": [1.0] * 3, "response_length_mean": [9.0] * 3})
            for i, m in enumerate(methods)}
    evals = {(m, 0): pa.table({"step": [0, 2], "eval_sampled_acc": [0.1, 0.2]}) for m in methods}
    compare.plot_curves(hist, evals, tmp_path / "c.png")
    fig = saved_figures[0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 7 and fig.get_size_inches()[1] > 5  # 3 reward kinds + 4 panels, in two rows
    rewards = {ax.get_title(): len(ax.get_lines()) for ax in axes if ax.get_title().startswith("reward")}
    assert rewards == {"reward: correct answer ±1 (DAPO: minus overlong penalty)": 2,  # grpo and dapo
                       "reward: EMPO, answer-cluster share of the group (0-1)": 1,
                       "reward: EM-RL, mean token log-prob (nats)": 1}  # EM-FT has no reward
    assert [t.get_text() for t in fig.legends[0].get_texts()] == methods
