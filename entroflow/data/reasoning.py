"""Verifiable multi-step integer arithmetic: the reasoning task of the synthetic world.

A problem is a chain of 2-4 operands joined by ``+``/``-`` (``37+5-12:``). Its *worked* solution
combines the operands left to right, one step per line, and ends in the answer marker::

    37+5-12:  ->  37+5=42,42-12=30#30

A *direct* solution states only the answer (``#30``). The pretraining mix contains both styles
(``direct_fraction`` of the examples are direct). This mirrors the chain-of-thought vs
direct-answer split of real LLMs and is what gives the tiny world a self-consistency gain: a model
that learned the direct style more often picks it greedily, but a direct answer to a hard problem
is a guess (answers scatter), while sampled worked solutions agree with each other, so the
majority answer of k samples beats the greedy one. Difficulty levels vary the operand count and
digit count, so a model trained to its plateau solves the easy levels and not the hard ones.

The answer is always the integer after the last ``#``; :func:`extract_answer` parses it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pyarrow as pa

ANSWER_RE = re.compile(r"#\s*(-?\d+)\s*$")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | test
        pa.field("level", pa.int32(), nullable=False),
        pa.field("n_operands", pa.int32(), nullable=False),
        pa.field("n_digits", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("solution", pa.string(), nullable=False),  # worked solution, always present
        pa.field("completion", pa.string(), nullable=False),  # what pretraining sees (worked or direct)
        pa.field("style", pa.string(), nullable=False),  # worked | direct
        pa.field("answer", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"schema_version": "1", "table": "reasoning"},
)


@dataclass(frozen=True)
class Level:
    operands: int
    digits: int


def make_problem(rng: random.Random, level: Level, ops: str) -> tuple[str, str, int]:
    """Draw one problem of ``level``; returns (prompt, worked solution, answer).

    Operands have exactly ``level.digits`` digits (1-digit operands are 1..9). Subtractions that
    would make a running total negative are redrawn as additions, so every intermediate is >= 0.
    """
    lo = 1 if level.digits == 1 else 10 ** (level.digits - 1)
    hi = 10**level.digits - 1
    xs = [rng.randint(lo, hi) for _ in range(level.operands)]
    total = xs[0]
    prompt = str(xs[0])
    steps = []
    for x in xs[1:]:
        op = rng.choice(ops)
        if op == "-" and total - x < 0:
            op = "+"
        new = total + x if op == "+" else total - x
        steps.append(f"{total}{op}{x}={new}")
        prompt += f"{op}{x}"
        total = new
    return prompt + ":", ",".join(steps) + f"#{total}", total


def generate(
    levels: list[Level],
    n_train: int,
    n_test: int,
    ops: str = "+-",
    direct_fraction: float = 0.5,
    seed: int = 0,
) -> pa.Table:
    """Generate train and test problems, equally many per level.

    Test prompts are distinct and never appear in the train split. Each train row carries the
    completion pretraining will use: the worked solution, or with probability
    ``direct_fraction`` the direct answer. Test rows keep the worked solution as their completion.
    """
    rng = random.Random(seed)
    rows: list[dict] = []
    test_prompts: set[str] = set()
    per_level_test = [n_test // len(levels) + (i < n_test % len(levels)) for i in range(len(levels))]
    for li, level in enumerate(levels):
        tries = 0
        while sum(r["level"] == li for r in rows) < per_level_test[li]:
            prompt, sol, ans = make_problem(rng, level, ops)
            tries += 1
            if tries > 100 * per_level_test[li] + 1000:
                raise ValueError(
                    f"level {li} ({level.operands} operands, {level.digits} digits) has too few "
                    f"distinct problems for n_test={n_test}"
                )
            if prompt in test_prompts:
                continue
            test_prompts.add(prompt)
            rows.append(_row(f"test-{len(rows):06d}", "test", li, level, prompt, sol, sol, "worked", ans))
    n_test_rows = len(rows)
    i = rejected = 0
    while i < n_train:
        li = i % len(levels)
        prompt, sol, ans = make_problem(rng, levels[li], ops)
        if prompt in test_prompts:
            rejected += 1
            if rejected > 100 * (i + 1000):  # the test split has taken (nearly) every problem
                raise ValueError(f"level {li} ({levels[li].operands} operands, {levels[li].digits} digits) "
                                 f"has no problems left for training after n_test={n_test}")
            continue
        direct = rng.random() < direct_fraction
        completion = f"#{ans}" if direct else sol
        rows.append(
            _row(f"train-{i:07d}", "train", li, levels[li], prompt, sol, completion,
                 "direct" if direct else "worked", ans)
        )
        i += 1
    assert len(rows) == n_test_rows + n_train
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _row(id_, split, li, level, prompt, sol, completion, style, ans) -> dict:
    return {
        "id": id_, "split": split, "level": li, "n_operands": level.operands,
        "n_digits": level.digits, "prompt": prompt, "solution": sol, "completion": completion,
        "style": style, "answer": str(ans), "source": "synthetic",
    }


def extract_answer(text: str) -> str | None:
    """The integer after the final ``#`` of a completion, or None if the format is broken."""
    m = ANSWER_RE.search(text.strip())
    return str(int(m.group(1))) if m else None
