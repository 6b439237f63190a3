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
    A completion's answer is found by the first of these rules that applies, in this order:

    1. ``\\boxed{...}`` (or ``\\fbox``): the last box, brace-balanced, decides: the number after
       its last ``=`` if it has one (``\\boxed{x = 5}``), else its first number; numbers after
       the box (a check like ``\\boxed{18}. Check: 18 * 2 = 36``) do not count. A box without a
       number (``\\boxed{\\text{none}}``), or a last box cut off before its ``}``, is no answer
       (None). An empty ``\\boxed{}`` is not a box (it is the prompt's "put your answer in
       \\boxed{}" echoed), so the rules below apply.
    2. ``####``: the first number after the last ``####`` (GSM8K's ``#### N`` line); none there
       is no answer.
    3. "the answer is ...": the last ``answer is``/``answer was``/``answer:``/``answer =``
       (any case, markdown bold allowed) directly followed by a number (only spaces, ``:``,
       ``*``, ``$`` or ``\\(`` in between) gives that number: ``The answer is $1,200.``. A
       phrase not directly followed by a number (``the answer is correct: 9+9=18``) is skipped.
    4. The last number in the text.

    A gold is read differently: ``\\boxed{...}`` as above, else the FIRST number after the last
    ``####`` (``#### 18 (9 each)`` is 18, not 9), else the first number (a bare ``1,200`` or
    ``18 (9 each)``). So both a bare ``72`` and a full reference solution ``... #### 72`` work.

    Numbers (:func:`_numbers` has the details): thousands commas in correct groups (``1,200``;
    ``3,4`` is two numbers), also LaTeX ``1{,}200``; ``$``/``\\$`` before or after a minus
    (``-$5`` is -5); decimals; negative numbers (a minus after a letter or digit is a hyphen:
    ``5-7`` is 5 and 7); fractions ``3/4``, ``\\frac{3}{4}``, ``\\dfrac``, ``\\tfrac``, read as
    their value (not the denominator), and mixed numbers ``2 1/2``; ``%`` is dropped (GSM8K
    golds state percentages as the bare number, so ``25%`` matches gold ``25``, not ``0.25``);
    trailing units and words are ignored (``72 m^2`` is 72, ``5 km/h`` is 5, ``3 cm²`` is 3).
    Digits inside words are not numbers (``H2O``, ``COVID-19``, ``x2``), nor ordinals (``2nd``,
    ``10th``), exponents/subscripts (``m^2``, ``x_1``) or dates (``3/4/2020``); digits glued to
    letters on their right are a number with a unit (``5km``).

    Normal form: the exact value as a string: an integer (``$1,200.`` -> ``1200``, ``12.0`` ->
    ``12``), a terminating decimal without trailing zeros (``0.50`` and ``3/4`` -> ``0.5``,
    ``0.75``), or, when the decimal does not terminate, the reduced fraction (``1/3``,
    ``\\frac{2}{6}`` -> ``1/3``; ``0.333`` is a different value). Every value has exactly one
    normal form, so equal values compare equal as strings. These are the project's own rules,
    not math-verify's: a GSM8K answer is one number, an exact rational compare is the right
    test (math-verify rounds, so it accepts ``0.3333333`` for ``1/3``), and math-verify reads no
    number in ``-$5`` or ``\\$5`` and reads ``2nd`` as 2.
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
therefore numbered in order of first occurrence, which metrics use to break ties. None and blank
(empty or whitespace-only) answers are no answer in every format: cluster -1, never a vote.

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
from fractions import Fraction

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

    synthetic/gsm8k answers come back in normal form (the module docstring's Formats section
    gives the rules and their order); math answers come back as the LaTeX the model wrote inside
    its last box (comparison happens later, in :func:`is_correct`).
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
    ``...\\boxed{...}`` for math); it is reduced with the format's own rule first (for gsm8k
    the gold rule: the first number after ``####``, see the module docstring).
    """
    _check_fmt(fmt)
    if pred is None:
        return False
    if fmt == "math":
        g, p = gold.strip(), pred.strip()
        if g and g == p:
            return True
        return _verify(_parse_math(gold), _parse_math(pred))
    # The gold is read with the gold rule (first number after "####"), the prediction with the
    # completion rule, which is the identity on the normal forms extract returns.
    g = _gold_gsm8k(gold) if fmt == "gsm8k" else _normalise(gold, fmt)
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
    """Cluster id per answer; ids count up from 0 in order of first occurrence; no answer -> -1.

    No answer is None or a blank (empty or whitespace-only) string: answers read back from a
    table or another tool can be "" where :func:`extract` would have said None, and a blank must
    never form a cluster that outvotes real answers. synthetic/gsm8k cluster by equality of the
    normal form (an answer without one, which :func:`extract` never returns, also counts as no
    answer). math compares each answer with the representative (first member) of every cluster
    so far, via :func:`equivalent`.
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
        if a is None or not a.strip():
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
_GSM8K_MARK = "####"

