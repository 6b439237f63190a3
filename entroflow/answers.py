"""Answer extraction and answer equivalence for the three evaluation formats.

Every evaluation stage turns a model completion into a short answer string and compares it with a
gold answer; entropy-style analyses (semantic entropy, majority voting) additionally group the
answers of k sampled completions into classes of equivalent answers. All of that goes through
this module so that "correct", "same answer" and "parsed" mean the same thing everywhere.

Formats
-------
``synthetic``
    The tiny arithmetic world (:mod:`entroflow.data.reasoning`): the answer is the integer after
    the final ``#`` at the end of the completion (``12+3=15#15`` -> ``15``). Normal form:
    ``str(int(x))``.
``gsm8k``
    The number after the last ``####`` if the text has one, else the last number in the text.
    Commas, ``$`` and a sentence-final ``.`` are dropped and the value is written canonically:
    ``$1,200.`` -> ``1200``, ``12.0`` -> ``12``, ``0.50`` -> ``0.5``. Gold answers go through the
    same rule, so both a bare ``72`` and a full reference solution ``... #### 72`` work.
``math``
    Competition maths (MATH/MATH-500 style), judged with math-verify. The answer is the content
    of the *last* ``\\boxed{...}`` (brace-balanced); a completion without any box falls back to
    math-verify's own search (``final answer is``, ``answer:``, the last LaTeX environment or
    number). Two answers are compared by parsing each to SymPy and calling math-verify
    ``verify`` (numeric, symbolic, set/interval and matrix comparison), so ``\\frac{1}{2}``,
    ``1/2`` and ``0.5`` agree.

Equivalence and clusters
------------------------
``equivalent(a, b)`` is symmetric by construction. For ``math`` it is
``a == b  or  verify(a, b)  or  verify(b, a)``: math-verify's ``verify(gold, pred)`` is
deliberately asymmetric (e.g. it simplifies assignments like ``x=1`` only on the gold side), and
clustering has no "gold" side. ``cluster_answers`` gives each answer the id of the first earlier
cluster whose representative (its first member) it is equivalent to, else a new id; ids are
therefore numbered in order of first occurrence, which metrics use to break ties.

math-verify without signals
---------------------------
math-verify's timeouts are ``signal.alarm`` based; called from a worker thread with the default
timeouts, ``parse``/``verify`` raise ``ValueError`` even with ``raise_on_error=False``. We call
them with ``parsing_timeout=None`` / ``timeout_seconds=None`` (no signals: safe in any thread,
and no clash with other SIGALRM users) and catch every exception, so one bad string yields "no
answer" / "not equal" instead of failing a batch. The price is that nothing interrupts a slow
SymPy computation, so answers that would make SymPy build astronomically large integers
(``10^{10^{10}}``, ``(10^{10})!``, ``\\binom{10^{12}}{10^5}``, which otherwise hang for minutes)
are screened out before SymPy sees them and compared as plain strings only; see
:func:`_magnitude` for the estimate.
"""
from __future__ import annotations

import functools
import math
import re
from decimal import Decimal, InvalidOperation

from entroflow.data.reasoning import extract_answer

FORMATS = ("synthetic", "gsm8k", "math")


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def extract(text: str, fmt: str) -> str | None:
    """The answer a completion gives in format ``fmt``, or None when it gives none.

    synthetic/gsm8k answers come back in normal form; math answers come back as the LaTeX the
    model wrote inside its last box (comparison happens later, in :func:`is_correct`).
    """
    _check_fmt(fmt)
    if fmt == "synthetic":
        return extract_answer(text)
    if fmt == "gsm8k":
        return _extract_gsm8k(text)
    return _extract_math(text)


def is_correct(pred: str | None, gold: str, fmt: str) -> bool:
    """Whether the extracted answer ``pred`` matches the gold answer ``gold``.

    ``gold`` may be a bare answer or a full reference solution (``... #### 72`` for gsm8k,
    ``...\\boxed{...}`` for math); it is reduced with the format's own rule first.
    """
    _check_fmt(fmt)
    if pred is None:
        return False
    if fmt == "math":
        g, p = gold.strip(), pred.strip()
        if g and g == p:
            return True
        return _verify(_parse_math(gold), _parse_math(pred))
    g = _normalise(gold, fmt)
    return g is not None and g == _normalise(pred, fmt)


def equivalent(a: str, b: str, fmt: str) -> bool:
    """Whether two extracted answers state the same value (symmetric; for clustering samples)."""
    _check_fmt(fmt)
    if fmt == "math":
        sa, sb = a.strip(), b.strip()
        if sa and sa == sb:
            return True
        pa, pb = _parse_math(a), _parse_math(b)
        return _verify(pa, pb) or _verify(pb, pa)
    na = _normalise(a, fmt)
    return na is not None and na == _normalise(b, fmt)


