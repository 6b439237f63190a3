"""``entroflow`` command line: run, stages, runs, ui, deploy.

Prefect and the flows are imported inside the commands, after the workspace is bootstrapped, so
``--help`` is fast and Prefect reads the workspace's settings.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from entroflow import logs, workspace
from entroflow.config import ConfigError, check_stage_names, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Experiment pipeline for entropy-centred LLM research (Prefect + MLflow + Parquet).")
console = Console(soft_wrap=True)  # paths stay whole, so they can be copied
err = Console(stderr=True)

DEFAULT_CONFIG = "configs/default.yaml"
ConfigArg = Annotated[str, typer.Argument(help="YAML experiment config.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")]


def _fail(msg: str, code: int = 2) -> None:
    # User text (paths, --set values, stage labels like train_rl[grpo,s0]) is escaped: rich would
    # read square brackets as markup and drop them.
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet(verbose: bool) -> None:
    try:
        logs.quiet_environment(verbose)
    except ValueError as e:
        _fail(str(e))


def _start_workspace(verbose: bool) -> None:
    """What `run` and `retry` do before the flow: quiet third-party logs (before their import),
    point everything at the workspace, and repair (or refuse, in one line) a tracking DB that a
    killed run left half-migrated, before anything runs."""
    _quiet(verbose)
    workspace.bootstrap()
    from entroflow import tracking

    try:
        tracking.ensure_sqlite_db(workspace.tracking_uri())
    except tracking.TrackingStoreError as e:
        _fail(str(e), code=1)


def _attach_log(name: str, verbose: bool) -> Path:
    """The run's log file (after Prefect has set up its logging, which attach() re-points)."""
    log_file = logs.log_path(workspace.home(), name)
    logs.attach(log_file, verbose)
    return log_file


def _results(state, verb: str, log_file: Path) -> dict:
    """The flow's results, or one line naming the failed stage and the cause (exit 1); the
    traceback is in the log file."""
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:
            msg = str(e) if type(e).__name__ == "StageFailed" else f"{type(e).__name__}: {e}"
            _fail(f"{verb} failed: {msg.strip().splitlines()[0]} (log: {log_file})", code=1)
        _fail(f"{verb} ended in state {state.name} (log: {log_file})", code=1)
    return state.result()


def _print_outputs(results: dict, log_file: Path) -> None:
    console.print(f"report: {results.get('report_path')}", highlight=False)
    for key, what in (("comparison_path", "reasoning comparison"), ("watermark_path", "watermark comparison"),
                      ("ood_path", "OOD detection"), ("unlearning_path", "unlearning evaluation"),
                      ("claims_path", "claims table")):
        if results.get(key):
            console.print(f"{what}: {results[key]}", highlight=False)
    console.print(f"MLflow parent run: {results['mlflow_parent_run_id']} (entroflow ui to browse)", highlight=False)
    console.print(f"log: {log_file}", highlight=False)


def _validate(config: str, overrides: list[str], force: list[str] | None = None):
    try:
        cfg = load_config(config, overrides)
        check_stage_names(force or [], cfg=cfg)
    except ConfigError as e:
        _fail(str(e))
    for note in cfg.notes():
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    return cfg


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's, MLflow's and transformers' "
                                         "INFO logs and tracebacks on the console (also: ENTROFLOW_LOG_LEVEL=INFO).")]