# One unsigned number as written in prose: digits with correct thousands groups (so "3,4" is two
# numbers, not 34), optional decimals, or a bare ".5". A sentence-final "." is not part of it
# because a decimal point must be followed by digits.
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A number token: an optional minus and/or currency sign (either order: "-$5", "$-5", "-\$5"),
# then a LaTeX fraction (\frac{3}{4}, \dfrac, \tfrac, \frac34), a plain fraction a/b (not part of a
# date like 3/4/2020) or a plain number. Context the regex cannot see (hyphens, words, exponents)
# is checked in _numbers.
_NUMBER_RE = re.compile(
    rf"""(?P<lead>[-\u2212]\\?\$?|\\?\$[-\u2212]?)?
    (?:\\[dt]?frac\s*(?:\{{\s*(?P<ln>-?(?:{_UNSIGNED}))\s*\}}|(?P<ln1>\d))
                 \s*(?:\{{\s*(?P<ld>-?(?:{_UNSIGNED}))\s*\}}|(?P<ld1>\d))
      |(?P<fn>{_UNSIGNED})/(?P<fd>{_UNSIGNED})(?![/\d])
      |(?P<num>{_UNSIGNED}))""",
    re.VERBOSE,
)
_MAX_NUMBER_CHARS = 200  # a longer token is a digit dump, not an answer
_ORDINAL_RE = re.compile(r"(?:st|nd|rd|th)(?![^\W\d_])", re.IGNORECASE)
_SLASH_DIGIT_RE = re.compile(r"/\d")
# "The answer is 18", "Final answer: $1,200", "**Answer:** 18", "answer = -5": the number must
# follow the phrase directly (only spaces, markdown bold, ":" or a "$"/"\(" math opener between),
# so "the answer is correct: 9+9=18" does not anchor on 9.
_ANSWER_IS_RE = re.compile(
    r"\banswer(?:\*\*|\s)*(?:is|was|would\s+be|will\s+be|:|=)(?:[\s*:$]|\\\(|\\\[)*",
    re.IGNORECASE,
)
_EMPTY_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")


def _prep(text: str) -> str:
    """LaTeX thousands separators to plain commas (``1{,}200`` and ``1\\,200`` -> ``1,200``), and
    empty boxes dropped: ``\\boxed{}`` is a template echo ("put your answer in \\boxed{}"), not a
    declared answer, so it must not hide the answer the text does give."""
    text = _EMPTY_BOX_RE.sub(" ", text.replace("{,}", ","))
    return re.sub(r"(?<=\d)\\,(?=\d{3})", ",", text)


def _numbers(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, Fraction]]:
    """(start offset, exact value) of every number in ``text[start:end]``, in order.

    Rules beyond the regex, each because a real completion broke the simpler reading:

    * a minus right after a letter, digit, ``.`` or closing bracket is a hyphen or a
      subtraction, not a sign: ``5-7`` gives 5 and 7, and after a letter (``COVID-19``, ``x-2``)
      the number is part of the word and skipped;
    * digits glued to a letter on their left are part of a word (``H2O``, ``m2``, ``A1``), except
      after a LaTeX command (``\\times3``, ``\\cdot5``); glued on their right only the ordinal
      suffixes st/nd/rd/th make a word (``2nd``, ``10th``), other letters are a unit (``5km``);
    * exponents and subscripts are not values (``72 m^2``, ``m^{2}``, ``x_1``), nor is a number
      glued to a ``/`` that did not make a fraction (``3/4/2020`` is a date, no number) or to a
      digit and dot (``1.2.3``);
    * a whole number followed by a proper fraction is a mixed number (``2 1/2`` and
      ``2\\frac{1}{2}`` are 2.5, as math-verify also reads the LaTeX form);
    * a fraction with denominator 0 is no number, nor is a token of over 200 characters.

    ``%``/``\\%`` and trailing words or units are simply not part of the token (``50%`` -> 50,
    ``5 km/h`` -> 5, ``3 cm²`` -> 3).
    """
    out: list[tuple[int, int, Fraction, bool]] = []  # (start, end, value, is a plain integer)
    for m in _NUMBER_RE.finditer(text, start, len(text) if end is None else end):
        i, lead, plain = m.start(), m.group("lead") or "", m.group("num")
        neg = "-" in lead or "\u2212" in lead
        if lead and lead[0] in "-\u2212" and i > 0:
            before = text[i - 1]
            if before.isalnum() or before in "._)]}":
                if before.isalpha():
                    continue  # "COVID-19", "x-2": the number belongs to the word
                neg, i = False, i + 1  # "5-7": a range or a subtraction, the 7 is positive
        if plain is not None and (_ORDINAL_RE.match(text, m.end())
                                  or _SLASH_DIGIT_RE.match(text, m.end())):
            continue
        if m.end() - m.start() > _MAX_NUMBER_CHARS:
            continue  # a digit run this long is no answer (and int() refuses > 4300 digits)
        value = _token_value(m)
        if value is None:
            continue
        if neg:
            value = -value
        if plain is None and not lead and 0 < value < 1 and out and out[-1][3]:
            gap = text[out[-1][1]:i]
            latex = m.group("ln") is not None or m.group("ln1") is not None
            mixed = gap == " " or (latex and gap == "")
        else:
            mixed = False
        if mixed:
            s, _, w, _ = out.pop()  # "2 1/2", "2\\frac{1}{2}": 2.5; "-2 1/2": -2.5
            out.append((s, m.end(), w - value if w < 0 else w + value, False))
            continue
        if i > 0 and _glued_left(text, i):
            continue
        whole = plain is not None and plain.isdigit()
        out.append((i, m.end(), value, whole))
    return [(s, v) for s, _, v, _ in out]


