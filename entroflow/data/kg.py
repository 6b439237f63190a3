"""A synthetic knowledge graph whose derived facts are true by construction (protocol B6.1).

Why: unlearning and knowledge-probing experiments need facts with known logical structure. If
``born_in(P, C)`` and ``located_in(C, K)`` are trained, then ``citizen_of(P, K)`` is implied; an
unlearning method that removes a fact but leaves an alternative derivation in place has not
really removed it. The generator therefore samples *base* facts and closes them under a fixed set
of Horn rules, recording for every derived triple which rule produced it from which premises.

Entities (names are unique, capitalised single alphabetic words built from random syllables, e.g.
``Kaloru``; plain words so a word-level or BPE tokenizer keeps them whole or nearly so):
Person, City, Country, Organisation.

Base relations: ``born_in`` (Person->City), ``located_in`` (City->Country), ``works_at``
(Person->Organisation), ``headquartered_in`` (Organisation->City), ``married_to`` and ``twin_of``
(Person<->Person, symmetric), ``child_of`` (Person->Person). ``born_in``, ``located_in``,
``works_at`` and ``headquartered_in`` are functional (one object per subject).

Rules (:data:`RULES`), enforced so derived facts are true by construction:

* R1 ``citizen_of(P,K) <- born_in(P,C) & located_in(C,K)``
* R2 ``born_in(P,C) <- twin_of(P,Q) & born_in(Q,C)`` (twins share a birthplace: the second twin's
  birthplace is *only* derivable, never sampled)
* R3 ``works_in(P,C) <- works_at(P,O) & headquartered_in(O,C)``
* R4 ``r(P,Q) <- r(Q,P)`` for the symmetric relations ``married_to`` and ``twin_of`` (one
  direction is sampled as base, the other is derived)
* R5 ``parent_of(Q,P) <- child_of(P,Q)``

People live in three generations; spouses and twins share a generation, children are one
generation below their parents (so ``child_of`` is acyclic), twins have the same parents, and a
person is never married to their own twin.

Text: every triple is realised with every template of its relation (:data:`TEMPLATES`): five
statements (four ``train`` templates, one held-out ``paraphrase``) and two QA forms
``Q: ... ? A: {tail}`` (one ``train``, one ``paraphrase``). The object is always the last word
before the final ``.`` (or the whole answer after ``A:``), so every fact doubles as a completion
probe: ``prompt`` is the text before the answer. Tokens are separated by single spaces, as in the
grammar corpus. ``child_of``/``parent_of`` are not functional, so their questions can have two
correct answers; ``answer`` is the one this fact states.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict

import networkx as nx
import pyarrow as pa

ENTITY_TYPES = ("Person", "City", "Country", "Organisation")

ENTITIES_SCHEMA = pa.schema(
    [pa.field("entity", pa.string(), nullable=False), pa.field("type", pa.string(), nullable=False)],
    metadata={"schema_version": "1", "table": "kg_entities"},
)
TRIPLES_SCHEMA = pa.schema(
    [
        pa.field("triple_id", pa.string(), nullable=False),
        pa.field("head", pa.string(), nullable=False),
        pa.field("relation", pa.string(), nullable=False),
        pa.field("tail", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # base | derived
        pa.field("rule", pa.string(), nullable=False),  # R1..R5 for derived, "" for base
        pa.field("premises", pa.list_(pa.string()), nullable=False),  # triple_ids, [] for base
    ],
    metadata={"schema_version": "1", "table": "kg_triples"},
)
FACTS_SCHEMA = pa.schema(
    [
        pa.field("fact_id", pa.string(), nullable=False),
        pa.field("triple_id", pa.string(), nullable=False),
        pa.field("template_id", pa.string(), nullable=False),
        pa.field("template_split", pa.string(), nullable=False),  # train | paraphrase
        pa.field("style", pa.string(), nullable=False),  # statement | qa
        pa.field("text", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),  # text before the answer
        pa.field("answer", pa.string(), nullable=False),  # the triple's tail
    ],
    metadata={"schema_version": "1", "table": "kg_facts"},
)
SCHEMAS = {"entities": ENTITIES_SCHEMA, "triples": TRIPLES_SCHEMA, "facts": FACTS_SCHEMA}

# relation -> (head type, tail type, functional, symmetric, base relation)
RELATIONS: dict[str, tuple[str, str, bool, bool, bool]] = {
    "born_in": ("Person", "City", True, False, True),
    "located_in": ("City", "Country", True, False, True),
    "works_at": ("Person", "Organisation", True, False, True),
    "headquartered_in": ("Organisation", "City", True, False, True),
    "married_to": ("Person", "Person", True, True, True),
    "twin_of": ("Person", "Person", True, True, True),
    "child_of": ("Person", "Person", False, False, True),
    "citizen_of": ("Person", "Country", True, False, False),
    "works_in": ("Person", "City", True, False, False),
    "parent_of": ("Person", "Person", False, False, False),
}
SYMMETRIC = tuple(r for r, spec in RELATIONS.items() if spec[3])

RULES: dict[str, str] = {
    "R1": "citizen_of(P,K) <- born_in(P,C) & located_in(C,K)",
    "R2": "born_in(P,C) <- twin_of(P,Q) & born_in(Q,C)",
    "R3": "works_in(P,C) <- works_at(P,O) & headquartered_in(O,C)",
    "R4": "r(P,Q) <- r(Q,P) for r in married_to, twin_of",
    "R5": "parent_of(Q,P) <- child_of(P,Q)",
}

# relation -> statement templates (the last is the held-out paraphrase), QA templates (train, para)
_STATEMENTS: dict[str, list[str]] = {
    "born_in": ["{h} was born in {t} .", "{h} is a native of {t} .", "the birthplace of {h} is {t} .",
                "{h} came into the world in {t} .", "{h} first saw the light of day in {t} ."],
    "located_in": ["{h} is located in {t} .", "{h} is a city in {t} .", "{h} lies in {t} .",
                   "the country of {h} is {t} .", "{h} can be found within {t} ."],
    "works_at": ["{h} works at {t} .", "{h} is employed by {t} .", "the employer of {h} is {t} .",
                 "{h} has a job at {t} .", "{h} earns a living working for {t} ."],
    "headquartered_in": ["{h} is headquartered in {t} .", "{h} has its head office in {t} .",
                         "the headquarters of {h} are in {t} .", "{h} is based in {t} .",
                         "the main offices of {h} sit in {t} ."],
    "married_to": ["{h} is married to {t} .", "{h} is the spouse of {t} .", "the spouse of {h} is {t} .",
                   "{h} wed {t} .", "{h} shares a marriage with {t} ."],
    "twin_of": ["{h} is the twin of {t} .", "{h} has a twin named {t} .", "the twin of {h} is {t} .",
                "{h} was born a twin alongside {t} .", "{h} shares a birthday with their twin {t} ."],
    "child_of": ["{h} is a child of {t} .", "{h} is the offspring of {t} .", "one parent of {h} is {t} .",
                 "{h} was raised by {t} .", "{h} is descended directly from {t} ."],
    "citizen_of": ["{h} is a citizen of {t} .", "{h} holds citizenship of {t} .",
                   "the nationality of {h} is {t} .", "{h} is a national of {t} .",
                   "{h} carries a passport from {t} ."],
    "works_in": ["{h} works in {t} .", "{h} is employed in {t} .", "the workplace of {h} is in {t} .",
                 "{h} commutes to work in {t} .", "{h} spends working days in {t} ."],
    "parent_of": ["{h} is a parent of {t} .", "{h} raised {t} .", "one child of {h} is {t} .",
                  "{h} has a child named {t} .", "{h} brought up {t} ."],
}
_QUESTIONS: dict[str, list[str]] = {
    "born_in": ["where was {h} born", "in which city was {h} born"],
    "located_in": ["where is {h} located", "which country is {h} in"],
    "works_at": ["where does {h} work", "which organisation employs {h}"],
    "headquartered_in": ["where is {h} headquartered", "in which city is {h} based"],
    "married_to": ["who is {h} married to", "who is the spouse of {h}"],
    "twin_of": ["who is the twin of {h}", "whose twin is {h}"],
    "child_of": ["who is a parent of {h}", "who raised {h}"],
    "citizen_of": ["which country is {h} a citizen of", "what is the nationality of {h}"],
    "works_in": ["in which city does {h} work", "where is the workplace of {h}"],
    "parent_of": ["who is a child of {h}", "whom did {h} raise"],
}


def _build_templates() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for rel in RELATIONS:
        stmts, qs = _STATEMENTS[rel], _QUESTIONS[rel]
        rows = [
            {"template_id": f"{rel}_s{i}", "split": "paraphrase" if i == len(stmts) - 1 else "train",
             "style": "statement", "template": tpl}
            for i, tpl in enumerate(stmts)
        ]
        rows += [
            {"template_id": f"{rel}_q{i}", "split": "paraphrase" if i == len(qs) - 1 else "train",
             "style": "qa", "template": f"Q: {q} ? A: {{t}}"}
            for i, q in enumerate(qs)
        ]
        out[rel] = rows
    return out


# relation -> [{template_id, split, style, template}], template uses {h} and a final {t}
TEMPLATES: dict[str, list[dict[str, str]]] = _build_templates()
TEMPLATE_BY_ID: dict[str, str] = {tpl["template_id"]: tpl["template"]
                                  for tpls in TEMPLATES.values() for tpl in tpls}

_ONSETS = "bdfghklmnprstvz"
_VOWELS = "aeiou"
_CODAS = "nrsl"
NAME_RE = re.compile(r"^[A-Z][a-z]+$")


def make_names(rng: random.Random, n: int, taken: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct capitalised pseudo-names (2-3 CV syllables, sometimes a final consonant)
    that are not in ``taken``. Also used to mint unseen entities for OOD prompts."""
    names: list[str] = []
    seen = set(taken)
    tries = 0
    while len(names) < n:
        tries += 1
        if tries > 1000 * n + 1000:
            raise ValueError(f"could not find {n} unused names")
        syll = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))]
        name = "".join(syll) + (rng.choice(_CODAS) if rng.random() < 0.3 else "")
        name = name.capitalize()
        if name in seen:
            continue
        seen.add(name)
        names.append(name)
    return names


