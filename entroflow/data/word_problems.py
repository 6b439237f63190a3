"""GSM8K-style English word problems, generated with verified worked solutions.

Why: the arithmetic world of :mod:`entroflow.data.reasoning` is written in a private notation
(``37+5-12:``) that only a model pretrained on it can read. A real pretrained instruct model
(SmolLM2-135M-Instruct) reads English, so evaluating it, and training it with RL against a
verifiable reward, needs English problems with known answers. GSM8K itself has to be downloaded;
these are generated on the spot, in any number, at controlled difficulty, with a gold answer that
is checked arithmetically before a row is written. Rows use the same :data:`reasoning.SCHEMA` as
GSM8K loaded by :mod:`entroflow.data.loaders`, so every downstream stage reads them unchanged.

A problem (3 steps; this is ``make_problem(random.Random(11), 3)``)::

    Ivan earns $22 an hour washing cars. This week he works eight hours. His boss adds a 25%
    bonus. How many dollars does Ivan earn?

and its worked solution, in GSM8K's format: sentences whose every calculation carries a calculator
annotation ``<<expr=value>>`` followed by the value, and the final line ``#### N``::

    He earns 22*8 = $<<22*8=176>>176 this week.
    The bonus is 176/4 = $<<176/4=44>>44.
    He gets 176+44 = $<<176+44=220>>220 in all.
    #### 220

Rules:

* **Level = steps.** A problem of ``steps`` steps has exactly ``steps`` annotations, each one
  binary operation (``a+b``, ``a-b``, ``a*b`` or ``a/b``), so difficulty counts reasoning steps.
  Steps 1..:data:`MAX_STEPS` are supported. "25% of 40" is one step written ``40/4``; "three
  quarters full" is two (``T/4`` then ``*3``); "she and 3 friends share" is two (``3+1``, ``c/4``).
* **Exact integers.** Every intermediate value is a non-negative integer no larger than
  :data:`LIMIT`: divisions are only drawn where they divide evenly (divisors are chosen from the
  value at hand), subtractions only where they stay non-negative. Money is whole dollars, or
  whole cents in the coins family, so no value is ever written with a decimal point.
* **Numbers as words or digits.** Each number the question states is written as digits or, with
  probability :data:`WORD_P` where English has a short word for it (0..100, whole hundreds), as
  words ("thirty-five", sometimes "a dozen"); the choice is drawn from the seeded stream per
  number. Solutions always use digits, like GSM8K's.
* **Every stated number is used**, and every operand of a solution step is a number of the
  question, an earlier result, or common knowledge (60 minutes in an hour, 1000 grams in a kg,
  7 days in a week, 2 for "there and back", 1 for "she and 3 friends").

Families (12 scenario kinds; each is a small state machine whose states are what the running
value means - "pages read", "pages left", "days needed" - and whose moves are one- or two-step
events; a problem is a random walk of exactly ``steps`` steps through one family, and its question
asks for the value of the state the walk ends in):

``collections`` people compared to each other: "twice as many stickers as", "a third as many",
"5 more", "3 fewer", packs bought, totals and differences of people. ``shopping`` produce at "$3
per pound" or per kilogram, items at a price each, a coupon, a percentage discount, change from a
bill, a bill split equally. ``travel`` km, hours and speed: distance covered, more legs, there and
back, the rest of a trip, its time in hours and minutes. ``reading`` pages a day, pages read and
left, days to finish, fractions of a book. ``baking`` batches, a dozen per batch, boxes, sales,
profit, grams and kg of flour. ``farm`` hens or ducks, eggs a day or a week, cartons or dozens,
sales over several weeks. ``tank`` litres: a fraction full, pouring in and using water, a hose in
litres a minute, bottles. ``wages`` dollars an hour, tips, a percentage bonus, spending, saving a
fraction, weeks to save for something. ``school`` students, a percentage or fraction in a group,
the rest, groups, supplies in packs, buses. ``practice`` minutes a day and a week, a second
activity, conversion to hours, several weeks. ``coins`` quarters, dimes and nickels in cents,
spending, buying at a price in cents. ``harvest`` trees, kg per tree, bags, price per kg, a stall
fee.

:func:`generate` makes train and test splits (test questions distinct, never in train);
:func:`check_solution` recomputes every annotation of a worked solution and returns its answer.
The generator runs it on every problem it makes, so a template bug raises instead of shipping a
wrong gold answer.
"""
from __future__ import annotations

import ast
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import pyarrow as pa

from entroflow.data.reasoning import SCHEMA

MAX_STEPS = 6
MAX_REPEAT = 2  # a move runs at most twice per problem: five detours in a row is not a problem
LIMIT = 100_000  # no value above this: a question for a 135M model, not a stress test
WORD_P = 0.35  # chance that a number with a short English name is written as words
SOURCE = "word_problems"

# A fixed pool, sampled by the seeded stream; (name, "f" | "m") for the pronouns.
NAMES = (
    ("Natalia", "f"), ("Maya", "f"), ("Ava", "f"), ("Sofia", "f"), ("Emma", "f"), ("Olivia", "f"),
    ("Mia", "f"), ("Lena", "f"), ("Grace", "f"), ("Chloe", "f"), ("Nora", "f"), ("Ruby", "f"),
    ("Zoe", "f"), ("Hannah", "f"), ("Priya", "f"), ("Aisha", "f"), ("Julia", "f"), ("Rosa", "f"),
    ("Leila", "f"), ("Mei", "f"), ("Liam", "m"), ("Noah", "m"), ("Leo", "m"), ("Omar", "m"),
    ("Ethan", "m"), ("Lucas", "m"), ("Mateo", "m"), ("Ravi", "m"), ("Samuel", "m"),
    ("Daniel", "m"), ("Jamal", "m"), ("Kenji", "m"), ("Tom", "m"), ("Felix", "m"), ("Hugo", "m"),
    ("Ivan", "m"), ("Marco", "m"), ("Ben", "m"), ("Arjun", "m"), ("Diego", "m"),
)
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 (``35`` -> ``thirty-five``, ``300`` -> ``three hundred``)."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words covers 0..999, not {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")


# --------------------------------------------------------------------------- checking

_ANNOTATION_RE = re.compile(r"<<(.*?)>>", re.S)
_EXPR_CHARS_RE = re.compile(r"^[0-9+\-*/() ]+$")
_ANSWER_RE = re.compile(r"^-?\d+$")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}


def evaluate(expr: str) -> Fraction:
    """The exact value of an arithmetic expression of integers, ``+ - * /`` and parentheses.

    Parsed with :mod:`ast` and walked node by node; anything else (names, calls, floats,
    ``**``) is a ``ValueError``, so a solution's text is never executed."""
    if len(expr) > 200 or not _EXPR_CHARS_RE.match(expr):
        raise ValueError("only integers, + - * / and parentheses are allowed")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not a well-formed expression") from None
    return _eval_node(tree.body)


def _eval_node(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        x = _eval_node(node.operand)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Div) and b == 0:
            raise ValueError("division by zero")
        return _BINOPS[type(node.op)](a, b)
    raise ValueError(f"{type(node).__name__} is not allowed")


def annotations(solution: str) -> list[tuple[str, str]]:
    """The ``(expr, stated value)`` of every ``<<expr=value>>`` in order; ``ValueError`` for an
    annotation without ``=`` or an unclosed ``<<``."""
    found = []
    for m in _ANNOTATION_RE.finditer(solution):
        if "=" not in m.group(1):
            raise ValueError(f"annotation <<{m.group(1)}>> has no '='")
        expr, stated = m.group(1).rsplit("=", 1)
        found.append((expr, stated))
    if solution.count("<<") != len(found):
        raise ValueError("an annotation '<<' is never closed with '>>'")
    return found


