"""Loaders for real reasoning benchmarks (GSM8K, MATH) from local files, in the reasoning schema.

Why the same schema as :mod:`entroflow.data.reasoning`: every downstream stage (sampling,
self-consistency, entropy scoring) reads one table layout, so a real dataset can replace the
synthetic arithmetic world without any other change. Nothing is downloaded: ``path`` is a local
``.jsonl`` or ``.parquet`` file, or a directory whose ``*.jsonl``/``*.parquet`` files are read in
name order. In a directory that holds several splits (``train.jsonl`` + ``test.jsonl``, or the
Hugging Face layout ``test-00000-of-00001.parquet``), only the files whose name starts with
``split`` are read, so a test run never mixes in training rows.

Formats:

* GSM8K: ``question``, ``answer``; the worked solution ends in ``#### <final answer>``. The final
  answer is the FIRST number after the last ``####``, in the gsm8k normal form of
  :mod:`entroflow.answers` (``#### 1,200`` -> ``1200``, ``#### 18 (9 each)`` -> ``18``); a
  ``####`` line without a number (``#### none``) is malformed, since no prediction could ever
  match it.
* MATH: ``problem``, ``solution`` and optionally ``level`` (``"Level 3"``) and ``type``; the final
  answer is the content of the last ``\\boxed{...}`` (braces balanced, so
  ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; ``\\fbox{...}`` and ``\\boxed 5`` are accepted
  too). The subject (``type``) has no column in the shared schema and is not kept.

Rows: ``prompt`` is the question followed by ``"\\nAnswer:"``, ``solution`` and ``completion`` are
the dataset's worked solution, ``style`` is ``worked``, ``n_operands``/``n_digits`` are 0 and
``level`` is the MATH level (0 when absent or unparsable, and for GSM8K). ``id`` is the dataset's
own ``id``/``unique_id`` when present, else ``gsm8k-000001``-style positions over all files.

Malformed input raises ``ValueError`` with a one-line message that names the file and the line
(JSONL) or row (Parquet), so a broken download is found without a debugger. A file with no rows
(empty, blank lines only, an empty Parquet table) is malformed too: a silently empty evaluation
set would report NaN metrics instead of the broken download.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow.answers import first_number
from entroflow.data.reasoning import SCHEMA

SUFFIXES = (".jsonl", ".parquet")
LEVEL_RE = re.compile(r"^\s*Level\s+(\d+)\s*$")
BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def load_gsm8k(path: str | Path, split: str = "test") -> pa.Table:
    """GSM8K rows from ``path`` as a :data:`reasoning.SCHEMA` table (``source`` = ``gsm8k``)."""
    return _load(path, split, "gsm8k", ("question", "answer"), _gsm8k_row)


def load_math(path: str | Path, split: str = "test") -> pa.Table:
    """MATH rows from ``path`` as a :data:`reasoning.SCHEMA` table (``source`` = ``math``)."""
    return _load(path, split, "math", ("problem", "solution"), _math_row)


def check(path: str | Path, fmt: str, split: str = "test") -> int:
    """Load ``path`` as ``fmt`` (gsm8k | math) and return its row count; ``ValueError`` (one line
    naming the file and line) when it is malformed or holds no rows (the loaders raise both).
    Config validation calls it, so a bad file stops a run before anything is written."""
    return (load_gsm8k if fmt == "gsm8k" else load_math)(path, split).num_rows


def gsm8k_final_answer(solution: str) -> str | None:
    """The first number after the last ``####`` marker in gsm8k normal form (``#### 18 (9 each)``
    -> ``18``), or None if there is no marker or no number after it.

    The same rule as the gold side of :func:`entroflow.answers.is_correct`, so the stored answer
    and a re-read of the full solution always agree."""
    marker = solution.rfind("####")
    if marker < 0:
        return None
    return first_number(solution[marker + 4:])


def last_boxed(solution: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed x``), braces balanced;
    None if there is no complete one."""
    matches = list(BOXED_RE.finditer(solution))
    if not matches:
        return None
    start = matches[-1].end()
    if start >= len(solution):
        return None
    if solution[start] != "{":
        # "\boxed 5" form: the answer runs to the next space or "$"
        m = re.match(r"[^\s$]+", solution[start:])
        return m.group(0) if m else None
    depth = 0
    for i in range(start, len(solution)):
        if solution[i] == "{":
            depth += 1
        elif solution[i] == "}":
            depth -= 1
            if depth == 0:
                content = solution[start + 1:i].strip()
                return content or None
    return None  # unbalanced: the box never closes


def _gsm8k_row(rec: dict, where: str) -> dict:
    answer = gsm8k_final_answer(rec["answer"])
    if answer is None:
        marker = rec["answer"].rfind("####")
        if marker < 0:
            raise ValueError(f"{where}: no final answer after '#### ' in field 'answer'")
        tail = rec["answer"][marker:].strip()
        tail = tail if len(tail) <= 40 else tail[:37] + "..."
        # repr keeps the message on one line whatever the field holds
        raise ValueError(f"{where}: no number after '####' in field 'answer': {tail!r}")
    return {"question": rec["question"], "solution": rec["answer"], "answer": answer, "level": 0}


def _math_row(rec: dict, where: str) -> dict:
    answer = last_boxed(rec["solution"])
    if answer is None:
        raise ValueError(f"{where}: no complete \\boxed{{...}} in field 'solution'")
    level = rec.get("level")
    m = LEVEL_RE.match(level) if isinstance(level, str) else None
    if isinstance(level, int) and not isinstance(level, bool):
        parsed = level
    else:
        parsed = int(m.group(1)) if m else 0
    return {"question": rec["problem"], "solution": rec["solution"], "answer": answer, "level": parsed}


def _load(path: str | Path, split: str, source: str, fields: tuple[str, str],
          parse: Callable[[dict, str], dict]) -> pa.Table:
    rows = []
    for file in _files(Path(path), split):
        n_before = len(rows)
        for where, rec in _records(file):
            for f in fields:
                if f not in rec:
                    raise ValueError(f"{where}: missing field {f!r}")
                if not isinstance(rec[f], str) or not rec[f].strip():
                    raise ValueError(f"{where}: field {f!r} is empty or not a string")
            parsed = parse(rec, where)
            own_id = rec.get("id", rec.get("unique_id"))
            rows.append({
                "id": str(own_id) if own_id not in (None, "") else f"{source}-{len(rows) + 1:06d}",
                "split": split, "level": parsed["level"], "n_operands": 0, "n_digits": 0,
                "prompt": parsed["question"].strip() + "\nAnswer:",
                "solution": parsed["solution"], "completion": parsed["solution"],
                "style": "worked", "answer": parsed["answer"], "source": source,
            })
        if len(rows) == n_before:
            what = "an empty table" if file.suffix == ".parquet" else "empty, or blank lines only"
            raise ValueError(f"{file}: no rows ({what})")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _files(path: Path, split: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise ValueError(f"{path}: directory holds no *.jsonl or *.parquet file")
        of_split = [p for p in files if p.name.startswith(split)]
        return of_split or files
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl or .parquet)")
    return [path]


def _records(file: Path) -> Iterator[tuple[str, dict]]:
    """(location for error messages, record) for every record of one file; line/row are 1-based."""
    if file.suffix == ".parquet":
        try:
            table = pq.read_table(file)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{file}: not a readable Parquet file ({type(e).__name__})") from e
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield f"{file}: row {i}", rec
        return
    try:
        with file.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():  # tolerate blank lines, e.g. a trailing newline
                    continue
                where = f"{file}: line {i}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                yield where, rec
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not UTF-8 text ({e.reason})") from None
