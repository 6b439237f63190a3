"""Benchmark: the default pipeline end to end, then a fully cached rerun, in a fresh workspace.

Prints wall times of both runs (each a separate `entroflow run` process, as a user runs it) and
their ratio. Budgets from the spine issue: first run <= 10 minutes on 2 cores after install,
cached rerun <= 10% of the first. Prints measured numbers only; asserts nothing.

    .venv/bin/python benchmarks/bench_pipeline.py [--config configs/default.yaml] [--keep]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_run(config: str, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "entroflow.cli", "run", config], cwd=REPO, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return wall, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="entroflow-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_HOME")}
    env.update(ENTROFLOW_HOME=str(home), ENTROFLOW_PROGRESS="0", PREFECT_LOGGING_LEVEL="WARNING")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpus={os.cpu_count()} | python {platform.python_version()}")
    print(f"config: {args.config} | workspace: {home}")
    first, out1 = timed_run(args.config, env)
    print(f"first run (cold workspace, every stage computed): {first:.1f} s")
    second, out2 = timed_run(args.config, env)
    cached = out2.count("Cached")
    print(f"second run (same config, {cached} stages Cached): {second:.1f} s")
    print(f"cached rerun / first run: {100 * second / first:.1f}%")
    for line in out1.splitlines():
        if line.startswith("│"):
            print("  " + line)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
