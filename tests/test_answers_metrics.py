"""Answer extraction/equivalence (entroflow.answers) and evaluation metrics (entroflow.metrics).

Expected values are computed by hand in the comments next to each check.
"""
from __future__ import annotations

import math
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from entroflow.answers import cluster_answers, equivalent, extract, is_correct
from entroflow.metrics import avg_at_k, majority_correct, pass_at_k, summarise

# ------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 0, 2, 0.0),  # no correct sample: never passes
        (4, 4, 3, 1.0),  # n - c = 0 < k: every draw passes
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 0.91666...
        (4, 3, 2, 1.0),  # n - c = 1 < k = 2
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (0, 0, 1), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows a float; the product form does not. k=1 reduces to c/n.
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3)
    assert 0.0 < pass_at_k(1000, 1, 500) <= 1.0
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)  # one correct sample, half drawn


def test_avg_at_k():
    flags = [True, False, True, True]
    assert avg_at_k(flags, 1) == 1.0
    assert avg_at_k(flags, 2) == 0.5
    assert avg_at_k(flags, 4) == 0.75
    with pytest.raises(ValueError):
        avg_at_k(flags, 5)


# ------------------------------------------------------------------------------- extraction


def test_synthetic_extraction():
    assert extract("12+3=15#15", "synthetic") == "15"
    assert extract("#-7", "synthetic") == "-7"
    assert extract("#007", "synthetic") == "7"
    assert extract("garbage", "synthetic") is None
    assert extract("#15 and then more text", "synthetic") is None  # answer not at the end
    assert is_correct("15", "15", "synthetic")
    assert not is_correct("15", "16", "synthetic")
    assert not is_correct(None, "15", "synthetic")


def test_gsm8k_extraction():
    assert extract("She pays 3 * 400 = 1200 dollars.\n#### 1,200", "gsm8k") == "1200"
    assert extract("The answer is 42.", "gsm8k") == "42"
    assert extract("Total: $1,234.50.", "gsm8k") == "1234.5"
    assert extract("So x = 12.0", "gsm8k") == "12"
    assert extract("It drops by 5, to -3.", "gsm8k") == "-3"
    # The last "####" rules even if numbers follow elsewhere before it; nothing after it: None.
    assert extract("#### 7 is wrong, #### 8", "gsm8k") == "8"
    assert extract("I computed 5 but ####", "gsm8k") is None
    assert extract("no digits here", "gsm8k") is None


def test_gsm8k_correctness_normalises_gold():
    assert is_correct("1200", "1,200", "gsm8k")
    assert is_correct("12", "Natalia sold 48/2 = <<48/2=24>>24 ... #### 12", "gsm8k")
    assert is_correct(extract("#### 12.0", "gsm8k"), "12", "gsm8k")
    assert not is_correct("13", "12", "gsm8k")


def test_math_extraction_and_equivalence():
    half = extract(r"We get $x = \boxed{\frac{1}{2}}$.", "math")
    assert half == r"\frac{1}{2}"
    assert is_correct(half, "0.5", "math")
    assert is_correct(half, "1/2", "math")
    assert is_correct(half, r"\frac12", "math")
    three = extract(r"\boxed{3}", "math")
    assert three == "3"
    assert not is_correct(three, "4", "math")
    # The *last* box is the answer (math-verify alone would read the two boxes as the set {1, 3}).
    assert extract(r"first \boxed{1}, finally \boxed{3}", "math") == "3"
    # A gold answer given as a full solution is reduced to its last box too.
    assert is_correct("3", r"... so the answer is \boxed{3}.", "math")
    # A truncated final box is no answer; so is text without any maths.
    assert extract(r"\boxed{1} and then \boxed{12", "math") is None
    assert extract("I do not know.", "math") is None
    assert not is_correct(None, "3", "math")


@pytest.mark.parametrize(
    "a, b, same",
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"2\sqrt{3}", r"\sqrt{12}", True),
        ("x=1", "1", True),  # verify simplifies the assignment only on its gold side
        (r"\{1,2\}", r"\{2,1\}", True),
        ("(0,1]", "(0,1)", False),
        ("3", "4", False),
    ],
)
def test_math_equivalence_is_symmetric(a, b, same):
    assert equivalent(a, b, "math") is same
    assert equivalent(b, a, "math") is same