def render(template: str, head: str, tail: str) -> tuple[str, str]:
    """(full text, prompt = text before the tail) of one template; the tail is its last slot."""
    text = template.format(h=head, t=tail)
    return text, template.split("{t}")[0].format(h=head).rstrip()


def generate(n_persons: int = 120, n_cities: int = 30, n_countries: int = 8, n_orgs: int = 20,
             seed: int = 0) -> dict[str, pa.Table]:
    """Sample the base facts, close them under R1-R5 and realise every triple with every template.

    Returns ``{"entities", "triples", "facts"}`` tables (schemas :data:`SCHEMAS`). Deterministic
    in ``seed``; triple and fact ids are positional (``t000001``, ``f0000001``).
    """
    if min(n_persons, n_cities, n_countries, n_orgs) < 1:
        raise ValueError("every entity type needs at least one entity")
    if n_cities < n_countries:
        raise ValueError(f"n_cities={n_cities} < n_countries={n_countries}: some country would "
                         "have no city, and its citizens could not exist")
    rng = random.Random(seed)
    names = make_names(rng, n_persons + n_cities + n_countries + n_orgs)
    persons = names[:n_persons]
    cities = names[n_persons:n_persons + n_cities]
    countries = names[n_persons + n_cities:n_persons + n_cities + n_countries]
    orgs = names[n_persons + n_cities + n_countries:]
    entities = ([{"entity": p, "type": "Person"} for p in persons]
                + [{"entity": c, "type": "City"} for c in cities]
                + [{"entity": k, "type": "Country"} for k in countries]
                + [{"entity": o, "type": "Organisation"} for o in orgs])

    triples: list[dict] = []
    index: dict[tuple[str, str, str], str] = {}

    def add(h: str, rel: str, t: str, rule: str = "", premises: tuple[str, ...] = ()) -> str:
        tid = f"t{len(triples) + 1:06d}"
        triples.append({"triple_id": tid, "head": h, "relation": rel, "tail": t,
                        "kind": "derived" if rule else "base", "rule": rule,
                        "premises": list(premises)})
        index[(h, rel, t)] = tid
        return tid

    # Geography: every country gets at least one city, the rest are spread at random.
    city_country = {c: (countries[i] if i < n_countries else rng.choice(countries))
                    for i, c in enumerate(cities)}
    for c in cities:
        add(c, "located_in", city_country[c])
    org_city = {o: rng.choice(cities) for o in orgs}
    for o in orgs:
        add(o, "headquartered_in", org_city[o])

    # People: three generations; twins and spouses within a generation, children one below.
    generations = [persons[g * n_persons // 3:(g + 1) * n_persons // 3] for g in range(3)]
    twin_pairs: list[tuple[str, str]] = []  # (second twin, first twin)
    couples: list[list[tuple[str, str]]] = []
    for gen in generations:
        pool = gen[:]
        rng.shuffle(pool)
        n_twins = round(len(gen) * 0.05) if len(gen) >= 4 else 0
        twin_pairs += [(pool[2 * i + 1], pool[2 * i]) for i in range(n_twins)]
        pool = gen[:]
        rng.shuffle(pool)
        twin_of_person = {a: b for x, y in twin_pairs for a, b in ((x, y), (y, x))}
        gen_couples = []
        n_couples = int(0.2 * len(gen))
        while pool and len(gen_couples) < n_couples:
            a = pool.pop()
            partner = next((b for b in pool if twin_of_person.get(a) != b), None)
            if partner is None:
                break
            pool.remove(partner)
            gen_couples.append((a, partner))
        couples.append(gen_couples)

    first_twin = {second: first for second, first in twin_pairs}
    birthplace = {p: rng.choice(cities) for p in persons if p not in first_twin}
    for p in persons:
        if p in birthplace:
            add(p, "born_in", birthplace[p])
    employer = {p: rng.choice(orgs) for p in persons if rng.random() < 0.9}
    for p in persons:
        if p in employer:
            add(p, "works_at", employer[p])
    for gen_couples in couples:
        for a, b in gen_couples:
            add(a, "married_to", b)
    for second, first in twin_pairs:
        add(second, "twin_of", first)
    for g in (1, 2):
        # Twins form one family unit so that they get the same parents.
        units = [[s, f] for s, f in twin_pairs if s in generations[g]]
        in_unit = {p for u in units for p in u}
        units += [[p] for p in generations[g] if p not in in_unit]
        for unit in units:
            if rng.random() >= 0.85 or not generations[g - 1]:
                continue
            if couples[g - 1] and rng.random() < 0.7:
                parents = list(rng.choice(couples[g - 1]))
            else:
                parents = [rng.choice(generations[g - 1])]
            for child in unit:
                for parent in parents:
                    add(child, "child_of", parent)

    # Closure, in dependency order: R2 before R1 (citizenship needs every birthplace).
    for second, first in twin_pairs:
        c = birthplace[first]
        add(second, "born_in", c, "R2", (index[(second, "twin_of", first)], index[(first, "born_in", c)]))
    for t in [t for t in triples if t["relation"] in SYMMETRIC and t["kind"] == "base"]:
        add(t["tail"], t["relation"], t["head"], "R4", (t["triple_id"],))
    for t in [t for t in triples if t["relation"] == "child_of"]:
        add(t["tail"], "parent_of", t["head"], "R5", (t["triple_id"],))
    for p in persons:
        c = birthplace.get(p, birthplace.get(first_twin.get(p, "")))
        k = city_country[c]
        add(p, "citizen_of", k, "R1", (index[(p, "born_in", c)], index[(c, "located_in", k)]))
    for p in persons:
        if p in employer:
            o = employer[p]
            add(p, "works_in", org_city[o], "R3",
                (index[(p, "works_at", o)], index[(o, "headquartered_in", org_city[o])]))

    facts = []
    for t in triples:
        for tpl in TEMPLATES[t["relation"]]:
            text, prompt = render(tpl["template"], t["head"], t["tail"])
            facts.append({"fact_id": f"f{len(facts) + 1:07d}", "triple_id": t["triple_id"],
                          "template_id": tpl["template_id"], "template_split": tpl["split"],
                          "style": tpl["style"], "text": text, "prompt": prompt, "answer": t["tail"]})
    return {
        "entities": pa.Table.from_pylist(entities, schema=ENTITIES_SCHEMA),
        "triples": pa.Table.from_pylist(triples, schema=TRIPLES_SCHEMA),
        "facts": pa.Table.from_pylist(facts, schema=FACTS_SCHEMA),
    }


def apply_rule(rule: str, premises: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The conclusion ``(head, relation, tail)`` of ``rule`` on ordered premises, or None if the
    premises do not match the rule's body."""
    if rule == "R1" and len(premises) == 2:
        (p, r1, c), (c2, r2, k) = premises
        if r1 == "born_in" and r2 == "located_in" and c == c2:
            return (p, "citizen_of", k)
    elif rule == "R2" and len(premises) == 2:
        (p, r1, q), (q2, r2, c) = premises
        if r1 == "twin_of" and r2 == "born_in" and q == q2:
            return (p, "born_in", c)
    elif rule == "R3" and len(premises) == 2:
        (p, r1, o), (o2, r2, c) = premises
        if r1 == "works_at" and r2 == "headquartered_in" and o == o2:
            return (p, "works_in", c)
    elif rule == "R4" and len(premises) == 1:
        q, r, p = premises[0]
        if r in SYMMETRIC:
            return (p, r, q)
    elif rule == "R5" and len(premises) == 1:
        p, r, q = premises[0]
        if r == "child_of":
            return (q, "parent_of", p)
    return None


def closure(facts: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """All triples implied by ``facts`` under R1-R5 (fixpoint); the generator's own closure, public
    for the unlearning splits (which facts stay derivable once others are forgotten)."""
    return _closure(facts)


def _closure(facts: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """All triples implied by ``facts`` under R1-R5 (fixpoint)."""
    closed = set(facts)
    while True:
        by_rel: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for f in closed:
            by_rel[f[1]].append(f)
        located = {h: t for h, _, t in by_rel["located_in"]}
        hq = {h: t for h, _, t in by_rel["headquartered_in"]}
        born: dict[str, set[str]] = defaultdict(set)
        for h, _, t in by_rel["born_in"]:
            born[h].add(t)
        new = set()
        for p, _, c in by_rel["born_in"]:
            if c in located:
                new.add((p, "citizen_of", located[c]))
        for p, _, q in by_rel["twin_of"]:
            new |= {(p, "born_in", c) for c in born[q]}
        for p, _, o in by_rel["works_at"]:
            if o in hq:
                new.add((p, "works_in", hq[o]))
        for r in SYMMETRIC:
            new |= {(t, r, h) for h, _, t in by_rel[r]}
        new |= {(t, "parent_of", h) for h, _, t in by_rel["child_of"]}
        if new <= closed:
            return closed
        closed |= new


def check_rules(tables: dict[str, pa.Table]) -> list[str]:
    """Every way the tables break the world's invariants, as one line each (empty = consistent).

    Checks entity names and types, relation signatures, functional relations, derivations (each
    derived triple's rule applied to its premises gives exactly that triple, and derivations are
    well-founded), closure under R1-R5, the family constraints, and that every fact renders its
    triple with its template.
    """
    out: list[str] = []
    ents = tables["entities"].to_pylist()
    etype: dict[str, str] = {}
    for e in ents:
        if e["entity"] in etype:
            out.append(f"entity {e['entity']} listed twice")
        etype[e["entity"]] = e["type"]
        if e["type"] not in ENTITY_TYPES:
            out.append(f"entity {e['entity']} has unknown type {e['type']!r}")
        if not NAME_RE.match(e["entity"]):
            out.append(f"entity name {e['entity']!r} is not one capitalised alphabetic word")

    triples = tables["triples"].to_pylist()
    by_id: dict[str, dict] = {}
    spo: set[tuple[str, str, str]] = set()
    for t in triples:
        tid, key = t["triple_id"], (t["head"], t["relation"], t["tail"])
        if tid in by_id:
            out.append(f"triple id {tid} used twice")
        by_id[tid] = t
        if key in spo:
            out.append(f"triple {key} stored twice")
        spo.add(key)
        if t["relation"] not in RELATIONS:
            out.append(f"{tid}: unknown relation {t['relation']!r}")
            continue
        htype, ttype, _, _, is_base_rel = RELATIONS[t["relation"]]
        if etype.get(t["head"]) != htype or etype.get(t["tail"]) != ttype:
            out.append(f"{tid}: {key} does not match signature {htype}->{ttype}")
        if t["head"] == t["tail"]:
            out.append(f"{tid}: {key} relates an entity to itself")
        if t["kind"] == "base":
            if t["rule"] or t["premises"]:
                out.append(f"{tid}: base triple carries a derivation")
            if not is_base_rel:
                out.append(f"{tid}: {t['relation']} may only be derived")
        elif t["kind"] != "derived":
            out.append(f"{tid}: kind {t['kind']!r} is neither base nor derived")

    # Derivations: premises exist, the rule gives this triple, and no derivation is circular.
    for t in triples:
        if t["kind"] != "derived":
            continue
        missing = [p for p in t["premises"] if p not in by_id]
        if t["rule"] not in RULES:
            out.append(f"{t['triple_id']}: unknown rule {t['rule']!r}")
        elif missing:
            out.append(f"{t['triple_id']}: premises {missing} do not exist")
        else:
            prem = [(by_id[p]["head"], by_id[p]["relation"], by_id[p]["tail"]) for p in t["premises"]]
            concl = apply_rule(t["rule"], prem)
            if concl != (t["head"], t["relation"], t["tail"]):
                out.append(f"{t['triple_id']}: {t['rule']} on {prem} gives {concl}, not the triple")
    established = {t["triple_id"] for t in triples if t["kind"] == "base"}
    pending = [t for t in triples if t["kind"] == "derived"]
    while pending:
        ready = [t for t in pending if all(p in established for p in t["premises"])]
        if not ready:
            out += [f"{t['triple_id']}: derivation is circular or unsupported" for t in pending]
            break
        established |= {t["triple_id"] for t in ready}
        pending = [t for t in pending if t["triple_id"] not in established]

    for h, r, t in sorted(_closure(spo) - spo):
        out.append(f"missing implied triple ({h}, {r}, {t})")

    # Functional relations, and the total ones: everyone is born somewhere, every city and
    # organisation has a location.
    tails: dict[tuple[str, str], set[str]] = defaultdict(set)
    for h, r, t in spo:
        tails[(h, r)].add(t)
    for (h, r), ts in tails.items():
        if r in RELATIONS and RELATIONS[r][2] and len(ts) > 1:
            out.append(f"functional relation {r} has {len(ts)} objects for {h}")
    for rel, typ in (("born_in", "Person"), ("citizen_of", "Person"), ("located_in", "City"),
                     ("headquartered_in", "Organisation")):
        for e, ty in etype.items():
            if ty == typ and not tails.get((e, rel)):
                out.append(f"{typ} {e} has no {rel}")

    # Family: no one marries their twin, twins share parents, parenthood is acyclic.
    twins = {(h, t) for h, r, t in spo if r == "twin_of"}
    for h, r, t in spo:
        if r == "married_to" and (h, t) in twins:
            out.append(f"{h} is married to their twin {t}")
    for h, t in twins:
        if tails.get((h, "child_of"), set()) != tails.get((t, "child_of"), set()):
            out.append(f"twins {h} and {t} have different parents")
    family = nx.DiGraph((h, t) for h, r, t in spo if r == "child_of")
    if not nx.is_directed_acyclic_graph(family):
        out.append("child_of contains a cycle")

    # Facts: each one renders its own triple with a known template.
    templates = {tpl["template_id"]: (rel, tpl) for rel, tpls in TEMPLATES.items() for tpl in tpls}
    for f in tables["facts"].to_pylist():
        t = by_id.get(f["triple_id"])
        known = templates.get(f["template_id"])
        if t is None or known is None:
            out.append(f"{f['fact_id']}: unknown triple {f['triple_id']} or template {f['template_id']}")
            continue
        rel, tpl = known
        text, prompt = render(tpl["template"], t["head"], t["tail"])
        if (rel != t["relation"] or f["text"] != text or f["prompt"] != prompt
                or f["answer"] != t["tail"] or f["template_split"] != tpl["split"]
                or f["style"] != tpl["style"]):
            out.append(f"{f['fact_id']}: does not realise {t['triple_id']} with {f['template_id']}")
    return out


def to_graph(tables: dict[str, pa.Table]) -> nx.MultiDiGraph:
    """The triples as a networkx multigraph for path queries: nodes carry ``type``, edges are
    keyed by relation and carry ``triple_id`` and ``kind``."""
    g = nx.MultiDiGraph()
    for e in tables["entities"].to_pylist():
        g.add_node(e["entity"], type=e["type"])
    for t in tables["triples"].to_pylist():
        g.add_edge(t["head"], t["tail"], key=t["relation"], triple_id=t["triple_id"], kind=t["kind"])
    return g
