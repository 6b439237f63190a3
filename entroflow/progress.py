"""Progress bars for long stages (rich): rate, ETA and the latest loss or throughput."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


@contextmanager
def progress_bar(description: str, total: int, unit: str = "it") -> Iterator:
    """Yields ``advance(n, **fields)``. Disabled when ENTROFLOW_PROGRESS=0 or not on a terminal
    (logs and CI stay clean)."""
    enabled = os.environ.get("ENTROFLOW_PROGRESS", "1") != "0" and sys.stderr.isatty()
    if not enabled:
        yield lambda n=1, **fields: None
        return
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, rate="", info="")

        def advance(n: int = 1, **fields) -> None:
            t = progress.tasks[task]
            rate = f"{t.speed:.1f} {unit}/s" if t.speed else ""
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, rate=rate, info=info)

        yield advance