def _glued_left(text: str, i: int) -> bool:
    """Whether the number starting at ``text[i]`` is glued to what precedes it (see _numbers)."""
    c = text[i - 1]
    if c.isalpha():
        j = i - 1
        while j > 0 and text[j - 1].isalpha():
            j -= 1
        return not (j > 0 and text[j - 1] == "\\")  # letters of a LaTeX command do not glue
    if c.isdigit() or c in "^_/":
        return True
    if c == "{" and i >= 2 and text[i - 2] in "^_":
        return True
    return c == "." and i >= 2 and text[i - 2].isdigit()


def _token_value(m: re.Match) -> Fraction | None:
    if m.group("num") is not None:
        return _fraction(m.group("num"))
    num = m.group("fn") or m.group("ln") or m.group("ln1")
    den = m.group("fd") or m.group("ld") or m.group("ld1")
    n, d = _fraction(num), _fraction(den)
    return None if d == 0 else n / d


def _fraction(s: str) -> Fraction:
    return Fraction(s.replace(",", ""))  # exact: Fraction("0.1") is 1/10, not a float


def _canonical(value: Fraction) -> str:
    """Normal form of a gsm8k value: an integer (``12``), a terminating decimal without trailing
    zeros (``0.75``, ``-1234.5``), or, when the decimal does not terminate, the reduced fraction
    ``p/q`` (``1/3``, ``-2/3``), so every value has exactly one normal form."""
    p, q = value.numerator, value.denominator
    if q == 1:
        return str(p)
    twos = fives = 0
    r = q
    while r % 2 == 0:
        r, twos = r // 2, twos + 1
    while r % 5 == 0:
        r, fives = r // 5, fives + 1
    if r != 1:
        return f"{p}/{q}"
    k = max(twos, fives)  # smallest k with value * 10**k an integer, so no trailing zeros
    digits = str(abs(p) * (10**k // q)).rjust(k + 1, "0")
    return f"{'-' if p < 0 else ''}{digits[:-k]}.{digits[-k:]}"


def first_number(text: str) -> str | None:
    """Normal form of the first number in ``text`` (the gsm8k number rules), or None.

    This is how a gold answer is read: ``18 (9 each)`` -> ``18``, ``$1,200`` -> ``1200``.
    """
    nums = _numbers(_prep(text))
    return _canonical(nums[0][1]) if nums else None


def _box_value(content: str) -> str | None:
    # A box holds one expression; "x = 5" or "3 \times 6 = 18" states its value after the last "=".
    nums = _numbers(content.rsplit("=", 1)[-1])
    return _canonical(nums[0][1]) if nums else None


def _extract_gsm8k(text: str) -> str | None:
    t = _prep(text)
    boxed = _last_boxed(t)
    if boxed is _UNCLOSED:
        return None  # the final answer was cut off; an earlier box or number is not it
    if boxed is not None:
        # The box is the model's declared answer: it beats any number after it (a check like
        # "\boxed{18}. Check: 18 * 2 = 36"), and a box without a number is no answer.
        return _box_value(boxed)
    cut = t.rfind(_GSM8K_MARK)
    if cut >= 0:
        # GSM8K convention "#### N": the first number after the last "####"; nothing numeric
        # there means the answer line is broken, not that an earlier number is the answer.
        nums = _numbers(t, cut + len(_GSM8K_MARK))
        return _canonical(nums[0][1]) if nums else None
    nums = _numbers(t)
    if not nums:
        return None
    starts = {s: v for s, v in nums}
    for m in reversed(list(_ANSWER_IS_RE.finditer(t))):
        if m.end() in starts:
            return _canonical(starts[m.end()])
    return _canonical(nums[-1][1])


def _gold_gsm8k(gold: str) -> str | None:
    """Normal form of a gsm8k gold (the gold rule of the module docstring). The FIRST number,
    not the last, because a remark after the answer (``#### 18 (9 each)``) is not the answer."""
    t = _prep(gold)
    boxed = _last_boxed(t)
    if boxed is _UNCLOSED:
        return None
    if boxed is not None:
        return _box_value(boxed)
    cut = t.rfind(_GSM8K_MARK)
    return first_number(t[cut + len(_GSM8K_MARK):] if cut >= 0 else t)


def _normalise(answer: str, fmt: str) -> str | None:
    """Normal form of a synthetic/gsm8k answer (idempotent on normal forms). For gsm8k this is
    the completion rule; gold strings go through :func:`_gold_gsm8k` instead."""
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
