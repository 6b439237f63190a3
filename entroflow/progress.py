"""What a person watching a run sees: a progress bar per long stage (rate, ETA, latest loss or
reward) on a terminal, a progress line every ~30 s or 10% elsewhere (``make run > log``, nohup,
scheduled runs), and one line per finished stage."""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

LOG_EVERY_S = 30.0  # without a terminal: a line at least this often...
LOG_EVERY_FRACTION = 0.1  # ...or every 10% of the work,
LOG_MIN_GAP_S = 5.0  # but not more often than this (a stage of a few seconds prints its last line only)

_stdout = Console(highlight=False, soft_wrap=True)


def _fields(fields: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@contextmanager
def progress_bar(description: str, total: int, unit: str = "it") -> Iterator:
    """Yields ``advance(n, **fields)``. A rich bar on a terminal; progress lines on stderr without
    one; nothing when ENTROFLOW_PROGRESS=0 (tests)."""
    mode = os.environ.get("ENTROFLOW_PROGRESS", "1")
    if mode == "0":
        yield lambda n=1, **fields: None
        return
    if not sys.stderr.isatty() or mode == "lines":
        with _progress_lines(description, total, unit) as advance:
            yield advance
        return
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:  # the stage line replaces it
        task = progress.add_task(escape(description), total=total, rate="", info="")

        def advance(n: int = 1, **fields) -> None:
            t = progress.tasks[task]
            rate = f"{t.speed:.1f} {unit}/s" if t.speed else ""
            progress.update(task, advance=n, rate=rate, info=escape(_fields(fields)))

        yield advance


@contextmanager
def _progress_lines(description: str, total: int, unit: str) -> Iterator:
    """Plain lines for logs: ``train_rl dapo: 40/100 step (40%), 0.52 step/s, eta 1:55, reward=0.31``."""
    t0 = time.monotonic()
    state = {"done": 0, "last_t": t0, "last_frac": 0.0, "fields": {}}

    def line() -> None:
        done, el = state["done"], time.monotonic() - t0
        rate = done / el if el > 0 else 0.0
        eta = f", eta {_clock((total - done) / rate)}" if rate > 0 and done < total else ""
        info = f", {_fields(state['fields'])}" if state["fields"] else ""
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        # Written to the stream, not print()ed: the flow's log_prints would turn a print into a
        # Prefect INFO record, which the quiet console hides.
        sys.stderr.write(f"{description}: {done}/{total} {unit}{pct}, {rate:.3g} {unit}/s{eta}, "
                         f"elapsed {_clock(el)}{info}\n")
        sys.stderr.flush()
        state["last_t"], state["last_frac"] = time.monotonic(), done / total if total else 1.0

    def advance(n: int = 1, **fields) -> None:
        state["done"] += n
        state["fields"].update(fields)
        frac = state["done"] / total if total else 1.0
        since = time.monotonic() - state["last_t"]
        if since >= LOG_EVERY_S or (frac - state["last_frac"] >= LOG_EVERY_FRACTION and since >= LOG_MIN_GAP_S):
            line()

    yield advance
    if state["done"] and state["last_frac"] < 1.0:
        line()


def note(text: str) -> None:
    """A line for the person watching (a resumed stage, say), on stderr, whatever the log level."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(escape(text))
    logging.getLogger("entroflow").info(text)


def stage_line(label: str, state: str, seconds: float, output: str) -> None:
    """One line per finished stage: label, state, seconds, output path."""
    colour = {"Completed": "green", "Cached": "cyan"}.get(state, "red")
    _stdout.print(f"[{colour}]{state:9s}[/] {escape(label):28s} {seconds:7.1f} s  {escape(output)}")