def check_solution(solution: str) -> int:
    """Recompute every ``<<expr=value>>`` of a worked solution; return the integer after ``####``.

    Raises ``ValueError`` naming the annotation when its expression is not plain integer
    arithmetic, its value is wrong, or the text after ``>>`` does not go on with that value (the
    GSM8K convention ``<<48/2=24>>24``: the number a reader sees is the one that was checked);
    and when the ``#### N`` line is missing or N is not an integer (thousands commas allowed).
    """
    for m, (expr, stated) in zip(_ANNOTATION_RE.finditer(solution), annotations(solution)):
        where = f"annotation <<{expr}={stated}>>"
        try:
            value = evaluate(expr)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            claimed = Fraction(stated.strip().replace(",", ""))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{where}: the result {stated!r} is not a number") from None
        if value != claimed:
            raise ValueError(f"{where} is wrong: {expr} = {value}")
        if not solution[m.end():].startswith(stated.strip()):
            raise ValueError(f"{where} is not followed by its value {stated.strip()}")
    marker = solution.rfind("####")
    if marker < 0:
        raise ValueError("no final answer line '#### N'")
    answer = solution[marker + 4:].strip().replace(",", "")
    if not _ANSWER_RE.match(answer):
        raise ValueError(f"the final answer {answer!r} after '####' is not an integer")
    return int(answer)


# --------------------------------------------------------------------------- the story engine


class _Redraw(Exception):
    """A draw broke a rule (a value not an integer, negative or too large): the move is undone."""


@dataclass
class Story:
    """A problem being written: question and solution sentences, and the running value.

    ``kind`` is what the running value means (a state of the family's machine); ``v`` holds the
    template fields (name, pronouns, nouns) and the values later moves refer back to."""

    rng: random.Random
    v: dict = field(default_factory=dict)
    kind: str = ""
    value: int = 0
    question: list[str] = field(default_factory=list)
    solution: list[str] = field(default_factory=list)
    steps: int = 0
    used: set = field(default_factory=set)
    runs: dict = field(default_factory=dict)  # move name -> times it ran

    def cast(self) -> None:
        name, g = self.rng.choice(NAMES)
        he, him, his = PRONOUNS[g]
        self.v.update(name=name, he=he, him=him, his=his)
        self.used.add(name)

    def new_name(self) -> str:
        name = self.rng.choice([n for n, _ in NAMES if n not in self.used])
        self.used.add(name)
        return name

    def pick(self, seq):
        return self.rng.choice(list(seq))

    def once(self, tag: str) -> bool:
        """True the first time a move with ``tag`` runs in this story (events that happen once)."""
        if tag in self.used:
            return False
        self.used.add(tag)
        return True

    def n(self, x: int, dozen: bool = False) -> str:
        """A number for the question: words or digits, drawn per number."""
        if self.rng.random() < WORD_P and (x <= 100 or (x < 1000 and x % 100 == 0)):
            if dozen and x == 12 and self.rng.random() < 0.5:
                return "a dozen"
            return number_words(x)
        return str(x)

    def money(self, x: int) -> str:
        words = self.n(x)
        return f"${x}" if words == str(x) else f"{words} dollars"

    def pct(self, p: int) -> str:
        words = self.n(p)
        return f"{p}%" if words == str(p) else f"{words} percent"

    def calc(self, a: int, op: str, b: int, money: bool = False) -> tuple[str, int]:
        """One step: ``"a*b = <<a*b=c>>c"`` (``$`` before the annotation for money) and c."""
        expr = f"{a}{op}{b}"
        value = evaluate(expr)
        if value.denominator != 1 or value < 0 or value > LIMIT:
            raise _Redraw(expr)
        c = int(value)
        self.steps += 1
        return f"{expr} = {'$' if money else ''}<<{expr}={c}>>{c}", c

    def ask(self, template: str, **kw) -> None:
        self.question.append(template.format(**self.v, **kw))

    def say(self, template: str, **kw) -> None:
        self.solution.append(template.format(**self.v, **kw))

    def set(self, kind: str, value: int) -> bool:
        self.kind, self.value = kind, value
        return True

    def snapshot(self) -> tuple:
        v = {k: list(x) if isinstance(x, list) else x for k, x in self.v.items()}
        return (v, self.kind, self.value, list(self.question), list(self.solution), self.steps,
                set(self.used), dict(self.runs))

    def restore(self, snap: tuple) -> None:
        (self.v, self.kind, self.value, self.question, self.solution, self.steps,
         self.used, self.runs) = snap


Move = Callable[[Story], bool]  # adds >= 1 step and returns True, or returns False (not possible)


@dataclass(frozen=True)
class Family:
    """A scenario kind: how a story starts, the moves from each state, the question per state.

    A state without moves is final: a walk may only enter it with its last step."""

    name: str
    start: Callable[[Story], None]
    moves: dict[str, tuple[Move, ...]]
    questions: dict[str, str]


@dataclass(frozen=True)
class Problem:
    """One generated problem: its question, worked solution (ending in ``#### answer``), answer."""

    family: str
    steps: int
    question: str
    solution: str
    answer: int


