"""Hand-written answer-checking cases on realistic GSM8K- and MATH-style model output.

Every row of CASES is (completion, gold, format, expected verdict of
``is_correct(extract(completion, fmt), gold, fmt)``), worked out by hand from the rules in the
module docstring of :mod:`entroflow.answers` (not by running the code); the comment on each row
says which rule decides it. Below the table: normal forms, clustering and majority votes with
blank answers, and the GSM8K/MATH loaders on empty files and odd gold lines.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from entroflow.answers import cluster_answers, equivalent, extract, is_correct
from entroflow.data import loaders
from entroflow.metrics import majority_correct, summarise

JANET = ("Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4, so she sells "
         "16 - 3 - 4 = 9 eggs at $2 each: 9 * 2 = 18 dollars.\n")

CASES = [
    # ---------------------------------------------------------------- gsm8k: "####" lines
    pytest.param(JANET + "#### 18", "18", "gsm8k", True, id="hash-after-worked-steps"),
    pytest.param(JANET + "#### 18", "#### 81", "gsm8k", False, id="hash-wrong-gold-digits-swapped"),
    pytest.param("Total is 1,200 + 1 = 1,201.\n#### 1,201", "1200", "gsm8k", False,
                 id="hash-off-by-one"),
    pytest.param("#### 42\nI hope this helps! Ask me if you have 2 more questions.", "42", "gsm8k",
                 True, id="hash-then-chatty-number"),  # first number after "####", not the last
    pytest.param("So x = 12.\n#### 12.0", "12", "gsm8k", True, id="hash-decimal-zero"),
    pytest.param("The answer is 5.\n#### 6", "6", "gsm8k", True, id="hash-beats-answer-is"),
    pytest.param("I computed 5 but then\n####", "5", "gsm8k", False, id="hash-empty-line"),
    # ---------------------------------------------------------------- gsm8k: "the answer is"
    pytest.param("She pays 3 * 400 = 1200 dollars in total. The answer is $1,200.", "1200",
                 "gsm8k", True, id="answer-is-dollars-commas"),
    pytest.param("The answer is $1,200.", "#### 1,200", "gsm8k", True, id="answer-is-hash-gold"),
    pytest.param("Each ticket costs $12, so 4 tickets cost 4 * 12 = $48. The answer is 48 dollars.",
                 "48", "gsm8k", True, id="answer-is-with-unit-word"),
    pytest.param("The answer is 72. Check: 72 / 2 = 36, which matches.", "72", "gsm8k", True,
                 id="answer-is-beats-later-check"),
    pytest.param("The answer is 72. Check: 72 / 2 = 36, which matches.", "36", "gsm8k", False,
                 id="answer-is-check-number-is-not-answer"),
    pytest.param("The answer is 1,200. Wait, I double counted the first day; the answer is 1,100.",
                 "1200", "gsm8k", False, id="answer-is-last-phrase-wins-wrong"),
    pytest.param("The answer is 1,200. Wait, I double counted the first day; the answer is 1,100.",
                 "1100", "gsm8k", True, id="answer-is-last-phrase-wins-right"),
    pytest.param("I think the answer is correct: 9 + 9 = 18", "18", "gsm8k", True,
                 id="answer-is-not-followed-by-number"),  # no anchor; last number 18
    pytest.param("So she has 15 apples left.\n\nThe answer is: **15**", "15", "gsm8k", True,
                 id="answer-is-markdown-bold"),
    pytest.param("**Answer:** 1,024", "1024", "gsm8k", True, id="answer-colon-bold"),
    pytest.param("Final answer: 3/4", "0.75", "gsm8k", True, id="answer-colon-fraction"),
    pytest.param("The answer is \u22127", "-7", "gsm8k", True, id="answer-is-unicode-minus"),
    # ---------------------------------------------------------------- gsm8k: boxes
    pytest.param(r"So she sells 9 eggs for $18. \boxed{18}. Let me double-check: 18 * 2 = 36.",
                 "18", "gsm8k", True, id="box-beats-later-numbers"),
    pytest.param(r"So she sells 9 eggs for $18. \boxed{18}. Let me double-check: 18 * 2 = 36.",
                 "36", "gsm8k", False, id="box-later-number-is-not-answer"),
    pytest.param(r"First guess \boxed{12}, but that double-counts Monday. Corrected: \boxed{10}",
                 "10", "gsm8k", True, id="box-last-of-two"),
    pytest.param(r"First guess \boxed{12}, but that double-counts Monday. Corrected: \boxed{10}",
                 "12", "gsm8k", False, id="box-first-of-two-is-not-answer"),
    pytest.param(r"\boxed{5} apples and \boxed{7} oranges", "12", "gsm8k", False,
                 id="box-two-boxes-not-summed"),
    pytest.param(r"So the total is \boxed{\$1,200}.", "1200", "gsm8k", True, id="box-latex-dollar"),
    pytest.param(r"\boxed{1{,}200}", "1200", "gsm8k", True, id="box-latex-thousands"),
    pytest.param(r"Solving 2x = 10 gives \boxed{x = 5}", "5", "gsm8k", True, id="box-assignment"),
    pytest.param(r"Area = 8 \times 9 = \boxed{72 \text{ m}^2}", "72", "gsm8k", True,
                 id="box-with-unit"),
    pytest.param(r"\boxed{20}" + "\n#### 18", "20", "gsm8k", True, id="box-beats-hash"),
    pytest.param(r"Put the final answer in \boxed{}. The answer is 7.", "7", "gsm8k", True,
                 id="box-empty-is-template-echo"),
    pytest.param(r"\boxed{\text{cannot be determined}} (it would be 7 if...)", "7", "gsm8k", False,
                 id="box-without-number"),
    pytest.param(r"First, 3 * 4 = 12. Then we get \boxed{1", "12", "gsm8k", False,
                 id="box-truncated"),
    # ---------------------------------------------------------------- gsm8k: fractions
    pytest.param("She drank 3/4 of the bottle.", "0.75", "gsm8k", True, id="fraction-slash"),
    pytest.param("She drank 3/4 of the bottle.", "4", "gsm8k", False, id="fraction-not-denominator"),
    pytest.param(r"She ate $\dfrac{1}{2}$ of the pie.", "0.5", "gsm8k", True, id="fraction-dfrac"),
    pytest.param(r"She ate $\dfrac{1}{2}$ of the pie.", "2", "gsm8k", False,
                 id="fraction-dfrac-not-denominator"),
    pytest.param("Each of the 3 friends gets 1/3 of the pizza.", r"\frac{1}{3}", "gsm8k", True,
                 id="fraction-thirds-latex-gold"),
    pytest.param("Each of the 3 friends gets 0.333 of the pizza.", "1/3", "gsm8k", False,
                 id="fraction-rounded-decimal"),
    pytest.param(r"Each gets $\frac{2}{6}$ of the pizza.", "1/3", "gsm8k", True,
                 id="fraction-unreduced"),
    pytest.param("The slope is -3/4.", "-0.75", "gsm8k", True, id="fraction-negative"),
    pytest.param(r"So $x = -\frac{1}{2}$.", "-0.5", "gsm8k", True, id="fraction-latex-negative"),
    pytest.param("It takes 2 1/2 hours.", "2.5", "gsm8k", True, id="fraction-mixed"),
    pytest.param(r"The recipe needs $1\frac{1}{2}$ cups of flour.", "1.5", "gsm8k", True,
                 id="fraction-mixed-latex"),
    # ---------------------------------------------------------------- gsm8k: units and words
    pytest.param("The room is 8 m by 9 m, so its area is 72 m^2", "72", "gsm8k", True,
                 id="unit-exponent"),
    pytest.param("The room is 8 m by 9 m, so its area is 72 m^2", "2", "gsm8k", False,
                 id="unit-exponent-is-not-answer"),
    pytest.param("He rides at a speed of 5 km/h", "5", "gsm8k", True, id="unit-per-hour"),
    pytest.param("The square has an area of 3 cm\u00b2", "3", "gsm8k", True, id="unit-superscript"),
    pytest.param("The volume is 27 cm^3", "3", "gsm8k", False, id="unit-cubed-is-not-answer"),
    pytest.param("A water molecule has 3 atoms, which is why we write H2O", "3", "gsm8k", True,
                 id="word-digit-H2O"),
    pytest.param("A water molecule has 3 atoms, which is why we write H2O", "2", "gsm8k", False,
                 id="word-digit-H2O-is-not-answer"),
    pytest.param("There were 40 new cases of COVID-19", "40", "gsm8k", True, id="word-digit-covid"),
    pytest.param("Tom ran 5 miles and finished 2nd.", "5", "gsm8k", True, id="word-ordinal"),
    pytest.param("She paid $30 and was the 3rd customer", "30", "gsm8k", True,
                 id="word-ordinal-after-dollars"),
    pytest.param("She bought 5 apples on 3/4/2020", "5", "gsm8k", True, id="word-date"),
    # ---------------------------------------------------------------- gsm8k: signs, money, %
    pytest.param("The temperature dropped to -4 degrees.", "-4", "gsm8k", True, id="negative"),
    pytest.param("The change is 12 - 15 = -3.", "-3", "gsm8k", True, id="negative-after-equals"),
    pytest.param("After the refund his balance is -$5.", "-5", "gsm8k", True,
                 id="negative-dollars"),
    pytest.param("After the refund his balance is -$5.", "5", "gsm8k", False,
                 id="negative-dollars-sign-matters"),
    pytest.param("Delivery takes 5-7 days", "-7", "gsm8k", False, id="range-hyphen-is-not-minus"),
    pytest.param("Total: $1,234.50.", "1234.5", "gsm8k", True, id="dollars-cents"),
    pytest.param("The prize is 1,200,000 dollars", "1200000", "gsm8k", True, id="thousands-millions"),
    pytest.param("The two dice show 3,4", "34", "gsm8k", False, id="comma-list-is-not-thousands"),
    pytest.param("The discount is 25%.", "25", "gsm8k", True, id="percent"),
    pytest.param("The discount is 25%.", "0.25", "gsm8k", False, id="percent-not-a-fraction"),
    pytest.param("12 * 4 = 48, so he has 48 eggs left", "46", "gsm8k", False,
                 id="confident-wrong"),
    # ---------------------------------------------------------------- gsm8k: golds
    pytest.param("#### 18", "Each of the two gets 9.\n#### 18 (9 each)", "gsm8k", True,
                 id="gold-parenthetical"),
    pytest.param("So each gets 9 apples.", "#### 18 (9 each)", "gsm8k", False,
                 id="gold-parenthetical-remark-is-not-gold"),
    pytest.param("So each gets 9 apples.", "18 (9 each)", "gsm8k", False,
                 id="gold-bare-parenthetical"),
    pytest.param("#### 5", "#### none", "gsm8k", False, id="gold-without-number"),
    # ---------------------------------------------------------------- gsm8k: nothing to read
    pytest.param("", "18", "gsm8k", False, id="blank"),
    pytest.param("   \n\n", "18", "gsm8k", False, id="whitespace-only"),
    pytest.param("She buys 4 packs of 6 eggs, so she has 4 * 6 =", "24", "gsm8k", False,
                 id="truncated-before-result"),
    # ---------------------------------------------------------------- math
    pytest.param(r"Thus $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}", "math", True, id="m-half"),
    pytest.param(r"Thus $x = \boxed{\frac{1}{2}}$.", "0.5", "math", True, id="m-half-decimal-gold"),
    pytest.param(r"The probability is $\boxed{\dfrac{3}{4}}$.", "0.75", "math", True,
                 id="m-dfrac"),
    pytest.param(r"The probability is $\boxed{\frac{1}{4}}$.", "4", "math", False,
                 id="m-fraction-not-denominator"),
    pytest.param(r"Simplifying, $\sqrt{12} = \boxed{2\sqrt{3}}$.", r"\sqrt{12}", "math", True,
                 id="m-radical"),
    pytest.param(r"Expanding gives $\boxed{x^2+2x+1}$.", "(x+1)^2", "math", True,
                 id="m-polynomial"),
    pytest.param(r"The answer is $\boxed{3}$. To check, $3 + 2 = 5$.", "3", "math", True,
                 id="m-box-then-text"),
    pytest.param(r"The answer is $\boxed{3}$. To check, $3 + 2 = 5$.", "5", "math", False,
                 id="m-box-then-text-number-is-not-answer"),
    pytest.param(r"first $\boxed{1}$, then finally $\boxed{3}$", "3", "math", True,
                 id="m-last-box"),
    pytest.param(r"first $\boxed{1}$, then finally $\boxed{3}$", "1", "math", False,
                 id="m-earlier-box"),
    pytest.param(r"So the answer is $\boxed{\frac{1}{", r"\frac12", "math", False,
                 id="m-truncated"),
    pytest.param("", "3", "math", False, id="m-blank"),
    pytest.param(r"\boxed{ }", "3", "math", False, id="m-blank-box"),
    pytest.param("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.",
                 r"\frac34", "math", True, id="m-no-box-final-answer"),
    pytest.param(r"The interval is $\boxed{(0,1]}$.", "(0,1)", "math", False, id="m-interval"),
    pytest.param(r"The set is $\boxed{\{1,2\}}$.", r"\{2,1\}", "math", True, id="m-set"),
    pytest.param(r"$\boxed{-7}$", "7", "math", False, id="m-sign"),
    pytest.param(r"$\boxed{x=5}$", "5", "math", True, id="m-assignment"),
    pytest.param(r"There are $\boxed{18 \text{ apples}}$.", "18", "math", True, id="m-text-unit"),
    pytest.param(r"$\boxed{50\%}$", "50", "math", True, id="m-percent"),
    pytest.param(r"He owes $\boxed{-\$5}$.", "-5", "math", True, id="m-negative-dollars"),
    pytest.param(r"$\boxed{0.333}$", r"\frac{1}{3}", "math", False, id="m-rounded"),
    pytest.param(r"$\boxed{B}$", r"\text{(A)}", "math", False, id="m-choice"),
]


@pytest.mark.parametrize("completion, gold, fmt, verdict", CASES)
def test_answer_case(completion, gold, fmt, verdict):
    assert is_correct(extract(completion, fmt), gold, fmt) is verdict


def test_case_table_is_balanced():
    verdicts = [p.values[3] for p in CASES]
    fmts = [p.values[2] for p in CASES]
    assert len(CASES) >= 60
    assert {"gsm8k", "math"} == set(fmts)
    assert min(verdicts.count(True), verdicts.count(False)) >= 25


# ----------------------------------------------------------------------------- normal forms


@pytest.mark.parametrize(
    "text, normal",
    [
        ("3/4", "0.75"),  # terminating: decimal
        (r"\dfrac{1}{8}", "0.125"),
        ("6/3", "2"),  # integral: integer
        ("0.50", "0.5"),  # no trailing zeros
        ("1/3", "1/3"),  # non-terminating: reduced fraction
        (r"\frac{2}{6}", "1/3"),
        (r"-\frac{4}{6}", "-2/3"),
        ("-$1,200.00", "-1200"),
        ("1/0", None),  # no value
    ],
)
def test_gsm8k_normal_form(text, normal):
    assert extract(text, "gsm8k") == normal
    if normal is not None:
        assert extract(normal, "gsm8k") == normal  # idempotent


def test_gsm8k_equivalence_is_by_value():
    assert equivalent("1/3", r"\frac{1}{3}", "gsm8k")
    assert equivalent("3/4", "0.75", "gsm8k")
    assert not equivalent("0.333", "1/3", "gsm8k")
    assert cluster_answers(["3/4", "0.75", r"\frac{3}{4}", "1/3", "0.333"], "gsm8k") == [0, 0, 0, 1, 2]


# ------------------------------------------------------------------ clusters and majority votes


def test_blank_answers_are_no_answer_in_clusters():
    # Blank and whitespace-only strings are no answer (-1) like None, in every format.
    assert cluster_answers(["", "3", "  ", None, "3"], "math") == [-1, 0, -1, -1, 0]
    assert cluster_answers(["", r"\frac{1}{2}", "\t\n", "0.5"], "math") == [-1, 0, -1, 0]
    assert cluster_answers(["", "3/4", " ", "0.75"], "gsm8k") == [-1, 0, -1, 0]
    assert cluster_answers(["", "5", " "], "synthetic") == [-1, 0, -1]


def test_blank_answers_never_win_a_majority():
    # Three blanks would be the largest "cluster"; the only real answer, 3, wins instead.
    assert majority_correct(["", "", "", "3"], [False, False, False, True], "math")
    # Blanks drop out; "7" (2 votes) beats "3" (1 vote).
    assert majority_correct(["  ", " ", "7", "3", "7"], [False, False, True, False, True], "math")
    assert majority_correct(["", "", "", "18"], [False, False, False, True], "gsm8k")
    # Nothing but blanks: no vote, which counts as wrong.
    assert not majority_correct(["", " "], [False, False], "math")


def test_blank_answers_do_not_count_as_parsed():
    rows = [
        {"prompt_id": "p0", "sample_idx": i, "decoding": "sampled", "correct": ok, "answer": ans,
         "n_tokens": 4, "mean_entropy": 1.0, "level": 1}
        for i, (ans, ok) in enumerate([("", False), ("  ", False), ("3", True), (None, False)])
    ]
    s = summarise(pa.Table.from_pylist(rows), ks=[4], fmt="math")
    assert s["parse_rate"] == pytest.approx(1 / 4)  # only "3"
    assert s["maj@4"] == 1.0  # "3" is the only cluster


# ---------------------------------------------------------------------------------- loaders


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _one_line_error(call, *needles: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("content", ["", "\n", "\n  \n\t\n"], ids=["empty", "newline", "blank-lines"])
@pytest.mark.parametrize("load", [loaders.load_gsm8k, loaders.load_math], ids=["gsm8k", "math"])
def test_loader_rejects_a_file_without_rows(tmp_path, content, load):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    _one_line_error(lambda: load(path), "data.jsonl", "no rows")
    fmt = "gsm8k" if load is loaders.load_gsm8k else "math"
    _one_line_error(lambda: loaders.check(path, fmt), "data.jsonl", "no rows")


def test_loader_rejects_an_empty_parquet_table(tmp_path):
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()),
                             "answer": pa.array([], pa.string())}), path)
    _one_line_error(lambda: loaders.load_gsm8k(path), path.name, "no rows")


def test_loader_rejects_an_empty_file_in_a_directory(tmp_path):
    _jsonl(tmp_path / "test-a.jsonl", [{"question": "q?", "answer": "#### 3"}])
    (tmp_path / "test-b.jsonl").write_text("\n\n")
    _one_line_error(lambda: loaders.load_gsm8k(tmp_path), "test-b.jsonl", "no rows")


def test_loader_rejects_a_gold_without_number(tmp_path):
    path = _jsonl(tmp_path / "gold.jsonl", [
        {"question": "q1?", "answer": "1 + 2 = 3\n#### 3"},
        {"question": "q2?", "answer": "It cannot be known.\n#### none"},
    ])
    _one_line_error(lambda: loaders.load_gsm8k(path), "gold.jsonl", "line 2", "####", "none")


def test_loader_reads_the_first_number_of_the_gold_line(tmp_path):
    path = _jsonl(tmp_path / "gold.jsonl", [
        {"question": "Two boys share 18 apples equally. How many apples are there?",
         "answer": "They have 18 apples.\n#### 18 (9 each)"},
        {"question": "q?", "answer": "#### $1,200."},
        {"question": "q?", "answer": "#### 0.50"},
        {"question": "q?", "answer": "#### -4"},
    ])
    assert loaders.load_gsm8k(path)["answer"].to_pylist() == ["18", "1200", "0.5", "-4"]


@pytest.mark.parametrize(
    "solution, answer",
    [
        ("They have 18 apples.\n#### 18 (9 each)", "18"),
        ("#### 1,200", "1200"),
        ("#### 7 is wrong, so\n#### 8", "8"),  # the last marker
        ("#### none", None),
        ("no marker, just 5", None),
    ],
)
def test_gsm8k_final_answer(solution, answer):
    assert loaders.gsm8k_final_answer(solution) == answer


def test_loader_gold_and_checker_agree(tmp_path):
    # The stored answer and the full solution read as a gold give the same verdicts.
    path = _jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "9 + 9 = 18\n#### 18 (9 each)"}])
    row = loaders.load_gsm8k(path).to_pylist()[0]
    for pred, ok in [("18", True), ("9", False)]:
        assert is_correct(pred, row["answer"], "gsm8k") is ok
        assert is_correct(pred, row["solution"], "gsm8k") is ok
