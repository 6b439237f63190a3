"""Out-of-distribution prompt suites at graded distances from the training data (protocol A3.2).

Why graded: an OOD score (Mahalanobis, KNN, entropy) is only informative if it grows with the
size of the shift. Each suite has a ``shift`` level: 0 = in-distribution control (held-out or
fresh samples of the training generators), 1 = near (same generator, one property changed),
2 = mid (a property the model never saw), 3 = far (no structure of the training data left). The
OOD rows are for evaluation only; nothing here may be used to fit or select a detector.

Suites (``suite``: shift, domain; what changes):

* ``id_reasoning`` (0, reasoning): fresh arithmetic prompts (``37+5-12:``) of the trained levels
  with the trained operators (``ops``: ``data.reasoning.ops``). They may repeat training prompts:
  the small levels have few distinct problems.
* ``near_reasoning`` (1, reasoning): one operand more than the largest trained operand count, or
  one digit more than the largest trained digit count; the other dimension stays in range.
* ``mid_reasoning`` (2, reasoning): trained operand/digit counts with the unseen operator ``*``
  (at least once, next to trained operators), alternating with operands three digits longer than any trained operand. A
  tokenizer trained only on the world's text has no ``*`` token and reads it as ``<unk>``.
* ``id_text`` (0, text): held-out grammar sentences (the corpus' ``test`` split).
* ``near_text`` (1, text): held-out grammar sentences with one or two content words replaced by
  words of another category (a noun where a verb belongs): familiar words, broken syntax. Every
  row is checked to be ungrammatical.
* ``id_kg`` (0, kg): knowledge-graph facts in training templates. The KG has no held-out facts,
  so this control is *trained* text; compare it with the KG suites below, not with ``id_text``.
* ``kg_paraphrase`` (1, kg): known facts in the held-out paraphrase templates (covariate shift).
* ``kg_unseen_entities`` (1, kg): training templates with the subject replaced by a newly minted
  entity name that the KG does not contain.
* ``kg_wrong_entity`` (1, kg): training templates with the object replaced by a wrong entity of
  the same type, so the statement is false (adversarial near-OOD).
* ``far_random`` (3, mixed): random strings over the character alphabet of the in-distribution
  suites, with lengths drawn from those suites' texts.
* ``far_shuffled`` (3, text or kg): tokens of held-out grammar sentences and KG facts in random
  order (never the original order); ``domain`` is that of the source sentence.

Suites whose input is missing are skipped: the text suites without ``grammar_table``, the KG
suites without ``kg_tables``, the reasoning suites without ``id_levels``. Every suite has its own
random stream (derived from ``seed`` and its name), so skipping one does not change the others.
"""
from __future__ import annotations

import random

import pyarrow as pa

from entroflow.data import grammar, kg
from entroflow.data.reasoning import Level, make_problem

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("suite", pa.string(), nullable=False),
        pa.field("shift", pa.int32(), nullable=False),  # 0 id | 1 near | 2 mid | 3 far
        pa.field("domain", pa.string(), nullable=False),  # reasoning | text | kg | mixed
        pa.field("text", pa.string(), nullable=False),
    ],
    metadata={"schema_version": "1", "table": "ood"},
)

# suite -> (shift, domain); far_shuffled rows carry their source's domain instead
SUITES: dict[str, tuple[int, str]] = {
    "id_reasoning": (0, "reasoning"),
    "near_reasoning": (1, "reasoning"),
    "mid_reasoning": (2, "reasoning"),
    "id_text": (0, "text"),
    "near_text": (1, "text"),
    "id_kg": (0, "kg"),
    "kg_paraphrase": (1, "kg"),
    "kg_unseen_entities": (1, "kg"),
    "kg_wrong_entity": (1, "kg"),
    "far_random": (3, "mixed"),
    "far_shuffled": (3, "text"),
}
ID_OPS = "+-"
LONG_OPERAND_EXTRA_DIGITS = 3  # "much longer" operands of mid_reasoning
# Categories whose words near_text may replace; function words stay so the frame looks familiar.
SWAPPABLE = ("noun_an", "noun_in", "adjective", "verb_transitive", "verb_intransitive", "adverb")


