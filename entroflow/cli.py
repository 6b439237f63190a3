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
    cfg = _validate(config, overrides, force)  # bad input fails here, before anything is written
    try:
        logs.quiet_environment(verbose)
    except ValueError as e:
        _fail(str(e))
    workspace.bootstrap()
    from entroflow import tracking

    try:  # a tracking DB left half-migrated by a killed run is repaired (or refused) before anything runs
        tracking.ensure_sqlite_db(workspace.tracking_uri())
    except tracking.TrackingStoreError as e:
        _fail(str(e), code=1)
    from flows.pipeline import pipeline

    log_file = logs.log_path(workspace.home(), cfg.name)
    logs.attach(log_file, verbose)
    state = pipeline(config_path=config, overrides=overrides, force=force or [], return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:  # the flow's own error, one line; the traceback is in the log
            msg = str(e) if type(e).__name__ == "StageFailed" else f"{type(e).__name__}: {e}"
            _fail(f"run failed: {msg.strip().splitlines()[0]} (log: {log_file})", code=1)
        _fail(f"run ended in state {state.name} (log: {log_file})", code=1)
    results = state.result()
    t = Table(title=f"entroflow run: {cfg.name}")
    for col in ("stage", "state", "seconds", "output"):
        t.add_column(col)
    for label, r in results.items():
        if isinstance(r, dict) and "ref" in r:
            t.add_row(escape(label), r["state"], f"{r['seconds']:.1f}", str(workspace.store_root() / r["ref"]["path"]))
    console.print(t)
    console.print(f"report: {results.get('report_path')}", highlight=False)
    if results.get("comparison_path"):
        console.print(f"reasoning comparison: {results['comparison_path']}", highlight=False)
    console.print(f"MLflow parent run: {results['mlflow_parent_run_id']} (entroflow ui to browse)", highlight=False)
    console.print(f"log: {log_file}", highlight=False)


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


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
       host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1") -> None:
    """Serve the MLflow UI on this workspace's runs (Ctrl-C stops it)."""
    workspace.bootstrap()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", workspace.tracking_uri(),
           "--default-artifact-root", workspace.mlflow_artifacts().as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]
    console.print(f"MLflow UI for {workspace.home()} at http://{host}:{port}", highlight=False)
    # The server runs in its own process group (mlflow spawns uvicorn workers), so that stopping
    # this command, by Ctrl-C or SIGTERM, stops the whole group by its id and leaves nothing behind.
    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum=None, frame=None):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        raise typer.Exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        stop()
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


if __name__ == "__main__":
    app()
