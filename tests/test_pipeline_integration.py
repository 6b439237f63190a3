"""The smoke DAG through a real Prefect server and a real MLflow SQLite store.

The tests in this module share one workspace and run in order: the first run computes every
stage; later tests rerun, corrupt, fail and force stages against it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, free_port, module_workspace

pytestmark = pytest.mark.integration
SMOKE = str(REPO / "configs" / "smoke.yaml")
STAGES = ["generate_data", "build_tokenizer", "pretrain_base", "rollout", "evaluate", "report"]


@pytest.fixture(scope="module")
def ws(prefect_server, mlflow_template, tmp_path_factory):
    """One workspace for the module, with a copied pre-migrated MLflow DB."""
    with module_workspace(tmp_path_factory, mlflow_template, "ws") as home:
        yield home


def run_pipeline(overrides=(), force=(), failpoint=None):
    from flows.pipeline import pipeline

    if failpoint:
        os.environ["ENTROFLOW_FAILPOINT"] = failpoint
    try:
        state = pipeline(config_path=SMOKE, overrides=list(overrides), force=list(force), return_state=True)
    finally:
        os.environ.pop("ENTROFLOW_FAILPOINT", None)
    return state


def states(results) -> dict[str, str]:
    return {s: results[s]["state"] for s in STAGES if s in results}


def test_smoke_dag_end_to_end(ws):
    t0 = time.time()
    state = run_pipeline()
    assert state.is_completed(), state
    results = state.result()
    assert states(results) == {s: "Completed" for s in STAGES}
    print(f"smoke DAG first run: {time.time() - t0:.1f} s")
    report = Path(results["report_path"])
    assert report.exists() and "greedy_acc" in report.read_text()
    assert (report.parent / "levels.png").stat().st_size > 1000


def test_parquet_outputs_match_declared_schemas(ws):
    from entroflow.data import grammar, kg, ood, reasoning
    from entroflow.rollout import SCHEMA as ROLLOUT_SCHEMA
    from entroflow.store import Store, read_table
    from tasks.evaluate import SCHEMA as EVAL_SCHEMA

    store = Store(ws / "store")
    expected = {
        ("generate_data", "reasoning.parquet"): reasoning.SCHEMA,
        ("generate_data", "corpus.parquet"): grammar.SCHEMA,
        ("generate_data", "ood.parquet"): ood.SCHEMA,
        ("rollout", "rollouts.parquet"): None,  # engine schema + the decoding column, checked below
        ("evaluate", "evaluation.parquet"): EVAL_SCHEMA,
    }
    for name, table_schema in kg.SCHEMAS.items() if hasattr(kg, "SCHEMAS") else []:
        expected[("generate_data", f"kg_{name}.parquet")] = table_schema
    for (stage, fname), schema in expected.items():
        key = (store.root / stage / "LATEST").read_text().strip()
        ref, why = store.lookup(stage, key)
        assert ref is not None, why
        path = store.resolve(ref) / fname
        if schema is None:
            t = pq.read_table(path)
            assert t.schema.remove(t.schema.get_field_index("decoding")).equals(ROLLOUT_SCHEMA, check_metadata=False)
            assert set(t["decoding"].to_pylist()) == {"greedy", "sampled"}
        else:
            t = read_table(path, schema)
        assert t.num_rows > 0
        manifest = json.loads((store.resolve(ref) / "manifest.json").read_text())
        for field in ("config", "parents", "code_version", "git_commit", "packages", "digest", "created"):
            assert field in manifest, (stage, field)


def test_second_run_is_all_cached(ws):
    state = run_pipeline()
    assert state.is_completed()
    assert states(state.result()) == {s: "Cached" for s in STAGES}


def test_mlflow_parent_and_children(ws):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("entroflow")
    assert Path(exp.artifact_location.removeprefix("file://")).is_relative_to(ws)
    parents = c.search_runs([exp.experiment_id], "tags.`entroflow.kind` = 'pipeline'",
                            order_by=["attributes.start_time ASC"])
    assert len(parents) == 2
    first, second = parents
    for p in parents:
        assert p.info.status == "FINISHED"
        for tag in ("prefect.flow_run_id", "config_hash", "git_commit", "entroflow_version"):
            assert p.data.tags.get(tag), tag
        assert p.data.params["pretrain.steps"] == "60"
        assert "greedy_acc" in p.data.metrics
    def children(parent):
        runs = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        return {r.data.tags["stage"]: r for r in runs}
    a, b = children(first), children(second)
    assert set(a) == set(b) == set(STAGES)
    assert all(r.data.tags["cached"] == "false" for r in a.values())
    assert all(r.data.tags["cached"] == "true" for r in b.values())
    # A cached child points at the run that computed its output instead of copying the files again.
    assert all(b[s].data.tags["artifacts_run_id"] == a[s].info.run_id for s in STAGES)
    assert [f.path for f in c.list_artifacts(b["rollout"].info.run_id)] == ["manifest.json"]  # not the data again
    # Cached children carry the same metrics, so runs compare side by side.
    assert a["evaluate"].data.metrics == b["evaluate"].data.metrics
    assert a["evaluate"].data.metrics["greedy_acc"] == first.data.metrics["greedy_acc"]
    hist = c.get_metric_history(a["pretrain_base"].info.run_id, "step/loss")
    assert len(hist) >= 5 and hist[0].step == 0
    arts = {f.path for f in c.list_artifacts(a["rollout"].info.run_id)}
    assert "rollouts.parquet" in arts
    assert {f.path for f in c.list_artifacts(a["pretrain_base"].info.run_id, "model")} >= {"model/config.json", "model/model.safetensors"}


def test_corrupted_output_is_recomputed(ws):
    from entroflow.store import Store

    store = Store(ws / "store")
    key = (store.root / "rollout" / "LATEST").read_text().strip()
    path = store.root / "rollout" / key / "rollouts.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    state = run_pipeline()
    s = states(state.result())
    assert s["rollout"] == "Completed"
    assert store.lookup("rollout", key)[0] is not None
    # Decoding is seeded per (prompt, sample), so the recomputed rollouts are identical and the
    # downstream stages keep their keys.
    assert s["evaluate"] == "Cached" and s["report"] == "Cached"
    assert s["pretrain_base"] == "Cached"


def test_failed_stage_leaves_no_partial_output_and_rerun_resumes(ws):
    from entroflow.store import Store

    store = Store(ws / "store")
    overrides = ["evaluate.ks=[1, 2]"]  # a new evaluate key, so no earlier output exists for it
    state = run_pipeline(overrides, failpoint="evaluate")
    assert state.is_failed()
    evaluate_dirs_before = set((store.root / "evaluate").iterdir())
    assert not list((store.root / ".tmp").iterdir()), "staging dirs must be removed on failure"
    state = run_pipeline(overrides)
    assert state.is_completed()
    s = states(state.result())
    assert s["generate_data"] == s["build_tokenizer"] == s["pretrain_base"] == s["rollout"] == "Cached"
    assert s["evaluate"] == "Completed" and s["report"] == "Completed"
    assert len(set((store.root / "evaluate").iterdir()) - evaluate_dirs_before) == 1


def test_transient_error_is_retried(ws):
    state = run_pipeline(["report.title=retried"], failpoint="report:once")
    assert state.is_completed()
    assert states(state.result())["report"] == "Completed"


def test_force_recomputes_stage_and_downstream(ws):
    state = run_pipeline(force=["rollout"])
    s = states(state.result())
    assert [s[x] for x in STAGES] == ["Cached"] * 3 + ["Completed"] * 3


def test_cli_stages_explains_cache(ws):
    from entroflow.cli import app

    r = CliRunner().invoke(app, ["stages", SMOKE], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert r.output.count("Cached") == len(STAGES)
    r = CliRunner().invoke(app, ["stages", SMOKE, "--set", "pretrain.steps=61"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "pretrain.steps" in r.output and r.output.count("Cached") == 2


def test_cli_runs_lists_runs(ws):
    from entroflow.cli import app

    r = CliRunner().invoke(app, ["runs"], terminal_width=250)
    assert r.exit_code == 0, r.output
    assert r.output.count("smoke") >= 5


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, by its pid (SIGTERM, then SIGKILL after 30 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _env(extra=None):
    env = {**os.environ, "ENTROFLOW_PROGRESS": "0", **(extra or {})}
    return env


def test_separate_process_rerun_is_cached(ws, prefect_server):
    """A new process (as a user's second `entroflow run`) finds every stage Cached."""
    out = subprocess.run([sys.executable, "-m", "entroflow.cli", "run", SMOKE], env=_env({"PREFECT_API_URL": prefect_server}),
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    # One line per stage, then the table.
    assert [line.split()[:2] for line in out.stdout.splitlines()[:len(STAGES)]] == [["Cached", s] for s in STAGES], out.stdout
    assert "Prefect" not in out.stdout + out.stderr and "INFO" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_ui_serves_the_workspace(ws):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "entroflow.cli", "ui", "--port", str(port)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        assert f"http://127.0.0.1:{port}" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=entroflow"
        deadline, body = time.time() + 120, None
        while time.time() < deadline and body is None:
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body and body["experiment"]["name"] == "entroflow"
    finally:
        _stop(proc)
    # Stopping `entroflow ui` stops the MLflow server it started: the port is free again.
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            time.sleep(0.5)
        except OSError:
            break
    else:
        pytest.fail("the MLflow server outlived `entroflow ui`")


def test_deploy_serves_a_cron_schedule(ws, prefect_server):
    from prefect.client.orchestration import get_client

    proc = subprocess.Popen([sys.executable, "-m", "entroflow.cli", "deploy", SMOKE, "--cron", "0 2 * * *"],
                            env=_env({"PREFECT_API_URL": prefect_server}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline, dep = time.time() + 120, None
        while time.time() < deadline and dep is None:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with get_client(sync_client=True) as client:
                    dep = client.read_deployment_by_name("entroflow-pipeline/smoke")
            except Exception:
                time.sleep(2)
        assert dep is not None
        assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
        assert dep.parameters["config_path"].endswith("configs/smoke.yaml")
    finally:
        _stop(proc)


def test_reasoning_flow_compares_methods(ws):
    """The reasoning comparison on the smoke world: one train_rl child per method, evaluations of
    base, base+EM-INF and every trained model, and a comparison table with the claims checked."""
    from flows.pipeline import pipeline
    from mlflow.tracking import MlflowClient

    state = pipeline(config_path=str(REPO / "configs" / "smoke-rl.yaml"), return_state=True)
    assert state.is_completed(), state
    results = state.result()
    methods = ["grpo", "dapo", "empo", "em_rl", "em_ft"]
    for m in methods:
        assert results[f"train_rl[{m},s0]"]["state"] == "Completed"
        assert f"evaluate[{m},s0]" in results
    # The spine's stages and the base evaluation come from the smoke run's cache.
    assert results["pretrain_base"]["state"] == "Cached"
    assert results["evaluate[base,s0]"]["state"] == "Cached"
    comparison = Path(results["comparison_path"])
    text = comparison.read_text()
    # The claims moved to the run's one claims table, next to the spine report.
    claims = Path(results["claims_path"]).read_text()
    assert "EMPO, with no labels, about matches supervised GRPO/DAPO" in claims and "EMPO (Zhang et al. 2025)" in claims
    assert Path(results["claims_path"]).parent == Path(results["report_path"]).parent
    assert "claims.md" in text
    for m in ("base", "base+em_inf", *methods):
        assert f"| {m} |" in text
    table = pq.read_table(ws / "store" / results["compare"]["ref"]["path"] / "comparison.parquet")
    assert set(table["model"].to_pylist()) == {"base", "base+em_inf", *methods}
    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("entroflow")
    parent = c.get_run(results["mlflow_parent_run_id"])
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {r.info.run_name for r in kids}
    assert {f"train_rl[{m},s0]" for m in methods} <= names and "compare" in names
    train_run = next(r for r in kids if r.info.run_name == "train_rl[dapo,s0]")
    # Every child carries what a user groups by, as params (compare page, parallel coordinates)
    # and tags, with the same keys in every flow.
    ev = next(r for r in kids if r.info.run_name == "evaluate[empo,s0]")
    assert {k: ev.data.params[k] for k in ("flow", "stage", "method", "seed", "model", "model_source")} == {
        "flow": "reasoning", "stage": "evaluate", "method": "empo", "seed": "0", "model": "train_rl[empo,s0]",
        "model_source": "scratch"}
    assert ev.data.params["train.reward"] == "empo" and ev.data.tags["method"] == "empo"
    assert train_run.data.params["method"] == "dapo" and train_run.data.params["train.eps_high"] == "0.28"
    base = next(r for r in kids if r.info.run_name == "evaluate[base,s0]")
    assert base.data.params["method"] == "base" and base.data.params["flow"] == "reasoning"
    spine = next(r for r in kids if r.info.run_name == "pretrain_base")
    assert spine.data.params["flow"] == "pipeline" and spine.data.params["method"] == "base"
    hist = c.get_metric_history(train_run.info.run_id, "step/reward_mean")
    assert [h.step for h in hist] == [0, 1, 2]
    assert {f.path for f in c.list_artifacts(train_run.info.run_id)} >= {"model", "rollouts", "history.parquet"}
    # Every RL step's rollouts are kept, so any reward can be recomputed later.
    rollouts = pq.read_table(Path(train_run.data.tags["output_path"]) / "rollouts")
    assert set(rollouts["step"].to_pylist()) == {0, 1, 2}


def test_cli_stages_plans_the_reasoning_stages(ws):
    """After the reasoning run, `stages` lists every train/rollout/evaluate/compare stage as Cached."""
    from entroflow.cli import app

    r = CliRunner().invoke(app, ["stages", str(REPO / "configs" / "smoke-rl.yaml")], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for label in ("train_rl[dapo,s0]", "evaluate[base+em_inf,s0]", "compare"):
        assert label in r.output
    assert "will run" not in r.output, r.output  # every spine and reasoning stage is Cached
    from entroflow.config import load_config
    from flows.pipeline import plan

    cfg = load_config(REPO / "configs" / "smoke-rl.yaml")
    rows = {r["stage"]: r for r in plan(cfg)}
    assert list(rows) == cfg.stage_labels()  # what --force is checked against before Prefect starts
    assert rows["rollout[grpo,s0]"]["after"] == "generate_data, train_rl[grpo,s0]"
    assert rows["evaluate[grpo,s0]"]["after"] == "rollout[grpo,s0]"
    # One method forced alone: it and what reads it will run, nothing else.
    forced = {r["stage"]: r["status"] for r in plan(cfg, ["train_rl[grpo,s0]"])}
    assert {k for k, v in forced.items() if v == "run"} == {
        "train_rl[grpo,s0]", "rollout[grpo,s0]", "evaluate[grpo,s0]", "compare", "claims"}, forced


# --- issue 13: never serve stale data, progress without a terminal, reports per run, runs -----
def test_edited_external_file_recomputes_only_what_reads_it(ws, tmp_path):
    """The cache key covers an input file's content, not its path: an edited answer is never
    served from the cache. Only the stages that read the file recompute; pretraining does not."""
    from entroflow.cli import app
    from entroflow.store import Store

    data = tmp_path / "gsm8k.jsonl"
    data.write_text((REPO / "tests" / "fixtures" / "gsm8k_sample.jsonl").read_text())
    ext = [f"data.external={{path: {data}, format: gsm8k}}"]
    assert run_pipeline(ext).is_completed()
    data.write_text(data.read_text().replace("#### 7", "#### 8", 1))
    r = CliRunner().invoke(app, ["stages", SMOKE, "--set", ext[0]], env={"COLUMNS": "250"})
    assert "input file changed: data.external.path" in r.output, r.output
    results = run_pipeline(ext).result()
    s = states(results)
    assert s["generate_data"] == "Completed"
    assert s["build_tokenizer"] == s["pretrain_base"] == "Cached", s  # pretraining does not read the file
    assert s["rollout"] == "Completed"  # it reads the evaluated problems
    store = Store(ws / "store")
    answers = pq.read_table(store.resolve(results["generate_data"]["ref"]) / "external.parquet")["answer"].to_pylist()
    assert answers[0] == "8"
    assert json.loads((store.resolve(results["generate_data"]["ref"]) / "manifest.json").read_text())[
        "config"]["files"]["data.external.path"]


def test_data_change_that_pretraining_does_not_read_keeps_it_cached(ws):
    from entroflow.cli import app

    r = CliRunner().invoke(app, ["stages", SMOKE, "--set", "data.ood.n_per_suite=11"], env={"COLUMNS": "250"})
    assert "data.ood.n_per_suite" in r.output and "data.reasoning.levels" not in r.output, r.output
    s = states(run_pipeline(["data.ood.n_per_suite=11"]).result())
    assert s["generate_data"] == "Completed"
    assert s["build_tokenizer"] == s["pretrain_base"] == s["rollout"] == s["evaluate"] == "Cached", s


def test_progress_lines_without_a_terminal_and_one_line_per_stage(ws, prefect_server):
    out = subprocess.run([sys.executable, "-m", "entroflow.cli", "run", SMOKE, "--force", "pretrain_base",
                          "--set", "report.title=forced rerun"],
                         env=_env({"PREFECT_API_URL": prefect_server, "ENTROFLOW_PROGRESS": "1"}),
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pretrain_base: 60/60 step (100%)" in out.stderr and "loss=" in out.stderr, out.stderr
    assert "rollout sampled: " in out.stderr
    lines = out.stdout.splitlines()
    assert [x.split()[:2] for x in lines[:len(STAGES)]] == [
        ["Cached", "generate_data"], ["Cached", "build_tokenizer"]] + [["Completed", s] for s in STAGES[2:]], out.stdout


def test_each_run_publishes_its_own_report(ws):
    reports = ws / "reports" / "smoke"
    runs = sorted(p for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    assert len(runs) >= 5
    titles = {(p / "report.md").read_text().splitlines()[0] for p in runs}
    assert any("forced rerun" in t for t in titles) and len(titles) >= 2  # two overrides, two reports kept
    latest = reports / "latest"
    assert latest.is_symlink() and latest.resolve() == max(runs, key=lambda p: p.stat().st_mtime).resolve()
    assert "forced rerun" in (latest / "report.md").read_text()


def test_runs_marks_a_killed_run_and_counts_its_own_stages(ws):
    from mlflow.tracking import MlflowClient

    from entroflow import tracking
    from entroflow.cli import app

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("entroflow").experiment_id
    rid = tracking.start_parent(c, exp, "smoke-gone", "no-such-flow-run", {}, tracking.process_tags())
    c.set_tag(rid, "pid", str(gone.pid))  # as if the run's process had been SIGKILLed
    r = CliRunner().invoke(app, ["runs", "--limit", "30"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "smoke-gone" in line)
    assert [cell.strip() for cell in row.split("│")][3] == "killed", row
    assert c.get_run(rid).info.status == "KILLED"
    import re

    totals = {int(t) for t in re.findall(r"│ \d+/(\d+) +│", r.output)}
    assert 6 in totals and max(totals) > 6, totals  # each run's own stage count (smoke: 6; smoke-rl: more)
    assert "maj@4" in r.output and "pass@4" in r.output
    assert "dapo" in r.output or "grpo" in r.output or "empo" in r.output  # the reasoning run's best method