def generate(seed: int, n_per_suite: int, id_levels: list[Level], grammar_table: pa.Table | None,
             kg_tables: dict[str, pa.Table] | None, ops: str = ID_OPS) -> pa.Table:
    """``n_per_suite`` prompts for every suite whose inputs are given (fewer for ``id_text`` when
    the corpus has fewer held-out sentences). ``ops``: the operators the reasoning data was
    generated with (a model trained on ``+`` alone has never seen ``-``). Deterministic in ``seed``."""
    if not ops or set(ops) - set(ID_OPS):
        raise ValueError(f"ops: expected operators from {ID_OPS!r}, got {ops!r}")
    if n_per_suite < 0:
        raise ValueError(f"n_per_suite must be >= 0, got {n_per_suite}")
    suites: dict[str, list[tuple[str, str]]] = {}  # suite -> [(text, domain)]

    def rng_for(suite: str) -> random.Random:
        return random.Random(f"{seed}/{suite}")

    n = n_per_suite
    if id_levels:
        for suite, make in (("id_reasoning", _id_reasoning), ("near_reasoning", _near_reasoning),
                            ("mid_reasoning", _mid_reasoning)):
            suites[suite] = [(t, "reasoning") for t in make(rng_for(suite), n, id_levels, ops)]
    held_out: list[str] = []
    if grammar_table is not None:
        held_out = [r["text"] for r in grammar_table.select(["split", "text"]).to_pylist()
                    if r["split"] == "test"]
        rng = rng_for("id_text")
        suites["id_text"] = [(t, "text") for t in rng.sample(held_out, min(n, len(held_out)))]
        suites["near_text"] = [(t, "text") for t in _near_text(rng_for("near_text"), n, held_out)]
    kg_train_facts: list[dict] = []
    if kg_tables is not None:
        facts = kg_tables["facts"].to_pylist()
        kg_train_facts = [f for f in facts if f["template_split"] == "train"]
        rng = rng_for("id_kg")
        suites["id_kg"] = [(f["text"], "kg") for f in _draw(rng, kg_train_facts, n)]
        rng = rng_for("kg_paraphrase")
        para = [f for f in facts if f["template_split"] == "paraphrase"]
        suites["kg_paraphrase"] = [(f["text"], "kg") for f in _draw(rng, para, n)]
        for suite, make in (("kg_unseen_entities", _kg_unseen), ("kg_wrong_entity", _kg_wrong)):
            suites[suite] = [(t, "kg") for t in make(rng_for(suite), n, kg_tables, kg_train_facts)]
    id_texts = [t for s in ("id_reasoning", "id_text", "id_kg") for t, _ in suites.get(s, [])]
    if id_texts:
        far = _far_random(rng_for("far_random"), n, id_texts)
        suites["far_random"] = [(t, "mixed") for t in far]
    sources = [(t, "text") for t in held_out] + [(f["text"], "kg") for f in kg_train_facts]
    if sources:
        suites["far_shuffled"] = _far_shuffled(rng_for("far_shuffled"), n, sources)

    rows = []
    for suite, items in suites.items():
        shift = SUITES[suite][0]
        for i, (text, domain) in enumerate(items):
            rows.append({"id": f"ood-{suite}-{i:05d}", "suite": suite, "shift": shift,
                         "domain": domain, "text": text})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _draw(rng: random.Random, items: list, n: int) -> list:
    """n items, without replacement while there are enough, then cycling through a reshuffle."""
    if not items:
        return []
    out: list = []
    while len(out) < n:
        out += rng.sample(items, min(n - len(out), len(items)))
    return out


def _id_reasoning(rng: random.Random, n: int, levels: list[Level], ops: str) -> list[str]:
    return [make_problem(rng, levels[i % len(levels)], ops)[0] for i in range(n)]


def _near_reasoning(rng: random.Random, n: int, levels: list[Level], ops: str) -> list[str]:
    max_ops = max(lv.operands for lv in levels)
    max_digits = max(lv.digits for lv in levels)
    out = []
    for i in range(n):
        base = levels[i % len(levels)]
        # Alternate the dimension that leaves the trained range, keep the other one trained.
        if i % 2 == 0:
            level = Level(max_ops + 1, base.digits)
        else:
            level = Level(base.operands, max_digits + 1)
        out.append(make_problem(rng, level, ops)[0])
    return out


def _mid_reasoning(rng: random.Random, n: int, levels: list[Level], ops: str) -> list[str]:
    max_digits = max(lv.digits for lv in levels)
    out = []
    for i in range(n):
        base = levels[i % len(levels)]
        if i % 2 == 0:
            out.append(_prompt_with_operator(rng, base, "*", ops))
        else:
            level = Level(base.operands, max_digits + LONG_OPERAND_EXTRA_DIGITS)
            out.append(make_problem(rng, level, ops)[0])
    return out