def cluster_answers(answers: list[str | None], fmt: str) -> list[int]:
    """Cluster id per answer; ids count up from 0 in order of first occurrence, None -> -1.

    synthetic/gsm8k cluster by equality of the normal form (an answer without one, which
    :func:`extract` never returns, counts as no answer: -1). math compares each answer with the
    representative (first member) of every cluster so far, via :func:`equivalent`.
    """
    _check_fmt(fmt)
    ids: list[int] = []
    if fmt != "math":
        index: dict[str, int] = {}
        for a in answers:
            key = None if a is None else _normalise(a, fmt)
            if key is None:
                ids.append(-1)
                continue
            ids.append(index.setdefault(key, len(index)))
        return ids
    reps: list[str] = []
    for a in answers:
        if a is None:
            ids.append(-1)
            continue
        # Linear scan over representatives: k (samples per prompt) is small, and an answer
        # that matches no cluster must be compared with all of them anyway.
        for cid, rep in enumerate(reps):
            if equivalent(rep, a, fmt):
                ids.append(cid)
                break
        else:
            ids.append(len(reps))
            reps.append(a)
    return ids


# --------------------------------------------------------------------------------------------
# synthetic / gsm8k
# --------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"-?\d+")
# A number as written in prose: optional minus (not a hyphen inside a word or range like "5-7"),
# optional $, digits with thousands commas, optional decimals; also ".5". A trailing sentence
# "." is not part of the match because a decimal point must be followed by digits.
_NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?\$?(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)")
_GSM8K_MARK = "####"


def _canonical_number(s: str) -> str | None:
    """``-$1,200.50`` -> ``-1200.5``; integral values lose their decimals (``12.0`` -> ``12``)."""
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))  # also maps -0 to 0
    return format(d.normalize(), "f")


def _extract_gsm8k(text: str) -> str | None:
    cut = text.rfind(_GSM8K_MARK)
    if cut >= 0:
        # GSM8K convention: the final answer follows the last "####"; nothing numeric there
        # means the answer line is broken, not that an earlier number is the answer.
        m = _NUMBER_RE.search(text, cut + len(_GSM8K_MARK))
        return _canonical_number(m.group()) if m else None
    matches = _NUMBER_RE.findall(text)
    return _canonical_number(matches[-1]) if matches else None


def _normalise(answer: str, fmt: str) -> str | None:
    """Normal form of a synthetic/gsm8k answer or gold string (idempotent on normal forms)."""
    s = answer.strip()
    if fmt == "synthetic":
        if _INT_RE.fullmatch(s):
            return str(int(s))
        return extract_answer(s)
    return _extract_gsm8k(s)


# --------------------------------------------------------------------------------------------
# math (math-verify)
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_UNCLOSED = object()  # sentinel: the last box is cut off (truncated generation)

# Answers longer than this are not a single final answer; parsing them is slow and pointless.
_MAX_ANSWER_CHARS = 1000
# latex2sympy evaluates these eagerly *while parsing* (binomial(10^12, 10^5) hangs in parse), so
# they are only handed to SymPy when no large operand can be involved.
_EAGER_RE = re.compile(r"\\(?:[dt]?binom|choose|gcd|lcm|bmod|pmod|mod)\b|operatorname\{(?:gcd|lcm)")
_LARGE_OPERAND_RE = re.compile(r"\^|!|\d{7,}")
# Largest result, in decimal digits, that an answer may evaluate to and still reach SymPy. Exact
# integers this size take microseconds; the blow-ups we guard against are astronomically larger.
_MAX_DIGITS = 10_000.0


def _last_boxed(text: str):
    """Content of the last ``\\boxed{...}``/``\\fbox{...}``; None if there is none, _UNCLOSED if
    the last one never closes.

    Brace matching is done here rather than by math-verify because its catch-all boxed regex
    spans from the first box to the last one, so ``\\boxed{1} ... \\boxed{3}`` parses as the set
    {1, 3} instead of the final answer 3.
    """
    last = None
    for last in _BOX_RE.finditer(text):
        pass
    if last is None:
        return None
    depth, i = 1, last.end()
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # escaped character, e.g. the set braces of \{1, 2\}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[last.end():i]
        i += 1
    return _UNCLOSED


def _extract_math(text: str) -> str | None:
    boxed = _last_boxed(text)
    if boxed is _UNCLOSED:
        return None  # the final answer was cut off; an earlier box is not the final answer
    if boxed is not None:
        s = boxed.strip()
        return s if s and _parse_math(s) else None
    # No box: let math-verify find an anchored answer or the last LaTeX/number in the text. Its
    # result is [sympy value, matched string]; the string is what the model wrote, which
    # _parse_math turns back into the same value.
    if _EAGER_RE.search(text) and _LARGE_OPERAND_RE.search(text):
        return None
    for item in _mv_parse(text):
        if isinstance(item, str) and item.strip():
            return item.strip()
    return None