@app.command()
def run(
    config: ConfigArg = DEFAULT_CONFIG,
    set_: SetOpt = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Recompute a stage (all its runs: "
                     "train_rl) or one stage label (train_rl[grpo,s0]) and everything downstream (repeatable).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the pipeline end to end; finished stages come back Cached."""
    overrides = set_ or []
    _quiet(verbose)  # before validation, which may import transformers (model sources)
    cfg = _validate(config, overrides, force)  # bad input fails here, before anything is written
    _start_workspace(verbose)
    from flows.pipeline import pipeline

    log_file = _attach_log(cfg.name, verbose)
    state = pipeline(config_path=config, overrides=overrides, force=force or [], return_state=True)
    results = _results(state, "run", log_file)
    t = Table(title=f"entroflow run: {cfg.name}")
    for col in ("stage", "state", "seconds", "output"):
        t.add_column(col)
    for label, r in results.items():
        if isinstance(r, dict) and "ref" in r:
            t.add_row(escape(label), r["state"], f"{r['seconds']:.1f}", str(workspace.store_root() / r["ref"]["path"]))
    console.print(t)
    _print_outputs(results, log_file)


@app.command()
def stages(config: ConfigArg = DEFAULT_CONFIG, set_: SetOpt = None,
           force: Annotated[list[str] | None, typer.Option("--force", help="Plan as if these stages or stage "
                            "labels were forced (as `run --force`).")] = None) -> None:
    """Show the DAG and, per stage, whether the next run would be Cached and why."""
    cfg = _validate(config, set_ or [], force)
    workspace.bootstrap()
    from flows.pipeline import plan

    rows = plan(cfg, force or [])
    t = Table(title=f"DAG of {cfg.name} (workspace {workspace.home()})")
    for col in ("stage", "after", "next run", "key", "why"):
        t.add_column(col, overflow="fold")
    for r in rows:
        color = {"cached": "green", "run": "yellow", "pending": "blue"}.get(r["status"], "dim")
        label = {"cached": "Cached", "run": "will run", "pending": "depends"}.get(r["status"], r["status"])
        t.add_row(escape(r["stage"]), escape(r["after"]), f"[{color}]{label}[/]", r["key"][:12],
                  escape(r["why"]))
    console.print(t)


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many runs to show.")] = 10,
         experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "entroflow",
         wide: Annotated[bool, typer.Option("--wide", help="Print every column in full, wider than the terminal.")] = False) -> None:
    """Recent pipeline runs with their key metrics (from MLflow); runs whose process is gone are
    marked killed."""
    workspace.bootstrap()
    import datetime as dt

    from entroflow import tracking

    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        _fail(f"no MLflow experiment '{experiment}' at {workspace.tracking_uri()} (run `entroflow run` first)", 1)
    found = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.PIPELINE_TAG}` = 'pipeline'",
                          order_by=["attributes.start_time DESC"], max_results=limit)

    def top_k(metrics: dict, prefix: str) -> tuple[str, float] | None:
        """This run's largest k of maj@k / pass@k (each run has its own ks)."""
        ks = [k for k in metrics if k.startswith(prefix) and "/" not in k]
        k = max(ks, key=lambda k: int(k[len(prefix):]), default=None)
        return (k.replace("_at_", "@"), metrics[k]) if k else None

    def best_rl(metrics: dict) -> str:
        """The reasoning comparison's best trained method by sampled accuracy, and its claims."""
        acc = {k.split("/")[1]: v for k, v in metrics.items()
               if k.startswith("compare/") and k.endswith("/sampled_acc") and not k.split("/")[1].startswith("base")}
        if not acc:
            return ""
        m = max(acc, key=acc.get)
        claims = ""
        if "compare/claims_total" in metrics:
            claims = f", claims {int(metrics['compare/claims_holding'])}/{int(metrics['compare/claims_total'])}"
        return f"{m} {100 * acc[m]:.1f}%{claims}"

    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    t = Table(title=f"entroflow runs ({workspace.tracking_uri()})")
    for col in ("run", "started", "status", "greedy", "sampled", "maj@k", "pass@k", "best RL (sampled)", "cached",
                "id"):
        t.add_column(col, overflow="fold")
    for r in found:
        m, status = r.data.metrics, r.info.status.lower()
        if status == "running" and not tracking.run_process_alive(r):
            c.set_terminated(r.info.run_id, "KILLED")  # the process is gone: it will never finish
            status = "killed"
        colour = {"finished": "green", "running": "yellow"}.get(status, "red")
        maj, pk = top_k(m, "maj_at_"), top_k(m, "pass_at_")
        total = m.get("stages_total")
        t.add_row(escape(r.info.run_name or ""), dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%m-%d %H:%M"),
                  f"[{colour}]{status}[/]", pct(m.get("greedy_acc")), pct(m.get("sampled_acc")),
                  f"{maj[0]} {pct(maj[1])}" if maj else "", f"{pk[0]} {pct(pk[1])}" if pk else "", best_rl(m),
                  f"{int(m.get('stages_cached', 0))}/{int(total)}" if total is not None else "",
                  r.info.run_id[:8])
    (Console(width=max(console.width, 220)) if wide else console).print(t)


def _experiment_id(name: str) -> str | None:
    """The id of an active MLflow experiment in the workspace's SQLite DB, read without MLflow
    (None when there is no such DB or experiment yet)."""
    import sqlite3

    path = workspace.sqlite_path(workspace.tracking_uri())
    if path is None or not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("select experiment_id from experiments where name = ? and lifecycle_stage = 'active'",
                          (name,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return str(row[0]) if row else None


def _group_alive(pgid: int) -> bool:
    """Whether a process of this group still runs (zombies, dead and waiting to be reaped, do not count)."""
    import psutil

    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _stop_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the server's process group, give it ``grace`` seconds to exit, then SIGKILL
    whatever is left of the group."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(proc.pid):
        proc.poll()  # reap the server itself as soon as it exits
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
       host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
       experiment: Annotated[str, typer.Option(help="MLflow experiment to link to.")] = "entroflow") -> None:
    """Serve the MLflow UI on this workspace's runs (Ctrl-C or SIGTERM stops it)."""
    workspace.bootstrap()
    # MLflow's job runner (8 processes) serves GenAI features (trace scoring, archival) that
    # entroflow does not use; without it the server starts in half the time.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", workspace.tracking_uri(),
           "--default-artifact-root", workspace.mlflow_artifacts().as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    console.print(f"MLflow UI for {workspace.home()} at {base}", highlight=False)
    exp_id = _experiment_id(experiment)
    if exp_id is None:
        console.print(f"no experiment '{experiment}' here yet (`entroflow run` creates it)", highlight=False)
    else:  # the runs table itself: the UI's start page is its GenAI view (traces), empty here
        runs = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        console.print(f"training runs of '{experiment}': {runs}", highlight=False)
    # The server runs in its own process group (mlflow spawns uvicorn), so that stopping this
    # command stops the whole group by its id and leaves nothing behind. SIGTERM raises
    # KeyboardInterrupt like Ctrl-C: the group is stopped after proc.wait() is left, not inside
    # the signal handler (a wait() there cannot reap the server while the interrupted one holds it).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        code = 0
    raise typer.Exit(code)


@app.command()
def deploy(
    config: ConfigArg = DEFAULT_CONFIG,
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 2 * * *' for 02:00 nightly.")] = "0 2 * * *",
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: the config's name).")] = None,
) -> None:
    """Serve a scheduled deployment of the pipeline (flow.serve); runs until stopped.

    Needs a Prefect server that outlives this process: set PREFECT_API_URL (e.g. after
    `prefect server start`)."""
    cfg = _validate(config, set_ or [])
    workspace.bootstrap()
    if not os.environ.get("PREFECT_API_URL"):
        _fail("deploy needs a Prefect server: run `prefect server start` and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api (the ephemeral server has no scheduler)")
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    try:
        Cron(cron)
    except Exception as e:
        _fail(f"--cron {cron!r}: not a valid cron expression ({e})")
    pipeline.serve(name=name or cfg.name, schedules=[Cron(cron)],
                   parameters={"config_path": str(Path(config).resolve()), "overrides": set_ or [], "force": []})


def _find_flow_run(client, ident: str, flow_name: str):
    """The pipeline's flow run with this id (or name); exits with one line when there is none."""
    from uuid import UUID

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    try:
        found = [client.read_flow_run(UUID(ident))]
    except ObjectNotFound:
        found = []
    except ValueError:  # not a UUID: a flow-run name such as "nano-finch"
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[ident])),
                                      limit=10)
    where = f"the Prefect DB of workspace {workspace.home()}"
    if os.environ.get("PREFECT_API_URL"):
        where = f"the Prefect server at {os.environ['PREFECT_API_URL']}"
    if not found:
        _fail(f"no flow run '{ident}' in {where} (`entroflow retry` lists the failed ones)", code=1)
    if len(found) > 1:
        ids = ", ".join(str(f.id) for f in found)
        _fail(f"{len(found)} flow runs are named '{ident}': give its id ({ids})", code=1)
    if client.read_flow(found[0].flow_id).name != flow_name:
        _fail(f"flow run '{ident}' is not a run of {flow_name}", code=1)
    return found[0]


@app.command()
def retry(
    flow_run: Annotated[str | None, typer.Argument(help="Id (or name) of the flow run to retry; "
                                                   "without it, list the runs that failed.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Retry a finished pipeline run in place: same flow-run id, same MLflow parent run; the stages
    it finished come back Cached."""
    _start_workspace(verbose)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.pipeline import pipeline

    finished = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    with get_client(sync_client=True) as client:
        if flow_run is None:
            failed = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[pipeline.name])), limit=10,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=finished[1:]))),
                sort=FlowRunSort.START_TIME_DESC)
            if not failed:
                console.print(f"no failed runs in {workspace.home()}", highlight=False)
                return
            console.print(f"failed runs in {workspace.home()}, newest first (retry one with `entroflow retry ID`):",
                          highlight=False)
            for fr in failed:  # one line each, nothing cut, so the id can be copied
                p = fr.parameters
                started = f"{fr.start_time.astimezone():%Y-%m-%d %H:%M}" if fr.start_time else "-"
                config = " ".join([str(p.get("config_path", "")), *(f"--set {o}" for o in p.get("overrides") or []),
                                   *(f"--force {f}" for f in p.get("force") or [])])
                console.print(f"{fr.id}  {fr.state_name or '':<9} {started}  {fr.name}  {escape(config)}",
                              highlight=False)
            return
        fr = _find_flow_run(client, flow_run, pipeline.name)
        if fr.state is None or fr.state.type not in finished:
            _fail(f"flow run {fr.id} is {fr.state_name or 'in no state'}: only a finished run can be retried", code=1)
        params = dict(fr.parameters)
        config = Path(params.get("config_path", ""))
        if not config.is_absolute() and not config.exists() and (workspace.PROJECT_ROOT / config).exists():
            params["config_path"] = str(workspace.PROJECT_ROOT / config)  # the run was started from the checkout
        cfg = _validate(params["config_path"], params.get("overrides") or [], params.get("force") or [])
        answer = client.set_flow_run_state(fr.id, Scheduled(message="Retried by entroflow retry"), force=True)
        if answer.status == SetStateStatus.ABORT:
            _fail(f"Prefect refused to retry flow run {fr.id}: {answer.details.reason}", code=1)
        fr = client.read_flow_run(fr.id)
    log_file = _attach_log(cfg.name, verbose)
    console.print(f"retrying flow run {fr.id} ({fr.name}) of {params['config_path']}", highlight=False)
    state = run_flow(flow=pipeline, flow_run=fr, parameters=params, return_type="state")
    results = _results(state, "retry", log_file)
    console.print(f"flow run {fr.id} completed", highlight=False)
    _print_outputs(results, log_file)


if __name__ == "__main__":
    app()