def _prompt_with_operator(rng: random.Random, level: Level, new_op: str, ops: str) -> str:
    """A prompt of ``level`` in which ``new_op`` occurs at least once (only the prompt is needed,
    so there is no solution to keep non-negative)."""
    lo = 1 if level.digits == 1 else 10 ** (level.digits - 1)
    xs = [rng.randint(lo, 10**level.digits - 1) for _ in range(max(level.operands, 2))]
    chosen = [rng.choice(ops + new_op) for _ in xs[1:]]
    chosen[rng.randrange(len(chosen))] = new_op
    return str(xs[0]) + "".join(op + str(x) for op, x in zip(chosen, xs[1:])) + ":"


def _near_text(rng: random.Random, n: int, sentences: list[str]) -> list[str]:
    by_cat: dict[str, list[str]] = {}
    for w, c in grammar.WORD_CATEGORY.items():
        by_cat.setdefault(c, []).append(w)
    out: list[str] = []
    candidates = [s for s in sentences
                  if any(grammar.WORD_CATEGORY[w] in SWAPPABLE for w in s.split())]
    tries = 0
    while candidates and len(out) < n and tries < 100 * n:
        tries += 1
        words = rng.choice(candidates).split()
        positions = [i for i, w in enumerate(words) if grammar.WORD_CATEGORY[w] in SWAPPABLE]
        for pos in rng.sample(positions, min(len(positions), rng.choice((1, 2)))):
            own = grammar.WORD_CATEGORY[words[pos]]
            other = rng.choice([c for c in SWAPPABLE if c != own])
            words[pos] = rng.choice(by_cat[other])
        text = " ".join(words)
        if not grammar.is_grammatical(text):  # a swap can land on a legal word by chance
            out.append(text)
    return out


def _kg_unseen(rng: random.Random, n: int, kg_tables: dict[str, pa.Table],
               facts: list[dict]) -> list[str]:
    triples = {t["triple_id"]: t for t in kg_tables["triples"].to_pylist()}
    chosen = _draw(rng, facts, n)
    fresh = kg.make_names(rng, len(chosen), set(kg_tables["entities"].column("entity").to_pylist()))
    return [kg.render(kg.TEMPLATE_BY_ID[f["template_id"]], name, triples[f["triple_id"]]["tail"])[0]
            for f, name in zip(chosen, fresh)]


def _kg_wrong(rng: random.Random, n: int, kg_tables: dict[str, pa.Table],
              facts: list[dict]) -> list[str]:
    triples = {t["triple_id"]: t for t in kg_tables["triples"].to_pylist()}
    true_facts = {(t["head"], t["relation"], t["tail"]) for t in triples.values()}
    by_type: dict[str, list[str]] = {}
    for e in kg_tables["entities"].to_pylist():
        by_type.setdefault(e["type"], []).append(e["entity"])
    out: list[str] = []
    for f in _draw(rng, facts, n):
        t = triples[f["triple_id"]]
        # A wrong object must make the statement false: not the true tail, not another true tail
        # (a second parent), and not the head itself.
        wrong = [e for e in by_type[kg.RELATIONS[t["relation"]][1]]
                 if (t["head"], t["relation"], e) not in true_facts and e != t["head"]]
        if wrong:
            out.append(kg.render(kg.TEMPLATE_BY_ID[f["template_id"]], t["head"], rng.choice(wrong))[0])
    return out


def _far_random(rng: random.Random, n: int, id_texts: list[str]) -> list[str]:
    alphabet = sorted(set("".join(id_texts)))
    visible = [c for c in alphabet if c != " "]
    out = []
    for _ in range(n):
        length = len(rng.choice(id_texts))
        chars: list[str] = []
        for i in range(length):
            # No leading, trailing or doubled spaces: whitespace runs would only test the tokenizer.
            edge = i == 0 or i == length - 1 or chars[-1] == " "
            chars.append(rng.choice(visible if edge else alphabet))
        out.append("".join(chars))
    return out


def _far_shuffled(rng: random.Random, n: int,
                  sources: list[tuple[str, str]]) -> list[tuple[str, str]]:
    usable = [(t, d) for t, d in sources if len(set(t.split())) > 1]
    out = []
    for text, domain in _draw(rng, usable, n):
        words = text.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        out.append((" ".join(shuffled), domain))
    return out