@functools.lru_cache(maxsize=16384)
def _parse_math(answer: str) -> tuple:
    """math-verify parse of one answer (or gold) string: a tuple of SymPy values and strings.

    Cached because clustering and majority voting compare the same few answers many times.
    SymPy values too large to compare safely are dropped, leaving the string, which math-verify
    compares by plain string equality.
    """
    s = answer.strip()
    boxed = _last_boxed(s)
    if boxed is _UNCLOSED:
        return ()
    if boxed is not None:
        s = boxed.strip()
    if not s:
        return ()
    if len(s) > _MAX_ANSWER_CHARS or (_EAGER_RE.search(s) and _LARGE_OPERAND_RE.search(s)):
        return (s,)
    # Wrapping the bare answer in a box makes math-verify read it as LaTeX (so "2\sqrt{3}" is
    # 2*sqrt(3), not the leading 2 it would find as a plain expression).
    items = _mv_parse("\\boxed{" + s + "}")
    return tuple(x for x in items if isinstance(x, str) or _magnitude(x) <= _MAX_DIGITS)


def _mv_parse(text: str) -> list:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return list(parse(text, parsing_timeout=None, raise_on_error=False))
    # TimeoutException derives from BaseException, so it is named explicitly; with the timeout
    # off it should not occur, but a lost answer is better than a lost batch.
    except (Exception, TimeoutException):
        return []


def _verify(gold: tuple, pred: tuple) -> bool:
    if not gold or not pred:
        return False
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return bool(verify(list(gold), list(pred), timeout_seconds=None, raise_on_error=False))
    except (Exception, TimeoutException):
        return False


def _magnitude(expr) -> float:
    """Cheap upper-bound estimate of the decimal digits SymPy may need to evaluate ``expr``.

    Never evaluates anything: numbers contribute log10|n|, a product the sum of its factors, a
    sum the largest term (+1), a power |exponent| x digits(base) (symbols count as one digit,
    so (x+1)^{10^6} is flagged too, since expanding it is just as hopeless), factorial-like
    functions n*log10(n), sums/products/integrals their summand times the range. Anything that
    cannot be estimated (or recurses too deeply) counts as infinite, i.e. is not compared.
    """
    try:
        return _mag(expr)
    except Exception:  # RecursionError on absurdly nested input, or an exotic SymPy type
        return math.inf


@functools.cache
def _sympy_kinds() -> dict:
    """SymPy classes used by :func:`_mag`, imported on first use (SymPy is slow to import and
    only the math format needs it)."""
    import sympy
    from sympy.concrete.expr_with_limits import ExprWithLimits
    from sympy.functions.combinatorial import factorials as f
    from sympy.matrices import MatrixBase

    return {
        "sympy": sympy,
        "limits": ExprWithLimits,
        "matrix": MatrixBase,
        "factorial_like": (f.factorial, f.factorial2, f.subfactorial, f.binomial,
                           f.RisingFactorial, f.FallingFactorial, sympy.gamma),
    }


def _mag(e) -> float:
    k = _sympy_kinds()
    sp = k["sympy"]
    if isinstance(e, k["matrix"]) and not isinstance(e, sp.Basic):
        return max((_mag(x) for x in e), default=0.0)
    if isinstance(e, sp.Integer):
        p = int(e)
        return math.log10(abs(p)) if p else 0.0  # math.log10 accepts arbitrarily large ints
    if isinstance(e, sp.Rational):
        return max(math.log10(abs(e.p)) if e.p else 0.0, math.log10(e.q))
    if isinstance(e, sp.Float):
        _, _, exp, bc = e._mpf_  # value ~ man * 2**exp with a bc-bit mantissa
        return max(0.0, float(exp + bc)) * math.log10(2)
    if isinstance(e, sp.Symbol) or not e.args:
        return 1.0
    if isinstance(e, (sp.Pow, sp.exp)):
        base, ex = (e.base, e.exp) if isinstance(e, sp.Pow) else (sp.E, e.args[0])
        return _power_digits(_mag(ex), _mag(base))
    if isinstance(e, k["factorial_like"]):
        m = max(_mag(a) for a in e.args)
        return math.inf if m > 7 else 10.0**m * max(m, 1.0)
    if isinstance(e, k["limits"]):
        terms = max((_mag(b) for lim in e.limits for b in lim[1:]), default=1.0)
        return math.inf if terms > 7 else 10.0**terms * max(_mag(e.function), 1.0)
    if isinstance(e, sp.Mul):
        return sum(_mag(a) for a in e.args)
    if isinstance(e, sp.Add):
        return max(_mag(a) for a in e.args) + 1.0
    return max(_mag(a) for a in e.args)


def _power_digits(exp_mag: float, base_mag: float) -> float:
    """Digits of base^exp given the digit estimates of both (|exp| <= 10**exp_mag)."""
    if exp_mag > 9:
        return math.inf
    return 10.0**exp_mag * max(base_mag, math.log10(2))
