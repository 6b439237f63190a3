"""Tests of the generated GSM8K-style word problems: every gold answer is verified twice (by the
module's own checker and by an independent re-computation here), the splits, determinism, the
level = steps rule, words vs digits, and check_solution on hand-written solutions. Fast: a few
hundred small problems."""
from __future__ import annotations

import random
import re
from fractions import Fraction

import pyarrow as pa
import pytest

from entroflow.data import word_problems as wp
from entroflow.data.reasoning import SCHEMA

LEVELS = [1, 2, 3, 4, 5, 6]
SEEDS = (0, 1, 2)
STEP_RE = re.compile(r"<<(\d+)([+\-*/])(\d+)=(\d+)>>(\d+)")

NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.fixture(scope="module")
def tables() -> dict[int, pa.Table]:
    return {seed: wp.generate(LEVELS, n_train=60, n_test=60, seed=seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def rows(tables) -> list[dict]:
    return [r for t in tables.values() for r in t.to_pylist()]


# --------------------------------------------------------------------------- an independent reading

_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_DECADES = dict(zip("twenty thirty forty fifty sixty seventy eighty ninety".split(),
                    range(20, 100, 10)))
_IMPLIED = {"dozen": 12, "twice": 2, "half": 2, "doubles": 2, "third": 3, "thirds": 3,
            "quarter": 4, "quarters": 4, "fifth": 5, "fifths": 5, "tenth": 10}
# what a solution may know without being told: minutes in an hour, grams in a kg, days in a
# week, "there and back" (2), "she and 3 friends" (+1)
_COMMON = {1, 2, 7, 60, 1000}


def word_value(token: str) -> int | None:
    if token in _SMALL:
        return _SMALL.index(token)
    if token in _DECADES:
        return _DECADES[token]
    if "-" in token:
        tens, _, ones = token.partition("-")
        if tens in _DECADES and ones in _SMALL[1:10]:
            return _DECADES[tens] + _SMALL.index(ones)
    return _IMPLIED.get(token)


def question_numbers(question: str) -> set[int]:
    """Every number a question states, as digits or words, plus 100/p for a percentage p."""
    found = {int(x) for x in re.findall(r"\d+", question)}
    tokens = re.findall(r"[a-z]+(?:-[a-z]+)?", question.lower())
    for i, tok in enumerate(tokens):
        if tok == "hundred" and i and word_value(tokens[i - 1]) is not None:
            found.add(word_value(tokens[i - 1]) * 100)
        elif word_value(tok) is not None:
            found.add(word_value(tok))
    found |= {100 // p for p in found if 0 < p <= 100 and 100 % p == 0}
    return found


def recompute(question: str, solution: str) -> list[int]:
    """The step results of a solution, recomputed here with Fraction and checked for being exact,
    non-negative, shown after the annotation, and made only of numbers the question states,
    earlier results and common knowledge."""
    steps = STEP_RE.findall(solution)
    assert len(steps) == solution.count("<<"), f"not one binary operation per step:\n{solution}"
    known = question_numbers(question) | _COMMON
    results = []
    for a, op, b, stated, shown in steps:
        x, y = Fraction(int(a)), Fraction(int(b))
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
        assert value is not None and value.denominator == 1 and value >= 0, (a, op, b)
        assert int(stated) == value == int(shown), f"{a}{op}{b}={stated} is wrong:\n{solution}"
        for operand in (int(a), int(b)):
            assert operand in known, f"{operand} comes from nowhere in:\n{question}\n{solution}"
        results.append(int(value))
        known.add(int(value))
    return results


# --------------------------------------------------------------------------- gold answers


def test_every_gold_answer_is_verified_twice(rows):
    assert len(rows) == 2 * 60 * len(SEEDS)
    for r in rows:
        assert wp.check_solution(r["solution"]) == int(r["answer"])
        results = recompute(r["prompt"], r["solution"])
        assert results[-1] == int(r["answer"])
        assert r["solution"].rstrip().splitlines()[-1] == f"#### {r['answer']}"


def test_level_is_the_number_of_steps(rows):
    for r in rows:
        assert r["n_operands"] == LEVELS[r["level"]]
        assert r["solution"].count("<<") == r["n_operands"]


def test_every_family_makes_every_level():
    assert len(wp.FAMILIES) >= 8
    rng = random.Random(3)
    for name in wp.FAMILIES:
        for steps in range(1, wp.MAX_STEPS + 1):
            for _ in range(3):
                p = wp.make_problem(rng, steps, name)
                assert p.family == name and p.steps == steps
                assert recompute(p.question, p.solution)[-1] == p.answer
                assert wp.check_solution(p.solution) == p.answer
                assert len(STEP_RE.findall(p.solution)) == steps


def test_a_template_bug_cannot_ship_a_wrong_gold(monkeypatch):
    calc = wp.Story.calc

    def off_by_one(self, a, op, b, money=False):
        text, c = calc(self, a, op, b, money)
        return text.replace(f"={c}>>", f"={c + 1}>>"), c  # the annotation now claims c+1

    monkeypatch.setattr(wp.Story, "calc", off_by_one)
    with pytest.raises(ValueError, match="is wrong"):
        wp.make_problem(random.Random(0), 2)


# --------------------------------------------------------------------------- the table


def test_schema_and_columns(tables):
    for seed, t in tables.items():
        assert t.schema.equals(SCHEMA, check_metadata=True)
        for r in t.to_pylist():
            assert r["source"] == "word_problems" and r["style"] == "worked"
            assert r["n_digits"] == 0 and r["completion"] == r["solution"]
            assert r["prompt"].endswith("?") and "Answer" not in r["prompt"]
            id_re = r"wp-test-\d{6}" if r["split"] == "test" else r"wp-train-\d{7}"
            assert re.fullmatch(id_re, r["id"])
        assert len(set(t.column("id").to_pylist())) == t.num_rows


def test_splits_are_disjoint_and_balanced(tables):
    for t in tables.values():
        test = [r for r in t.to_pylist() if r["split"] == "test"]
        train = [r for r in t.to_pylist() if r["split"] == "train"]
        assert len(test) == len(train) == 60
        questions = [r["prompt"] for r in test]
        assert len(set(questions)) == len(questions)
        assert not set(questions) & {r["prompt"] for r in train}
        assert [sum(r["level"] == li for r in test) for li in range(len(LEVELS))] == [10] * 6
        assert {r["level"] for r in train} == set(range(len(LEVELS)))


def test_deterministic_for_a_seed_and_different_across_seeds(tables):
    again = wp.generate(LEVELS, n_train=60, n_test=60, seed=1)
    assert again.equals(tables[1])
    assert tables[0].column("prompt").to_pylist() != tables[1].column("prompt").to_pylist()


def test_numbers_appear_as_words_and_as_digits(rows):
    words = _SMALL[2:] + list(_DECADES) + ["a dozen"]
    number_word = re.compile(r"\b(?:" + "|".join(words) + r")\b")
    with_words = [r for r in rows if number_word.search(r["prompt"])]
    digits_only = [r for r in rows
                   if not number_word.search(r["prompt"]) and re.search(r"\d", r["prompt"])]
    assert len(with_words) > len(rows) // 5 and len(digits_only) > len(rows) // 10
    families = {p.family for p in (wp.make_problem(random.Random(i), 2) for i in range(60))}
    assert len(families) >= 8  # a level mixes the scenario kinds


def test_generate_rejects_bad_levels_and_exhaustion(monkeypatch):
    for levels in ([], [0], [wp.MAX_STEPS + 1], [2.0]):
        with pytest.raises(ValueError, match="level"):
            wp.generate(levels, 4, 4)
    same = wp.Problem("coins", 1, "How many?", "1+1 = <<1+1=2>>2\n#### 2", 2)
    monkeypatch.setattr(wp, "make_problem", lambda rng, steps, family=None: same)
    with pytest.raises(ValueError, match=r"level 0 \(1 steps\) has too few distinct problems"):
        wp.generate([1], n_train=0, n_test=2)
    with pytest.raises(ValueError, match="no problems left for training"):
        wp.generate([1], n_train=1, n_test=1)


# --------------------------------------------------------------------------- check_solution


def test_check_solution_accepts_a_correct_solution():
    assert wp.check_solution(NATALIA) == 72
    mixed = "5*(3+1) = <<5*(3+1)=20>>20 and 7/2 = <<7/2=3.5>>3.5\n#### 1,200"
    assert wp.check_solution(mixed) == 1200  # parentheses, a decimal result, thousands commas


def test_check_solution_rejects_a_wrong_annotation():
    wrong = NATALIA.replace("<<48+24=72>>72", "<<48+24=73>>73")
    with pytest.raises(ValueError, match=r"annotation <<48\+24=73>> is wrong: 48\+24 = 72"):
        wp.check_solution(wrong)
    with pytest.raises(ValueError, match="not followed by its value"):
        wp.check_solution(NATALIA.replace("<<48/2=24>>24", "<<48/2=24>>25"))


def test_check_solution_rejects_a_missing_or_bad_final_answer():
    with pytest.raises(ValueError, match="no final answer"):
        wp.check_solution(NATALIA.replace("#### 72", "The answer is 72."))
    with pytest.raises(ValueError, match="not an integer"):
        wp.check_solution(NATALIA.replace("#### 72", "#### 72.5"))


def test_check_solution_never_runs_code():
    for expr in ("__import__('os').getcwd()", "2**10", "1.5*2", "len([1])", "0x10"):
        with pytest.raises(ValueError, match="annotation"):
            wp.check_solution(f"x = <<{expr}=1>>1\n#### 1")
    with pytest.raises(ValueError, match="division by zero"):
        wp.check_solution("<<1/0=1>>1\n#### 1")
    with pytest.raises(ValueError, match="no '='"):
        wp.check_solution("<<48/2>>24\n#### 24")
    with pytest.raises(ValueError, match="never closed"):
        wp.check_solution("<<48/2=24 24\n#### 24")


def test_the_docstring_example_is_what_the_code_makes():
    p = wp.make_problem(random.Random(11), 3)
    doc = " ".join(wp.__doc__.split())
    assert " ".join(p.question.split()) in doc
    assert all(line in doc for line in p.solution.splitlines())


def test_number_words():
    assert [wp.number_words(n) for n in (0, 12, 35, 40, 300, 105)] == [
        "zero", "twelve", "thirty-five", "forty", "three hundred", "one hundred five"]