def test_math_pathological_strings_do_not_raise_or_hang():
    # Unparseable LaTeX, unbalanced boxes, and values SymPy would spend minutes building
    # (10^{10^{10}} in verify, \binom/\gcd with huge operands already while parsing).
    bad = [
        r"\boxed{\frac{1}{}}",
        "\\boxed{" * 30,
        r"\boxed{)(}",
        r"\boxed{}",
        r"\boxed{10^{10^{10}}}",
        r"\boxed{(10^{10})!}",
        r"\boxed{\gcd(10^{10^{10}}, 6)}",
        r"\boxed{\binom{10^{12}}{100000}}",
        r"\boxed{\sum_{i=1}^{10^{10}} i}",
        "\\frac{" * 200 + "}" * 200,
    ]
    start = time.perf_counter()
    for text in bad:
        pred = extract(text, "math")
        assert pred is None or isinstance(pred, str)
        assert is_correct(pred, "3", "math") is False
        assert is_correct("3", text, "math") is False
        if pred is not None:
            assert equivalent(pred, "3", "math") is False
            assert equivalent(pred, pred, "math")  # still equal to itself, as a string
    assert time.perf_counter() - start < 5.0


def test_math_works_in_worker_thread():
    # math-verify's default signal-based timeouts raise ValueError outside the main thread.
    results: dict[str, object] = {}

    def work():
        try:
            pred = extract(r"so \boxed{\frac{3}{4}}", "math")
            results["pred"] = pred
            results["correct"] = is_correct(pred, "0.75", "math")
            results["clusters"] = cluster_answers([pred, "0.75", "1"], "math")
        except BaseException as exc:  # surfaced below; a thread would otherwise swallow it
            results["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=30)
    assert "error" not in results, results.get("error")
    assert results == {"pred": r"\frac{3}{4}", "correct": True, "clusters": [0, 0, 1]}


def test_cluster_answers():
    assert cluster_answers(["15", "-7", "15", None, "015"], "synthetic") == [0, 1, 0, -1, 0]
    gsm = ["1200", "1,200", "12.0", "12", None, "7"]
    assert cluster_answers(gsm, "gsm8k") == [0, 0, 1, 1, -1, 2]
    assert cluster_answers(
        [r"\frac{1}{2}", "0.5", "3", "1/2", None, r"\sqrt{4}", "2"], "math"
    ) == [0, 0, 1, 0, -1, 2, 2]
    assert cluster_answers([], "math") == []
    assert cluster_answers([None, None], "gsm8k") == [-1, -1]


def test_majority_correct():
    # "5" appears twice and wins over "7"; None never votes.
    assert majority_correct(["7", "5", None, "5"], [False, True, False, True], "synthetic")
    # 1-1 tie: the first cluster to occur ("7", wrong) wins.
    assert not majority_correct(["7", "5"], [False, True], "synthetic")
    # Equivalent math answers pool their votes: {1/2, 0.5} beat {3}.
    assert majority_correct(["3", r"\frac{1}{2}", "0.5"], [False, True, True], "math")
    assert not majority_correct([None, None], [False, False], "gsm8k")


def test_unknown_format_is_named():
    for call in (
        lambda: extract("x", "mmlu"),
        lambda: is_correct("1", "1", "mmlu"),
        lambda: equivalent("1", "1", "mmlu"),
        lambda: cluster_answers(["1"], "mmlu"),
    ):
        with pytest.raises(ValueError, match="mmlu"):
            call()


# ------------------------------------------------------------------------------- summarise


def _eval_table() -> pa.Table:
    """2 prompts x (1 greedy + 4 sampled) rows, synthetic format.

    p0 (level 0, gold 5): greedy "5" right;   samples 0..3: "5" T, "7" F, "5" T, None F
    p1 (level 1, gold 9): greedy "3" wrong;   samples 0..3: "3" F, "9" T, "9" T, "9" T
    Sampled rows are stored out of sample_idx order to check that summarise sorts them.
    """
    rows = [
        # prompt, idx, decoding, correct, answer, n_tokens, mean_entropy, level
        ("p0", 0, "greedy", True, "5", 4, 0.5, 0),
        ("p0", 2, "sampled", True, "5", 6, 1.0, 0),
        ("p0", 0, "sampled", True, "5", 6, 1.0, 0),
        ("p0", 3, "sampled", False, None, 2, 0.0, 0),
        ("p0", 1, "sampled", False, "7", 8, 2.0, 0),
        ("p1", 0, "greedy", False, "3", 5, 0.0, 1),
        ("p1", 0, "sampled", False, "3", 3, 1.0, 1),
        ("p1", 1, "sampled", True, "9", 7, 1.0, 1),
        ("p1", 2, "sampled", True, "9", 7, 1.0, 1),
        ("p1", 3, "sampled", True, "9", 7, 1.0, 1),
    ]
    names = ["prompt_id", "sample_idx", "decoding", "correct", "answer", "n_tokens",
             "mean_entropy", "level"]
    return pa.Table.from_pylist([dict(zip(names, r)) for r in rows])


def test_summarise_hand_computed():
    s = summarise(_eval_table(), ks=[1, 2, 4, 8], fmt="synthetic")
    expected = {
        "greedy_acc": 0.5,  # p0 right, p1 wrong
        "sampled_acc": 5 / 8,  # 2 + 3 correct of 8 samples
        # avg@k, first k samples by sample_idx: p0 = T F T F, p1 = F T T T
        "avg@1": (1 + 0) / 2,
        "avg@2": (0.5 + 0.5) / 2,
        "avg@4": (0.5 + 0.75) / 2,
        # pass@k over all n=4 samples: p0 c=2, p1 c=3
        "pass@1": (2 / 4 + 3 / 4) / 2,
        "pass@2": ((1 - 1 / 6) + 1.0) / 2,  # p0: 1 - C(2,2)/C(4,2); p1: n-c=1 < 2 -> 1
        "pass@4": 1.0,
        # maj@1: p0 "5" right, p1 "3" wrong
        "maj@1": 0.5,
        # maj@2: p0 {"5","7"} tie -> "5" right; p1 {"3","9"} tie -> "3" wrong
        "maj@2": 0.5,
        # maj@4: p0 "5" x2 (None does not vote) right; p1 "9" x3 right
        "maj@4": 1.0,
        "parse_rate": 9 / 10,  # one None among 10 rows
        "mean_length": (4 + 6 + 6 + 2 + 8 + 5 + 3 + 7 + 7 + 7) / 10,  # 55 / 10
        # token-weighted: p0 4*.5 + 6*1 + 6*1 + 2*0 + 8*2 = 30; p1 5*0 + 3 + 7 + 7 + 7 = 24
        "mean_token_entropy": (30 + 24) / 55,
        "greedy_acc/level_0": 1.0,
        "greedy_acc/level_1": 0.0,
        "maj@4/level_0": 1.0,
        "maj@4/level_1": 1.0,
        "sampled_acc/level_0": 2 / 4,  # p0 samples T F T F
        "sampled_acc/level_1": 3 / 4,  # p1 samples F T T T
        "prompts/level_0": 1.0,
        "prompts/level_1": 1.0,
    }
    assert set(s) == set(expected)  # k=8 > 4 samples is skipped
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key
    assert all(isinstance(v, float) for v in s.values())


def test_summarise_without_samples_and_bad_input():
    greedy_only = _eval_table().filter(pc.field("decoding") == "greedy")
    s = summarise(greedy_only, ks=[1], fmt="synthetic")
    assert s["greedy_acc"] == 0.5
    assert math.isnan(s["sampled_acc"])
    assert not any(key.startswith(("avg@", "pass@", "maj@")) for key in s)
    with pytest.raises(ValueError, match="mean_entropy"):
        summarise(_eval_table().drop_columns(["mean_entropy"]), ks=[1], fmt="synthetic")
    with pytest.raises(ValueError, match="k must be"):
        summarise(_eval_table(), ks=[0], fmt="synthetic")