def _divisors(x: int, lo: int, hi: int) -> list[int]:
    """Divisors of x in [lo, hi] that leave a quotient of at least 2 (no "1 box")."""
    return [d for d in range(lo, min(hi, x // 2) + 1) if x % d == 0]


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


_FRACTIONS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 10: "a tenth"}
_PERCENTS = {2: 50, 4: 25, 5: 20, 10: 10}  # divisor -> percentage: p% of x is x/divisor
_TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}


def _share(s: Story, divisors: dict[int, str]) -> tuple[int, str] | None:
    """A divisor of the running value from ``divisors`` and its phrase, or None; the share is
    at least 2, so no sentence says "1 beads"."""
    ks = [k for k in divisors if s.value % k == 0 and s.value // k >= 2]
    if not ks:
        return None
    k = s.pick(ks)
    return k, divisors[k]


def _fraction_or_percent(s: Story) -> tuple[int, str] | None:
    """x/k phrased as "a quarter" or as "25%" (both one step)."""
    if s.rng.random() < 0.5:
        return _share(s, _FRACTIONS)
    got = _share(s, _PERCENTS)
    return (got[0], s.pct(got[1])) if got else None


# --------------------------------------------------------------------------- families


def _collections() -> Family:
    items = ("stamps", "marbles", "stickers", "seashells", "baseball cards", "beads",
             "comic books", "toy cars", "postcards", "pebbles")

    def start(s):
        x = s.rng.randint(6, 60)
        s.v.update(items=s.pick(items), people=[s.v["name"]], counts=[x], last=s.v["name"], now="")
        s.ask("{name} has {x} {items}.", x=s.n(x, dozen=True))
        s.set("person", x)

    def relate(s, question, op, k, word):
        a, b = s.v["last"], s.new_name()
        text, c = s.calc(s.value, op, k)
        s.ask(question, a=a, b=b, w=word)
        s.say("{b} has {t} {items}.", b=b, t=text)
        s.v["people"].append(b)
        s.v["counts"].append(c)
        s.v.update(last=b, now="")
        return s.set("person", c)

    def times(s):
        k = s.rng.randint(2, 5)
        return relate(s, "{b} has {w} as many {items} as {a}.", "*", k, _TIMES[k])

    def part(s):
        got = _share(s, {k: w for k, w in _FRACTIONS.items() if k < 10})
        return bool(got) and relate(s, "{b} has {w} as many {items} as {a}.", "/", got[0], got[1])

    def more(s):
        d = s.rng.randint(2, 20)
        return relate(s, "{b} has {w} more {items} than {a}.", "+", d, s.n(d, dozen=True))

    def fewer(s):
        if s.value < 6:
            return False
        d = s.rng.randint(2, min(20, s.value - 3))
        return relate(s, "{b} has {w} fewer {items} than {a}.", "-", d, s.n(d))

    def packs(s):
        k, m = s.rng.randint(2, 6), s.rng.randint(3, 12)
        t1, p = s.calc(k, "*", m)
        t2, c = s.calc(s.value, "+", p)
        s.ask("{last} {when} buys {k} packs of {items} with {m} in each pack.", k=s.n(k),
              m=s.n(m, dozen=True), when="then" if s.once("packs") else "later")
        s.say("{last} buys {t} {items}.", t=t1)
        s.say("Now {last} has {t} {items}.", t=t2)
        s.v["counts"][-1] = c
        s.v["now"] = " now"
        return s.set("person", c)

    def gives(s):
        if s.value < 6:
            return False
        d = s.rng.randint(2, s.value - 2)
        text, c = s.calc(s.value, "-", d)
        s.ask("{last} {when} gives away {d} {items}.", d=s.n(d),
              when="then" if s.once("gives") else "later")
        s.say("{last} has {t} {items} left.", t=text)
        s.v["counts"][-1] = c
        s.v["now"] = " now"
        return s.set("person", c)

    def total(s):
        ps, cs = s.v["people"], s.v["counts"]
        if len(ps) < 2:
            return False
        text, c = s.calc(cs[-2], "+", cs[-1])
        s.v.update(pa=ps[-2], pb=ps[-1])
        s.say("Together {pa} and {pb} have {t} {items}.", t=text)
        return s.set("total", c)

    def total_all(s):
        ps, cs = s.v["people"], s.v["counts"]
        if len(ps) < 3:
            return False
        text, acc = s.calc(cs[0], "+", cs[1])
        s.say("{a} and {b} have {t} {items}.", a=ps[0], b=ps[1], t=text)
        for p, c in zip(ps[2:], cs[2:]):
            text, acc = s.calc(acc, "+", c)
            s.say("With {p}'s {items}, that makes {t}.", p=p, t=text)
        s.v["everyone"] = ", ".join(ps[:-1]) + " and " + ps[-1]
        return s.set("total_all", acc)

    def diff(s):
        ps, cs = s.v["people"], s.v["counts"]
        if len(ps) < 2 or cs[-2] == cs[-1]:
            return False
        (small, x), (big, y) = sorted(zip(ps[-2:], cs[-2:]), key=lambda pc: pc[1])
        text, c = s.calc(y, "-", x)
        s.v.update(big=big, small=small)
        s.say("{big} has {t} more {items} than {small}.", t=text)
        return s.set("diff", c)

    return Family("collections", start,
                  {"person": (times, part, more, fewer, packs, gives, total, total_all, diff)},
                  {"person": "How many {items} does {last} have{now}?",
                   "total": "How many {items} do {pa} and {pb} have together?",
                   "total_all": "How many {items} do {everyone} have altogether?",
                   "diff": "How many more {items} does {big} have than {small}?"})


def _shopping() -> Family:
    produce = ("apples", "bananas", "grapes", "cherries", "potatoes", "carrots", "tomatoes",
               "strawberries", "onions", "pears")
    goods = ("notebooks", "pens", "candles", "mugs", "T-shirts", "batteries", "light bulbs",
             "dish towels")
    flat = ("a loaf of bread", "a bag of rice", "a jar of honey", "a box of tea",
            "a bunch of flowers", "a carton of milk")

    def start(s):
        q = s.rng.randint(2, 9)
        s.v.update(unit=s.pick(("pound", "kilogram")), produce=s.pick(produce))
        s.ask("{name} buys {q} {unit}s of {produce}.", q=s.n(q))
        s.set("amount", q)

    def price(s):
        p = s.rng.randint(2, 9)
        text, c = s.calc(s.value, "*", p, money=True)
        s.ask("{produce} cost {p} per {unit}.", p=s.money(p))
        s.say("{name} pays {t} for the {produce}.", t=text)
        return s.set("cost", c)

    def each(s):
        left = [g for g in goods if g not in s.used]
        if not left:
            return False
        g = s.pick(left)
        s.used.add(g)
        k, p = s.rng.randint(2, 6), s.rng.randint(2, 15)
        t1, x = s.calc(k, "*", p, money=True)
        t2, c = s.calc(s.value, "+", x, money=True)
        s.ask("{he} also buys {k} {g} that cost {p} each.", k=s.n(k), g=g, p=s.money(p))
        s.say("The {g} cost {t}.", g=g, t=t1)
        s.say("Altogether that is {t}.", t=t2)
        return s.set("cost", c)

    def one(s):
        left = [f for f in flat if f not in s.used]
        if not left:
            return False
        item = s.pick(left)
        s.used.add(item)
        p = s.rng.randint(2, 12)
        text, c = s.calc(s.value, "+", p, money=True)
        s.ask("{he} also buys {item} for {p}.", item=item, p=s.money(p))
        s.say("With {item}, the bill comes to {t}.", item=item, t=text)
        return s.set("cost", c)

    def coupon(s):
        if s.value < 4 or not s.once("coupon"):
            return False
        d = s.rng.randint(1, min(10, s.value - 2))
        text, c = s.calc(s.value, "-", d, money=True)
        s.ask("{he} has a coupon for {d} off the bill.", d=s.money(d) if d > 1 else "$1")
        s.say("With the coupon, {he} pays {t}.", t=text)
        return s.set("cost", c)

    def discount(s):
        got = _share(s, _PERCENTS)
        if not got or not s.once("discount"):
            return False
        k, p = got
        t1, d = s.calc(s.value, "/", k, money=True)
        t2, c = s.calc(s.value, "-", d, money=True)
        s.ask("The store gives {him} {p} off.", p=s.pct(p))
        s.say("{p}% of ${c} is {t}.", p=p, c=s.value, t=t1)
        s.say("So {he} pays {t}.", t=t2)
        return s.set("cost", c)

    def change(s):
        bills = [b for b in (10, 20, 50, 100) if b > s.value]
        if not bills:
            return False
        b = s.pick(bills[:2])
        text, c = s.calc(b, "-", s.value, money=True)
        s.ask("{he} pays with a ${b} bill.", b=b)
        s.say("{his} change is {t}.", t=text)
        return s.set("change", c)

    def split(s):
        ks = [k for k in range(2, 6) if s.value % (k + 1) == 0]
        if not ks:
            return False
        k = s.pick(ks)
        t1, m = s.calc(k, "+", 1)
        t2, c = s.calc(s.value, "/", m, money=True)
        s.ask("{he} and {k} friends split the bill equally.", k=s.n(k))
        s.say("There are {t} people.", t=t1)
        s.say("Each person pays {t}.", t=t2)
        return s.set("split", c)

    return Family("shopping", start,
                  {"amount": (price,), "cost": (each, one, coupon, discount, change, split)},
                  {"cost": "How much money, in dollars, does {name} spend?",
                   "change": "How many dollars in change does {he} get?",
                   "split": "How many dollars does each person pay?"})


def _travel() -> Family:
    modes = (("drives", "drive", range(40, 95, 5)), ("cycles", "cycle", range(10, 26)),
             ("walks", "walk", range(3, 7)), ("runs", "run", range(6, 13)))
    places = ("the lake", "the coast", "the next town", "a campsite", "the old castle",
              "the waterfall")

    def start(s):
        verbs, verb, speeds = s.pick(modes)
        s.v.update(verbs=verbs, verb=verb, speeds=list(speeds), place=s.pick(places))
        if s.rng.random() < 0.5:
            h = s.rng.randint(2, 6)
            s.ask("{name} {verbs} for {h} hours.", h=s.n(h))
            s.set("hours", h)
        else:
            t = s.pick(speeds) * s.rng.randint(2, 8)  # a whole number of hours at some speed
            s.ask("{name} {verbs} to {place}, which is {t} km away.", t=s.n(t))
            s.set("trip", t)

    def more_hours(s):
        k = s.rng.randint(1, 3)
        text, c = s.calc(s.value, "+", k)
        s.ask("after {a} break, {he} {verbs} for {k} more {hours}.", k=s.n(k) if k > 1 else "one",
              hours="hours" if k > 1 else "hour", a="a" if s.once("break") else "another")
        s.say("{he} {verbs} for {t} hours in all.", t=text)
        return s.set("hours", c)

    def speed(s):
        v = s.pick(s.v["speeds"])
        text, c = s.calc(s.value, "*", v)
        s.ask("{his} average speed is {v} km per hour.", v=s.n(v))
        s.say("{he} covers {t} km.", t=text)
        return s.set("km", c)

    def minutes(s):
        text, c = s.calc(s.value, "*", 60)
        s.say("That is {t} minutes.", t=text)
        return s.set({"hours": "minutes", "hours_left": "minutes_left",
                      "trip_hours": "trip_minutes"}[s.kind], c)

    def another(s):
        d = s.rng.randint(2, 3 * s.v["speeds"][-1])
        text, c = s.calc(s.value, "+", d)
        again = "another" if s.once("another") else "yet another"
        s.ask("after a break, {he} {verbs} {again} {d} km.", again=again, d=s.n(d))
        s.say("In total {he} covers {t} km.", t=text)
        return s.set("km", c)

    def back(s):
        if "rest" in s.used or not s.once("back"):
            return False
        text, c = s.calc(s.value, "*", 2)
        s.ask("then {he} {verbs} the same way back.")
        s.say("There and back, {he} covers {t} km.", t=text)
        return s.set("km", c)

    def days(s):
        k = s.rng.randint(2, 6)
        text, c = s.calc(s.value, "*", k)
        s.ask("{he} does this every day for {k} days.", k=s.n(k))
        s.say("In {k} days {he} covers {t} km.", k=k, t=text)
        s.v["days"] = s.n(k)
        return s.set("km_days", c)

    def rest(s):
        if "back" in s.used or not s.once("rest"):
            return False
        total = s.value + s.rng.randint(5, 4 * s.v["speeds"][-1])
        text, c = s.calc(total, "-", s.value)
        s.ask("the whole trip is {t} km.", t=s.n(total))
        s.say("{he} still has {t} km to go.", t=text)
        return s.set("left", c)

    def at_speed(s):
        vs = [v for v in s.v["speeds"] if s.value % v == 0 and s.value // v >= 1]
        if not vs:
            return False
        v = s.pick(vs)
        text, c = s.calc(s.value, "/", v)
        if s.kind == "left":
            s.ask("{he} {verbs} the rest of the way at {v} km per hour.", v=s.n(v))
            s.say("The rest of the trip takes {t} hours.", t=text)
            return s.set("hours_left", c)
        s.ask("{he} {verbs} at {v} km per hour.", v=s.n(v))
        s.say("The trip takes {t} hours.", t=text)
        return s.set("trip_hours", c)

    def stop(s):
        k = s.rng.randint(1, 3)
        text, c = s.calc(s.value, "+", k)
        s.ask("{he} also stops {again}for {k} {hours} on the way.", k=s.n(k) if k > 1 else "one",
              hours="hours" if k > 1 else "hour", again="" if s.once("stop") else "again ")
        s.say("With the stop, that is {t} hours.", t=text)
        return s.set(s.kind, c)

    def detour(s):
        d = s.rng.randint(2, 30)
        text, c = s.calc(s.value, "+", d)
        again = "" if s.once("detour") else "another "
        s.ask("a detour adds {again}{d} km to the trip.", again=again, d=s.n(d))
        s.say("The trip is {t} km long.", t=text)
        return s.set("trip", c)

    def round_trip(s):
        if not s.once("round"):
            return False
        text, c = s.calc(s.value, "*", 2)
        s.ask("{he} goes there and back.")
        s.say("There and back is {t} km.", t=text)
        return s.set("trip", c)

    return Family("travel", start,
                  {"hours": (more_hours, speed, minutes), "km": (another, back, days, rest),
                   "left": (at_speed,), "hours_left": (stop, minutes),
                   "trip": (detour, round_trip, at_speed), "trip_hours": (stop, minutes)},
                  {"hours": "How many hours does {name} {verb} for?",
                   "minutes": "How many minutes does {name} {verb} for?",
                   "km": "How many km does {name} cover?",
                   "km_days": "How many km does {he} cover in {days} days?",
                   "left": "How many more km does {he} have to go?",
                   "hours_left": "How many hours does the rest of the trip take?",
                   "minutes_left": "How many minutes does the rest of the trip take?",
                   "trip": "How many km does {name} travel?",
                   "trip_hours": "How many hours does the trip take?",
                   "trip_minutes": "How many minutes does the trip take?"})


def _reading() -> Family:
    def start(s):
        if s.rng.random() < 0.5:
            r = s.rng.randint(5, 40)
            s.ask("{name} reads {r} pages a day.", r=s.n(r))
            s.set("rate", r)
        else:
            p = s.rng.randint(5, 40) * s.rng.randint(4, 15)  # some pages-a-day rate divides it
            s.v["book"] = p
            s.ask("{name} is reading a book with {p} pages.", p=s.n(p))
            s.set("book", p)

    def for_days(s):
        d = s.rng.randint(2, 14)
        text, c = s.calc(s.value, "*", d)
        s.ask("{he} keeps this up for {d} days.", d=s.n(d))
        s.say("In {d} days {he} reads {t} pages.", d=d, t=text)
        return s.set("read", c)

    def week(s):
        text, c = s.calc(s.value, "*", 7)
        s.say("In a week {he} reads {t} pages.", t=text)
        return s.set("week", c)

    def more(s):
        k = s.rng.randint(3, 40)
        text, c = s.calc(s.value, "+", k)
        when = "on Saturday" if s.once("saturday") else "on Sunday" if s.once("sunday") else "later"
        s.ask("{when} {he} reads {k} more pages.", when=when, k=s.n(k, dozen=True))
        s.say("That makes {t} pages.", t=text)
        return s.set("read", c)

    def left(s):
        if "book" not in s.v:
            s.v["book"] = s.value + s.rng.randint(10, 300)
            s.ask("the book has {p} pages.", p=s.n(s.v["book"]))
        if s.v["book"] <= s.value:
            return False
        text, c = s.calc(s.v["book"], "-", s.value)
        s.say("{he} has {t} pages left.", t=text)
        return s.set("left", c)

    def days_needed(s):
        rs = _divisors(s.value, 5, 50)
        if not rs:
            return False
        r = s.pick(rs)
        text, c = s.calc(s.value, "/", r)
        if s.kind == "book":
            s.ask("{he} reads {r} pages a day.", r=s.n(r))
            s.say("{he} needs {t} days to finish it.", t=text)
            return s.set("days_all", c)
        s.ask("from now on {he} reads {r} pages a day.", r=s.n(r))
        s.say("{he} needs {t} more days.", t=text)
        return s.set("days", c)

    def tonight(s):
        if s.value % 2:
            return False
        text, c = s.calc(s.value, "/", 2)
        s.v["left_pages"] = s.value
        s.ask("tonight {he} wants to read half of the pages that are left.")
        s.say("Tonight {he} reads {t} pages.", t=text)
        return s.set("tonight", c)

    def after_tonight(s):
        text, c = s.calc(s.v["left_pages"], "-", s.value)
        s.say("After tonight, {t} pages are left.", t=text)
        return s.set("after", c)

    def already(s):
        got = _share(s, {k: w for k, w in _FRACTIONS.items() if k < 10})
        if not got:
            return False
        text, c = s.calc(s.value, "/", got[0])
        s.ask("{he} has already read {f} of it.", f=got[1])
        s.say("{he} has read {t} pages.", t=text)
        return s.set("read", c)

    return Family("reading", start,
                  {"rate": (for_days, week), "read": (more, left), "left": (days_needed, tonight),
                   "tonight": (after_tonight,), "book": (already, days_needed)},
                  {"read": "How many pages has {name} read so far?",
                   "week": "How many pages does {name} read in a week?",
                   "left": "How many pages does {he} have left to read?",
                   "days": "How many more days does {he} need to finish the book?",
                   "days_all": "How many days does it take {him} to read the whole book?",
                   "tonight": "How many pages does {he} read tonight?",
                   "after": "How many pages will be left after tonight?"})


def _baking() -> Family:
    baked = ("cookies", "muffins", "cupcakes", "brownies", "bread rolls", "scones")

    def start(s):
        b = s.rng.randint(2, 8)
        s.v["baked"] = s.pick(baked)
        s.ask("{name} bakes {b} batches of {baked}.", b=s.n(b))
        s.set("batches", b)

    def per_batch(s):
        k = s.rng.randint(6, 24)
        text, c = s.calc(s.value, "*", k)
        s.ask("each batch makes {k} {baked}.", k=s.n(k, dozen=True))
        s.say("{name} bakes {t} {baked}.", t=text)
        return s.set("items", c)

    def flour(s):
        g = s.pick(range(100, 501, 50))
        text, c = s.calc(s.value, "*", g)
        s.ask("each batch needs {g} grams of flour.", g=s.n(g))
        s.say("{he} uses {t} grams of flour.", t=text)
        return s.set("flour", c)

    def flour_left(s):
        kg = -(-s.value // 1000) + s.rng.randint(0, 2)
        t1, grams = s.calc(kg, "*", 1000)
        t2, c = s.calc(grams, "-", s.value)
        s.ask("{he} had {kg} kg of flour before baking.", kg=s.n(kg))
        s.say("{kg} kg is {t} grams.", kg=kg, t=t1)
        s.say("{he} has {t} grams of flour left.", t=t2)
        return s.set("flour_left", c)

    def eat(s):
        if s.value < 8:
            return False
        k = s.rng.randint(2, min(12, s.value // 2))
        text, c = s.calc(s.value, "-", k)
        if s.once("eat"):
            s.ask("{he} and {his} friends eat {k} of them.", k=s.n(k))
        else:
            s.ask("later they eat {k} more.", k=s.n(k))
        s.say("{t} {baked} are left.", t=text)
        return s.set("items", c)

    def gift(s):
        k = s.rng.randint(2, 20)
        text, c = s.calc(s.value, "+", k)
        s.ask("{his} {who} brings over {k} more {baked}.", k=s.n(k, dozen=True),
              who="neighbour" if s.once("gift") else "aunt")
        s.say("Now there are {t} {baked}.", t=text)
        return s.set("items", c)

    def boxes(s):
        ks = _divisors(s.value, 2, 12)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{he} packs them into boxes of {k}.", k=s.n(k))
        s.say("{he} fills {t} boxes.", t=text)
        return s.set("boxes", c)

    def give_boxes(s):
        if s.value < 3:
            return False
        k = s.rng.randint(1, s.value - 2)
        text, c = s.calc(s.value, "-", k)
        s.ask("{he} gives {k} {box} to {his} {who}.", k=s.n(k), box="box" if k == 1 else "boxes",
              who="grandparents" if s.once("give_boxes") else "teachers")
        s.say("{he} has {t} boxes left.", t=text)
        return s.set("boxes", c)

    def sell(s):
        p = s.rng.randint(2, 15) if s.kind == "boxes" else s.rng.randint(1, 4)
        text, c = s.calc(s.value, "*", p, money=True)
        what = "each box" if s.kind == "boxes" else "them"
        each = "" if s.kind == "boxes" else " each"
        s.ask("{he} sells {what} for {p}{each}.", what=what, p=s.money(p) if p > 1 else "$1",
              each=each)
        s.say("{he} earns {t}.", t=text)
        return s.set("money", c)

    def profit(s):
        if s.value < 10:
            return False
        k = s.rng.randint(2, s.value // 2)
        text, c = s.calc(s.value, "-", k, money=True)
        s.ask("the ingredients cost {him} {k}.", k=s.money(k))
        s.say("{his} profit is {t}.", t=text)
        return s.set("profit", c)

    return Family("baking", start,
                  {"batches": (per_batch, flour), "flour": (flour_left,),
                   "items": (eat, gift, boxes, sell), "boxes": (give_boxes, sell),
                   "money": (profit,)},
                  {"items": "How many {baked} does {name} end up with?",
                   "flour": "How many grams of flour does {name} use?",
                   "flour_left": "How many grams of flour does {he} have left?",
                   "boxes": "How many boxes of {baked} does {he} end up with?",
                   "money": "How many dollars does {he} earn?",
                   "profit": "How many dollars of profit does {name} make?"})


def _farm() -> Family:
    birds = (("hens", "hen"), ("ducks", "duck"), ("chickens", "chicken"))
    uses = ("for baking", "for breakfast", "to give to {his} neighbours")

    def start(s):
        h = s.rng.randint(3, 20)
        plural, single = s.pick(birds)
        s.v.update(birds=plural, bird=single, period=s.pick(("day", "week")))
        s.ask("{name} has {h} {birds}.", h=s.n(h, dozen=True))
        s.set("birds", h)

    def buy(s):
        k = s.rng.randint(2, 10)
        text, c = s.calc(s.value, "+", k)
        s.ask("{when}{he} buys {k} more {birds}.", k=s.n(k),
              when="" if s.once("buy") else "a month later, ")
        s.say("Now {he} has {t} {birds}.", t=text)
        return s.set("birds", c)

    def lay(s):
        k = s.rng.randint(1, 2) if s.v["period"] == "day" else s.rng.randint(3, 7)
        text, c = s.calc(s.value, "*", k)
        s.ask("each {bird} lays {k} {eggs} a {period}.", k=s.n(k) if k > 1 else "one",
              eggs="eggs" if k > 1 else "egg")
        s.say("The {birds} lay {t} eggs a {period}.", t=text)
        return s.set("eggs", c)

    def use(s):
        left = [u for u in uses if u not in s.used]
        if s.value < 6 or not left:
            return False
        u = s.pick(left)
        s.used.add(u)
        k = s.rng.randint(2, s.value - 3)
        text, c = s.calc(s.value, "-", k)
        s.ask("{he} uses {k} eggs a {period} " + u + ".", k=s.n(k))
        s.say("That leaves {t} eggs a {period}.", t=text)
        return s.set("spare", c)

    def pack(s):
        ks = [k for k in (4, 5, 6, 8, 10, 12) if s.value % k == 0 and s.value // k >= 2]
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        if k == 12 and s.rng.random() < 0.5:
            s.v.update(pack="dozen", pack_q="How many dozen eggs does {he} sell a {period}?")
            s.ask("{he} sells the eggs by the dozen.")
            s.say("{he} sells {t} dozen eggs.", t=text)
        else:
            s.v.update(pack="carton", pack_q="How many cartons does {he} fill a {period}?")
            s.ask("{he} packs the eggs into cartons of {k}.", k=s.n(k))
            s.say("{he} fills {t} cartons.", t=text)
        s.v["pack_q"] = s.v["pack_q"].format(**s.v)
        return s.set("packs", c)

    def sell(s):
        p = s.rng.randint(2, 6)
        text, c = s.calc(s.value, "*", p, money=True)
        s.ask("{he} sells each {pack} for {p}.", p=s.money(p))
        s.say("{he} makes {t} a {period}.", t=text)
        return s.set("money", c)

    def longer(s):
        if s.v["period"] == "day":
            text, c = s.calc(s.value, "*", 7, money=s.kind == "money")
            s.v["span"] = "in a week"
            s.say("In a week that is {t}.", t=text)
        else:
            k = s.rng.randint(2, 8)
            text, c = s.calc(s.value, "*", k, money=s.kind == "money")
            s.v["span"] = f"in {s.n(k)} weeks"
            s.say("In {k} weeks that is {t}.", k=k, t=text)
        return s.set(s.kind + "_long", c)

    return Family("farm", start,
                  {"birds": (buy, lay), "eggs": (use, pack, longer), "spare": (use, pack),
                   "packs": (sell,), "money": (longer,)},
                  {"birds": "How many {birds} does {name} have now?",
                   "eggs": "How many eggs do the {birds} lay a {period}?",
                   "eggs_long": "How many eggs do the {birds} lay {span}?",
                   "spare": "How many eggs does {he} have left a {period}?",
                   "packs": "{pack_q}",
                   "money": "How many dollars does {he} make a {period}?",
                   "money_long": "How many dollars does {he} make {span}?"})


def _tank() -> Family:
    tanks = ("water tank", "fish tank", "rain barrel", "garden pond", "paddling pool")
    parts = {(3, 4): "three quarters", (2, 3): "two thirds", (3, 5): "three fifths",
             (4, 5): "four fifths"}

    def start(s):
        t = s.pick(range(40, 401, 20))
        s.v.update(tank=s.pick(tanks), cap=t)
        s.ask("{name}'s {tank} holds {t} litres.", t=s.n(t))
        s.set("cap", t)

    def fraction_full(s):
        got = _share(s, _FRACTIONS)
        if not got:
            return False
        text, c = s.calc(s.value, "/", got[0])
        s.ask("it is {f} full.", f=got[1])
        s.say("It has {t} litres in it.", t=text)
        return s.set("water", c)

    def fractions_full(s):
        fits = [(a, b) for a, b in parts if s.value % b == 0]
        if not fits:
            return False
        a, b = s.pick(fits)
        t1, one = s.calc(s.value, "/", b)
        t2, c = s.calc(one, "*", a)
        s.ask("it is {f} full.", f=parts[a, b])
        s.say("{f} of the {tank} is {t} litres.", f=_FRACTIONS[b], t=t1)
        s.say("{f} is {t} litres.", f=parts[a, b], t=t2)
        return s.set("water", c)

    def pour(s):
        room = s.v["cap"] - s.value
        if room < 4:
            return False
        k = s.rng.randint(2, room - 1)
        text, c = s.calc(s.value, "+", k)
        s.ask("{when}{name} pours in {k} more litres.", k=s.n(k),
              when="" if s.once("pour") else "later, ")
        s.say("Now it has {t} litres.", t=text)
        return s.set("water", c)

    def use(s):
        if s.value < 6:
            return False
        k = s.rng.randint(2, s.value - 3)
        text, c = s.calc(s.value, "-", k)
        s.ask("{he} uses {k} litres to {job}.", k=s.n(k),
              job="water the plants" if s.once("use") else "wash the car")
        s.say("{t} litres are left.", t=text)
        return s.set("water", c)

    def room(s):
        if s.value >= s.v["cap"]:
            return False
        text, c = s.calc(s.v["cap"], "-", s.value)
        s.say("It needs {t} more litres to be full.", t=text)
        return s.set("room", c)

    def hose(s):
        rs = _divisors(s.value, 2, 40)
        if not rs:
            return False
        r = s.pick(rs)
        text, c = s.calc(s.value, "/", r)
        if s.kind == "cap":
            s.ask("it is empty, and {he} fills it with a hose that pours {r} litres a minute.",
                  r=s.n(r))
        else:
            s.ask("{he} tops it up with a hose that pours {r} litres a minute.", r=s.n(r))
        s.say("Filling it takes {t} minutes.", t=text)
        return s.set("minutes", c)

    def bottles(s):
        ks = _divisors(s.value, 2, 10)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{he} pours all the water into bottles that hold {k} litres each.", k=s.n(k))
        s.say("{he} fills {t} bottles.", t=text)
        return s.set("bottles", c)

    return Family("tank", start,
                  {"cap": (fraction_full, fractions_full, hose),
                   "water": (pour, use, room, bottles), "room": (hose,)},
                  {"water": "How many litres of water are in the {tank} now?",
                   "room": "How many more litres does the {tank} need to be full?",
                   "minutes": "How many minutes does it take to fill the {tank}?",
                   "bottles": "How many bottles does {he} fill?"})


def _wages() -> Family:
    jobs = ("babysitting", "walking dogs", "mowing lawns", "tutoring", "washing cars",
            "at a bakery")
    things = ("a book", "a concert ticket", "new shoes", "a video game", "a gift for {his} mother")
    goals = ("bike", "tablet", "guitar", "camera", "skateboard")

    def start(s):
        w = s.rng.randint(8, 25)
        s.v["weekly"] = True
        s.ask("{name} earns {w} an hour {job}.", w=s.money(w), job=s.pick(jobs))
        s.set("wage", w)

    def hours(s):
        h = s.rng.randint(2, 30)
        text, c = s.calc(s.value, "*", h, money=True)
        s.ask("this week {he} works {h} hours.", h=s.n(h))
        s.say("{he} earns {t} this week.", t=text)
        return s.set("pay", c)

    def tips(s):
        if not s.once("tips"):
            return False
        k = s.rng.randint(5, 40)
        text, c = s.calc(s.value, "+", k, money=True)
        s.ask("{he} also gets {k} in tips.", k=s.money(k))
        s.say("With tips, {he} has {t}.", t=text)
        return s.set("pay", c)

    def bonus(s):
        got = _share(s, {k: p for k, p in _PERCENTS.items() if k >= 4})
        if not got or not s.once("bonus"):
            return False
        k, p = got
        t1, b = s.calc(s.value, "/", k, money=True)
        t2, c = s.calc(s.value, "+", b, money=True)
        s.ask("{his} boss adds a {p} bonus.", p=s.pct(p))
        s.say("The bonus is {t}.", t=t1)
        s.say("{he} gets {t} in all.", t=t2)
        return s.set("pay", c)

    def weeks(s):
        if not s.once("weeks"):
            return False
        k = s.rng.randint(2, 8)
        text, c = s.calc(s.value, "*", k, money=True)
        s.ask("{he} earns the same every week for {k} weeks.", k=s.n(k))
        s.say("In {k} weeks {he} earns {t}.", k=k, t=text)
        s.v["weekly"] = False
        return s.set("pay", c)

    def spend(s):
        left = [t for t in things if t not in s.used]
        if s.value < 6 or not left:
            return False
        thing = s.pick(left)
        s.used.add(thing)
        k = s.rng.randint(2, min(s.value - 2, 150))  # a ticket, not most of a month's pay
        text, c = s.calc(s.value, "-", k, money=True)
        s.ask("{he} spends {k} on " + thing + ".", k=s.money(k))
        s.say("{he} has {t} left.", t=text)
        return s.set("left", c)

    def save(s):
        got = _fraction_or_percent(s)
        if not got:
            return False
        text, c = s.calc(s.value, "/", got[0], money=True)
        of = "of {his} earnings" if s.kind == "pay" else "of what is left"
        s.ask("{he} saves {f} " + of + ".", f=got[1])
        s.say("{he} saves {t}.", t=text)
        return s.set("saved", c)

    def goal(s):
        if not s.v["weekly"] or s.value == 0:
            return False
        m = s.rng.randint(2, 12)
        price = s.value * m
        text, c = s.calc(price, "/", s.value)
        s.v["goal"] = s.pick(goals)
        s.ask("{he} wants a {goal} that costs {p}.", p=s.money(price))
        s.say("{he} needs {t} weeks to save enough.", t=text)
        return s.set("goal", c)

    return Family("wages", start,
                  {"wage": (hours,), "pay": (tips, bonus, weeks, spend, save),
                   "left": (spend, save), "saved": (goal,)},
                  {"pay": "How many dollars does {name} earn?",
                   "left": "How many dollars does {he} have left?",
                   "saved": "How many dollars does {he} save?",
                   "goal": "If {he} saves the same amount every week, how many weeks does {he} "
                           "need to save for the {goal}?"})


def _school() -> Family:
    acts = (("ride the bus to school", "walk to school"),
            ("bring lunch from home", "buy lunch at school"),
            ("play a sport", "do not play a sport"), ("sing in the choir", "play in the band"))
    supplies = ("pencils", "notebooks", "markers", "erasers", "glue sticks")
    kits = ("footballs", "maps", "science kits", "tablets", "jump ropes")

    def start(s):
        n = 20 * s.rng.randint(2, 30)
        a, b = s.pick(acts)
        s.v.update(act=a, act2=b, supply=s.pick(supplies), kit=s.pick(kits), who="the students")
        s.ask("{name}'s school has {n} students.", n=s.n(n))
        s.set("students", n)

    def join(s):
        k = s.rng.randint(2, 30)
        if s.rng.random() < 0.5 or s.value < 2 * k:
            text, c = s.calc(s.value, "+", k)
            s.ask("{k} new students join{when}.", k=s.n(k),
                  when="" if s.once("join") else " later in the year")
        else:
            text, c = s.calc(s.value, "-", k)
            s.ask("{k} students move away{when}.", k=s.n(k),
                  when="" if s.once("leave") else " later in the year")
        s.say("Now there are {t} students.", t=text)
        return s.set("students", c)

    def group(s):
        got = _fraction_or_percent(s)
        if not got:
            return False
        text, c = s.calc(s.value, "/", got[0])
        s.v["whole"] = s.value
        s.ask("{f} of them {act}.", f=got[1])
        s.say("{t} students {act}.", t=text)
        s.v["who"] = "the students who {act}".format(**s.v)
        return s.set("group", c)

    def rest(s):
        text, c = s.calc(s.v["whole"], "-", s.value)
        s.ask("the rest {act2}.")
        s.say("{t} students {act2}.", t=text)
        s.v["who"] = "the students who {act2}".format(**s.v)
        return s.set("rest", c)

    def teams(s):
        ks = _divisors(s.value, 2, 12)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{who} are split into groups of {k}.", k=s.n(k))
        s.say("That makes {t} groups.", t=text)
        return s.set("teams", c)

    def kit(s):
        k = s.rng.randint(2, 5)
        text, c = s.calc(s.value, "*", k)
        s.ask("each group gets {k} {kit}.", k=s.n(k))
        s.say("They need {t} {kit}.", t=text)
        return s.set("kits", c)

    def need(s):
        k = s.rng.randint(2, 6)
        text, c = s.calc(s.value, "*", k)
        s.ask("each of {who} needs {k} {supply}.", k=s.n(k))
        s.say("They need {t} {supply}.", t=text)
        return s.set("supplies", c)

    def spare(s):
        # a number of spares that makes the total a multiple of 5, so packs of 5, 10, ... fit
        k = s.pick([k for k in range(2, 21) if (s.value + k) % 5 == 0])
        text, c = s.calc(s.value, "+", k)
        if s.once("spare"):
            s.ask("the teacher also wants {k} spare {supply}.", k=s.n(k))
        else:
            s.ask("the library needs {k} {supply} too.", k=s.n(k))
        s.say("That makes {t} {supply}.", t=text)
        return s.set("supplies", c)

    def packs(s):
        ks = _divisors(s.value, 5, 24)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{supply} come in packs of {k}.", k=s.n(k, dozen=True))
        s.say("The school buys {t} packs.", t=text)
        return s.set("packs", c)

    def cost(s):
        p = s.rng.randint(2, 12)
        text, c = s.calc(s.value, "*", p, money=True)
        s.ask("each pack costs {p}.", p=s.money(p))
        s.say("The packs cost {t}.", t=text)
        return s.set("cost", c)

    def buses(s):
        ks = _divisors(s.value, 20, 60)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{who} go on a trip in buses that hold {k} students each.", k=s.n(k))
        s.say("They need {t} buses.", t=text)
        return s.set("buses", c)

    return Family("school", start,
                  {"students": (join, group, teams, need, buses),
                   "group": (rest, teams, need, buses),
                   "rest": (teams, need, buses), "teams": (kit,), "supplies": (spare, packs),
                   "packs": (cost,)},
                  {"students": "How many students does the school have now?",
                   "group": "How many students {act}?", "rest": "How many students {act2}?",
                   "teams": "How many groups are there?", "kits": "How many {kit} are needed?",
                   "supplies": "How many {supply} are needed?",
                   "packs": "How many packs does the school buy?",
                   "cost": "How many dollars do the packs cost?",
                   "buses": "How many buses are needed?"})


def _practice() -> Family:
    acts = (("plays the piano", "the piano"), ("plays chess", "chess"), ("swims", "swimming"),
            ("jogs", "jogging"), ("paints", "painting"), ("plays the guitar", "the guitar"))
    others = ("homework", "yoga", "drawing", "gardening", "tennis")

    def start(s):
        does, act = s.pick(acts)
        m = s.pick(range(10, 91, 5))
        s.v.update(does=does, act=act, on_what=act)
        s.ask("{name} {does} for {m} minutes a day.", m=s.n(m))
        s.set("day", m)

    def longer(s):
        if not s.once("longer"):
            return False
        k = s.pick(range(5, 31, 5))
        text, c = s.calc(s.value, "+", k)
        s.ask("this month {he} adds {k} minutes to each session.", k=s.n(k))
        s.say("{he} now {does} for {t} minutes a day.", t=text)
        return s.set("day", c)

    def double(s):
        if not s.once("double"):
            return False
        text, c = s.calc(s.value, "*", 2)
        s.ask("before a contest {he} doubles {his} daily time.")
        s.say("{he} now {does} for {t} minutes a day.", t=text)
        return s.set("day", c)

    def days(s):
        k = s.rng.randint(3, 6)
        text, c = s.calc(s.value, "*", k)
        s.ask("{he} does this {k} days a week.", k=s.n(k))
        s.say("{he} spends {t} minutes a week on {act}.", t=text)
        return s.set("week", c)

    def other(s):
        if not s.once("other"):
            return False
        o = s.pick(others)
        k = s.pick(range(20, 181, 10))
        text, c = s.calc(s.value, "+", k)
        s.ask("{he} also spends {k} minutes a week on {o}.", k=s.n(k), o=o)
        s.say("Together that is {t} minutes a week.", t=text)
        s.v["on_what"] = f"{s.v['act']} and {o} together"
        return s.set("week", c)

    def extra(s):
        if not s.once("extra"):
            return False
        k = s.pick(range(10, 61, 5))
        text, c = s.calc(s.value, "+", k)
        s.ask("on Sundays {he} adds an extra {k} minutes.", k=s.n(k))
        s.say("That makes {t} minutes a week.", t=text)
        return s.set("week", c)

    def missed(s):
        if s.value < 60 or not s.once("missed"):
            return False
        k = s.pick(range(20, min(120, s.value // 2) + 1, 5))
        text, c = s.calc(s.value, "-", k)
        s.ask("during those weeks {he} misses {k} minutes because of a cold.", k=s.n(k))
        s.say("That leaves {t} minutes.", t=text)
        return s.set("weeks", c)

    def hours(s):
        if s.value % 60:
            return False
        text, c = s.calc(s.value, "/", 60)
        s.say("That is {t} hours.", t=text)
        return s.set(s.kind + "_hours", c)

    def weeks(s):
        k = s.rng.randint(2, 10)
        text, c = s.calc(s.value, "*", k)
        s.v["weeks"] = s.n(k)
        s.ask("{he} keeps this up for {k} weeks.", k=s.v["weeks"])
        s.say("In {k} weeks that is {t} minutes.", k=k, t=text)
        return s.set("weeks", c)

    return Family("practice", start,
                  {"day": (longer, double, days), "week": (extra, other, hours, weeks),
                   "weeks": (missed, hours)},
                  {"day": "How many minutes a day does {name} spend on {act} now?",
                   "week": "How many minutes a week does {he} spend on {on_what}?",
                   "week_hours": "How many hours a week does {he} spend on {on_what}?",
                   "weeks": "How many minutes does {he} spend on {on_what} in {weeks} weeks?",
                   "weeks_hours": "How many hours does {he} spend on {on_what} in {weeks} weeks?"})


def _coins() -> Family:
    coins = {"quarters": ("quarter", 25), "dimes": ("dime", 10), "nickels": ("nickel", 5)}
    buys = ("a pencil", "a sticker", "an apple", "a bookmark", "a lollipop")
    treats = ("gumballs", "stickers", "marbles", "erasers")

    def start(s):
        coin = s.pick(coins)
        s.used.add(coin)
        q = s.rng.randint(3, 20)
        s.v["coin"] = coin
        s.ask("{name} has {q} {coin}.", q=s.n(q, dozen=True))
        s.set("coins", q)

    def worth(s):
        single, cents = coins[s.v["coin"]]
        text, c = s.calc(s.value, "*", cents)
        s.ask("a {single} is worth {c} cents.", single=single, c=cents)
        s.say("{his} {coin} are worth {t} cents.", t=text)
        return s.set("cents", c)

    def more_coins(s):
        left = [c for c in coins if c not in s.used]
        if not left:
            return False
        coin = s.pick(left)
        s.used.add(coin)
        single, cents = coins[coin]
        k = s.rng.randint(2, 15)
        t1, x = s.calc(k, "*", cents)
        t2, c = s.calc(s.value, "+", x)
        s.ask("{he} also has {k} {other}, worth {c} cents each.", k=s.n(k), other=coin, c=cents)
        s.say("The {other} are worth {t} cents.", other=coin, t=t1)
        s.say("{he} has {t} cents in all.", t=t2)
        return s.set("cents", c)

    def pennies(s):
        if not s.once("pennies"):
            return False
        k = s.rng.randint(2, 19)
        text, c = s.calc(s.value, "+", k)
        s.ask("{he} finds {k} pennies, worth one cent each.", k=s.n(k))
        s.say("Now {he} has {t} cents.", t=text)
        return s.set("cents", c)

    def spend(s):
        left = [b for b in buys if b not in s.used]
        if s.value < 10 or not left:
            return False
        item = s.pick(left)
        s.used.add(item)
        k = s.rng.randint(2, min(95, s.value - 5))
        text, c = s.calc(s.value, "-", k)
        s.ask("{he} spends {k} cents on {item}.", k=s.n(k), item=item)
        s.say("{he} has {t} cents left.", t=text)
        return s.set("left", c)

    def buy(s):
        ps = _divisors(s.value, 5, 50)
        if not ps:
            return False
        p = s.pick(ps)
        s.v["treat"] = s.pick(treats)
        text, c = s.calc(s.value, "/", p)
        s.ask("{treat} cost {p} cents each.", p=s.n(p))
        s.say("{he} can buy {t} {treat}.", t=text)
        return s.set("treats", c)

    return Family("coins", start,
                  {"coins": (worth,), "cents": (more_coins, pennies, spend, buy),
                   "left": (spend, buy)},
                  {"cents": "How many cents does {name} have?",
                   "left": "How many cents does {he} have left?",
                   "treats": "How many {treat} can {he} buy with all of it?"})


def _harvest() -> Family:
    fruit = (("apple", "apples"), ("pear", "pears"), ("orange", "oranges"), ("plum", "plums"),
             ("peach", "peaches"), ("lemon", "lemons"))

    def start(s):
        one, many = s.pick(fruit)
        t = s.rng.randint(3, 25)
        s.v.update(tree=one, fruits=many)
        s.ask("{name} has {t} {tree} trees.", t=s.n(t, dozen=True))
        s.set("trees", t)

    def per_tree(s):
        k = s.rng.randint(5, 40)
        text, c = s.calc(s.value, "*", k)
        s.ask("each tree gives {k} kg of {fruits}.", k=s.n(k))
        s.say("{he} picks {t} kg of {fruits}.", t=text)
        return s.set("kg", c)

    def gift(s):
        k = s.rng.randint(3, 50)
        text, c = s.calc(s.value, "+", k)
        s.ask("{who} gives {him} {k} kg more.", k=s.n(k),
              who="{his} neighbour".format(**s.v) if s.once("gift") else "a friend")
        s.say("Now {he} has {t} kg.", t=text)
        return s.set("kg", c)

    def keep(s):
        if s.value < 8:
            return False
        k = s.rng.randint(2, s.value // 2)
        text, c = s.calc(s.value, "-", k)
        if s.once("keep"):
            s.ask("{he} keeps {k} kg for {his} family.", k=s.n(k))
        else:
            s.ask("{he} throws away {k} kg that went bad.", k=s.n(k))
        s.say("{he} has {t} kg left.", t=text)
        return s.set("kg", c)

    def bags(s):
        ks = _divisors(s.value, 2, 25)
        if not ks:
            return False
        k = s.pick(ks)
        text, c = s.calc(s.value, "/", k)
        s.ask("{he} packs them into bags of {k} kg.", k=s.n(k))
        s.say("{he} fills {t} bags.", t=text)
        return s.set("bags", c)

    def give_bags(s):
        if s.value < 3:
            return False
        k = s.rng.randint(1, s.value - 2)
        text, c = s.calc(s.value, "-", k)
        s.ask("{he} gives {k} {bag} to {his} {who}.", k=s.n(k), bag="bag" if k == 1 else "bags",
              who="friends" if s.once("give_bags") else "cousins")
        s.say("{he} has {t} bags left.", t=text)
        return s.set("bags", c)

    def sell(s):
        p = s.rng.randint(2, 15) if s.kind == "bags" else s.rng.randint(2, 6)
        text, c = s.calc(s.value, "*", p, money=True)
        per = "each bag for {p}" if s.kind == "bags" else "them for {p} per kg"
        s.ask("{he} sells " + per + ".", p=s.money(p))
        s.say("{he} makes {t}.", t=text)
        return s.set("money", c)

    def stall(s):
        if s.value < 10:
            return False
        k = s.rng.randint(2, min(60, s.value - 2))
        text, c = s.calc(s.value, "-", k, money=True)
        s.ask("{he} pays {k} to rent a stall at the market.", k=s.money(k))
        s.say("{he} keeps {t}.", t=text)
        return s.set("kept", c)

    return Family("harvest", start,
                  {"trees": (per_tree,), "kg": (gift, keep, bags, sell), "bags": (give_bags, sell),
                   "money": (stall,)},
                  {"kg": "How many kg of {fruits} does {name} end up with?",
                   "bags": "How many bags does {he} end up with?",
                   "money": "How many dollars does {he} make?",
                   "kept": "How many dollars does {he} have after paying for the stall?"})


FAMILIES: dict[str, Family] = {f.name: f for f in (
    _collections(), _shopping(), _travel(), _reading(), _baking(), _farm(), _tank(), _wages(),
    _school(), _practice(), _coins(), _harvest())}


# --------------------------------------------------------------------------- problems


def _walk(rng: random.Random, fam: Family, steps: int) -> Story | None:
    """A random walk of exactly ``steps`` steps through ``fam``, or None at a dead end."""
    s = Story(rng)
    s.cast()
    fam.start(s)
    while s.steps < steps:
        moves = [m for m in fam.moves.get(s.kind, ()) if s.runs.get(m.__name__, 0) < MAX_REPEAT]
        rng.shuffle(moves)
        for move in moves:
            snap = s.snapshot()
            try:
                ok = move(s)
            except _Redraw:
                ok = False
            if ok:
                if s.steps <= snap[5]:
                    raise AssertionError(f"{fam.name}.{move.__name__} added no step")
                s.runs[move.__name__] = s.runs.get(move.__name__, 0) + 1
                # a move may not overshoot, and may end in a final state only with the last step
                if s.steps == steps or (s.steps < steps and fam.moves.get(s.kind)):
                    break
            s.restore(snap)
        else:
            return None
    return s


def make_problem(rng: random.Random, steps: int, family: str | None = None) -> Problem:
    """One problem of exactly ``steps`` steps from ``family`` (default: a family drawn from rng).

    Its solution is checked with :func:`check_solution`, and the answer it yields must equal the
    value the story computed and the last annotation's value; a mismatch is a template bug and
    raises ``AssertionError``."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1..{MAX_STEPS}, not {steps}")
    fam = FAMILIES[family or rng.choice(list(FAMILIES))]
    # Retry the drawn family rather than draw another: a family whose long walks often dead-end
    # would otherwise be rare at high levels, and every level should mix all the families.
    for _ in range(500):
        s = _walk(rng, fam, steps)
        if s is None:
            continue
        question = " ".join(_cap(q) for q in s.question + [fam.questions[s.kind].format(**s.v)])
        solution = "\n".join(_cap(x) for x in s.solution) + f"\n#### {s.value}"
        answer = check_solution(solution)
        found = annotations(solution)
        if not (answer == s.value == int(found[-1][1]) and len(found) == steps):
            raise AssertionError(f"{fam.name}: the solution does not end in its story's value, "
                                 f"or has not {steps} steps:\n{solution}")
        return Problem(fam.name, steps, question, solution, answer)
    raise RuntimeError(f"no {steps}-step problem from family {fam.name!r} in 500 walks")


def generate(levels: list[int], n_train: int, n_test: int, seed: int = 0) -> pa.Table:
    """Train and test word problems in :data:`reasoning.SCHEMA`, equally many test rows per level.

    ``levels`` are step counts (``[1, 2, 3, 4, 5]``); a row's ``level`` is its index into
    ``levels`` and ``n_operands`` its step count. Test questions are distinct and never appear in
    the train split; train rows cycle through the levels. Deterministic for a seed. ``ValueError``
    for a step count outside 1..MAX_STEPS or when a level cannot supply enough distinct problems.
    """
    if not levels:
        raise ValueError("levels is empty: give step counts such as [1, 2, 3]")
    for steps in levels:
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"a level is a step count in 1..{MAX_STEPS}, not {steps!r}")
    rng = random.Random(seed)
    rows: list[dict] = []
    test_questions: set[str] = set()
    per_level = [n_test // len(levels) + (i < n_test % len(levels)) for i in range(len(levels))]
    for li, steps in enumerate(levels):
        made = tries = 0
        while made < per_level[li]:
            p = make_problem(rng, steps)
            tries += 1
            if tries > 20 * per_level[li] + 1000:
                raise ValueError(f"level {li} ({steps} steps) has too few distinct problems for "
                                 f"{per_level[li]} test rows (n_test={n_test})")
            if p.question in test_questions:
                continue
            test_questions.add(p.question)
            rows.append(_row(f"wp-test-{len(rows):06d}", "test", li, p))
            made += 1
    i = rejected = 0
    while i < n_train:
        li = i % len(levels)
        p = make_problem(rng, levels[li])
        if p.question in test_questions:
            rejected += 1
            if rejected > 20 * (i + 1000):  # the test split has taken (nearly) every problem
                raise ValueError(f"level {li} ({levels[li]} steps) has no problems left for "
                                 f"training after n_test={n_test}")
            continue
        rows.append(_row(f"wp-train-{i:07d}", "train", li, p))
        i += 1
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _row(id_: str, split: str, li: int, p: Problem) -> dict:
    return {
        "id": id_, "split": split, "level": li, "n_operands": p.steps, "n_digits": 0,
        "prompt": p.question, "solution": p.solution, "completion": p.solution, "style": "worked",
        "answer": str(p.answer), "source": SOURCE,
    }
