"""Tests of the synthetic world generators (grammar, knowledge graph, OOD suites) and the
real-dataset loaders. Sizes are small so the whole file runs in a few seconds."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from entroflow.data import grammar, kg, loaders, ood, reasoning
from entroflow.data.reasoning import Level

FIXTURES = Path(__file__).parent / "fixtures"
LEVELS = [Level(2, 1), Level(3, 2)]


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    return grammar.generate(400, seed=11, n_test=80)


@pytest.fixture(scope="module")
def world() -> dict[str, pa.Table]:
    return kg.generate(seed=5)


@pytest.fixture(scope="module")
def ood_table(corpus, world) -> pa.Table:
    return ood.generate(3, 30, LEVELS, corpus, world)


# --------------------------------------------------------------------------- grammar


def test_grammar_is_deterministic_in_seed():
    a = grammar.generate(150, seed=1, n_test=20)
    assert a.equals(grammar.generate(150, seed=1, n_test=20))
    assert not a.equals(grammar.generate(150, seed=2, n_test=20))


def test_grammar_schema_splits_and_format(corpus):
    assert corpus.schema.equals(grammar.SCHEMA)
    rows = corpus.to_pylist()
    train = [r["text"] for r in rows if r["split"] == "train"]
    test = [r["text"] for r in rows if r["split"] == "test"]
    assert (len(train), len(test)) == (400, 80)
    assert len(set(test)) == len(test) and not set(test) & set(train)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        words = r["text"].split(" ")
        assert r["text"].endswith(" .") and "" not in words
        assert all(w in grammar.WORD_CATEGORY for w in words)
        assert all(re.fullmatch(r"[a-z]+|[.,]", w) for w in words)
        assert r["n_words"] == len(words) == len(r["branch_entropy"]) <= 30
    mean_len = sum(r["n_words"] for r in rows) / len(rows)
    assert 7 <= mean_len <= 15


def test_grammar_vocabulary_size():
    words = [w for w in grammar.VOCABULARY if w not in ".,"]
    assert 60 <= len(words) <= 120


def test_grammar_entropy_has_forced_and_open_positions(corpus):
    flat = [e for ents in corpus.column("branch_entropy").to_pylist() for e in ents]
    assert any(e == 0.0 for e in flat)
    assert any(e > 1.5 for e in flat)
    for r in corpus.to_pylist():
        words, ents = r["text"].split(), r["branch_entropy"]
        # The first word picks one of four determiners uniformly.
        assert ents[0] == pytest.approx(math.log(4), abs=1e-6)
        for i, w in enumerate(words):
            # The second word of a collocation and a verb's particle are forced.
            if grammar.WORD_CATEGORY[w] in ("collocation", "particle"):
                assert ents[i] == 0.0, (r["text"], i)
            # After a determiner an adjective or any noun of the class may follow: high entropy.
            if i > 0 and grammar.WORD_CATEGORY[words[i - 1]] == "determiner":
                assert ents[i] > 1.5


def test_branch_entropy_matches_the_grammars_distributions(corpus):
    for r in corpus.slice(0, 60).to_pylist():
        dists = grammar.next_word_distributions(r["text"])
        recomputed = [-sum(p * math.log(p) for p in d.values()) if len(d) > 1 else 0.0 for d in dists]
        assert recomputed == pytest.approx(r["branch_entropy"], abs=1e-5)
        for d, w in zip(dists, r["text"].split()):
            assert d[w] > 0 and sum(d.values()) == pytest.approx(1.0)


def _agreement_errors(text: str) -> list[str]:
    words = text.split()
    errors = []
    number, noun_class = grammar.DETERMINERS[words[0]]
    first_verb = next(w for w in words if w in grammar.VERB_NUMBER)
    if grammar.VERB_NUMBER[first_verb] != number:
        errors.append(f"subject {words[0]} vs verb {first_verb}")
    noun = words[1] if grammar.WORD_CATEGORY[words[1]] != "adjective" else words[2]
    if grammar.WORD_CATEGORY[noun] != f"noun_{noun_class}":
        errors.append(f"determiner {words[0]} vs noun {noun}")
    if "," in words:
        pronoun, verb = words[words.index(",") + 2:words.index(",") + 4]
        if grammar.PRONOUNS[pronoun] != grammar.VERB_NUMBER[verb]:
            errors.append(f"pronoun {pronoun} vs verb {verb}")
    for i, w in enumerate(words[:-1]):
        if w in grammar.PREPOSITIONS and grammar.DETERMINERS[words[i + 1]][1] != grammar.PREPOSITIONS[w]:
            errors.append(f"preposition {w} vs determiner {words[i + 1]}")
    return errors


def test_every_sentence_obeys_agreement(corpus):
    texts = corpus.column("text").to_pylist()
    assert any("," in t for t in texts) and any(" vo " in t or " en " in t for t in texts)
    for text in texts:
        assert _agreement_errors(text) == [], text
        assert grammar.is_grammatical(text)


def test_grammar_rejects_wrong_agreement():
    assert grammar.is_grammatical("la brin greva ko tarn .")
    assert not grammar.is_grammatical("la brin grevu ko tarn .")  # plural verb, singular subject
    assert not grammar.is_grammatical("la tarn greva ko tarn .")  # animate det, inanimate noun
    assert not grammar.is_grammatical("la mael greva ko tarn .")  # collocation broken
    assert not grammar.is_grammatical("la brin greva ko tarn")  # no final "."


def test_sentence_entropy_stats(corpus):
    stats = grammar.sentence_entropy_stats(corpus)
    flat = [e for ents in corpus.column("branch_entropy").to_pylist() for e in ents]
    assert stats["mean_branch_entropy"] == pytest.approx(sum(flat) / len(flat), rel=1e-6)
    assert stats["zero_entropy_fraction"] == pytest.approx(sum(e == 0.0 for e in flat) / len(flat))
    assert 0 < stats["zero_entropy_fraction"] < 0.5
    assert 1.0 < stats["mean_branch_entropy"] < stats["max_branch_entropy"]
    assert all(isinstance(v, float) for v in stats.values())


# --------------------------------------------------------------------------- knowledge graph


def test_kg_is_deterministic_and_schemas_match(world):
    again = kg.generate(seed=5)
    other = kg.generate(seed=6)
    for name, schema in kg.SCHEMAS.items():
        assert world[name].schema.equals(schema)
        assert world[name].equals(again[name])
    assert not world["triples"].equals(other["triples"])


def test_kg_entities(world):
    ents = world["entities"].to_pylist()
    names = [e["entity"] for e in ents]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+", n) for n in names)
    counts = {t: sum(e["type"] == t for e in ents) for t in kg.ENTITY_TYPES}
    assert counts == {"Person": 120, "City": 30, "Country": 8, "Organisation": 20}


def test_kg_rules_hold_and_derivations_are_grounded(world):
    assert kg.check_rules(world) == []
    triples = world["triples"].to_pylist()
    ids = {t["triple_id"] for t in triples}
    derived = [t for t in triples if t["kind"] == "derived"]
    assert {t["rule"] for t in derived} == set(kg.RULES)
    for t in derived:
        assert t["premises"] and all(p in ids for p in t["premises"])
    for t in triples:
        if t["kind"] == "base":
            assert t["rule"] == "" and t["premises"] == []
    rels = {t["relation"] for t in triples}
    assert rels == set(kg.RELATIONS)


def test_kg_closure_facts_by_hand(world):
    triples = world["triples"].to_pylist()
    spo = {(t["head"], t["relation"], t["tail"]) for t in triples}
    born = {h: t for h, r, t in spo if r == "born_in"}
    located = {h: t for h, r, t in spo if r == "located_in"}
    persons = [e["entity"] for e in world["entities"].to_pylist() if e["type"] == "Person"]
    for p in persons:  # R1 for everyone
        assert (p, "citizen_of", located[born[p]]) in spo
    twins = [(h, t) for h, r, t in spo if r == "twin_of"]
    assert twins
    for a, b in twins:  # R2 and R4
        assert born[a] == born[b] and (b, "twin_of", a) in spo
    for h, r, t in spo:
        if r == "married_to":
            assert (t, "married_to", h) in spo
        if r == "child_of":
            assert (t, "parent_of", h) in spo


@pytest.mark.parametrize("n", [2, 5, 13])
def test_kg_small_worlds_are_consistent(n):
    assert kg.check_rules(kg.generate(n, 3, 2, 2, seed=n)) == []


def _with_rows(table: pa.Table, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_check_rules_detects_violations(world):
    triples = world["triples"].to_pylist()
    # Dropping an implied fact breaks the closure.
    i = next(i for i, t in enumerate(triples) if t["relation"] == "citizen_of")
    broken = dict(world, triples=_with_rows(world["triples"], triples[:i] + triples[i + 1:]))
    assert any("missing implied triple" in v for v in kg.check_rules(broken))
    # A derived birthplace that differs from the twin's contradicts R2 and functionality.
    j = next(i for i, t in enumerate(triples) if t["rule"] == "R2")
    cities = [e["entity"] for e in world["entities"].to_pylist() if e["type"] == "City"]
    wrong = [dict(t) for t in triples]
    wrong[j]["tail"] = next(c for c in cities if c != triples[j]["tail"])
    assert kg.check_rules(dict(world, triples=_with_rows(world["triples"], wrong)))
    # A premise id that does not exist.
    dangling = [dict(t) for t in triples]
    dangling[j]["premises"] = ["t999999"] + dangling[j]["premises"][1:]
    assert any("do not exist" in v for v in kg.check_rules(dict(world, triples=_with_rows(world["triples"], dangling))))
    # A fact whose text does not say its triple.
    facts = world["facts"].to_pylist()
    facts[0] = dict(facts[0], text=facts[0]["text"].replace(facts[0]["answer"], "Nowhere"))
    assert kg.check_rules(dict(world, facts=_with_rows(world["facts"], facts)))


def test_kg_templates_and_facts(world):
    for rel in kg.RELATIONS:
        tpls = kg.TEMPLATES[rel]
        assert sum(t["style"] == "statement" for t in tpls) >= 5
        assert sum(t["style"] == "qa" for t in tpls) >= 1
        assert 1 <= sum(t["split"] == "paraphrase" for t in tpls) <= 2
        assert sum(t["split"] == "train" and t["style"] == "statement" for t in tpls) >= 4
    facts = world["facts"].to_pylist()
    triples = world["triples"].to_pylist()
    assert len(facts) == sum(len(kg.TEMPLATES[t["relation"]]) for t in triples)
    assert {f["template_split"] for f in facts} == {"train", "paraphrase"}
    tails = {t["triple_id"]: t["tail"] for t in triples}
    for f in facts:
        assert f["answer"] == tails[f["triple_id"]]
        assert f["text"].startswith(f["prompt"]) and f["text"][len(f["prompt"]):].strip(" .") == f["answer"]
        if f["style"] == "qa":
            assert re.fullmatch(r"Q: [A-Za-z ]+ \? A: [A-Z][a-z]+", f["text"])
        else:
            assert re.fullmatch(r"[A-Za-z ]+ \.", f["text"])


def test_kg_graph(world):
    g = kg.to_graph(world)
    assert g.number_of_edges() == world["triples"].num_rows
    assert g.number_of_nodes() == world["entities"].num_rows


# --------------------------------------------------------------------------- OOD suites

EXPECTED_SHIFTS = {
    "id_reasoning": 0, "near_reasoning": 1, "mid_reasoning": 2, "id_text": 0, "near_text": 1,
    "id_kg": 0, "kg_paraphrase": 1, "kg_unseen_entities": 1, "kg_wrong_entity": 1,
    "far_random": 3, "far_shuffled": 3,
}


def _operands(prompt: str) -> list[str]:
    assert prompt.endswith(":")
    return re.split(r"[+\-*]", prompt[:-1])


def test_ood_schema_suites_and_shifts(ood_table):
    assert ood_table.schema.equals(ood.SCHEMA)
    rows = ood_table.to_pylist()
    assert {r["suite"]: r["shift"] for r in rows} == EXPECTED_SHIFTS
    assert {s: sh for s, (sh, _) in ood.SUITES.items()} == EXPECTED_SHIFTS
    for suite in EXPECTED_SHIFTS:
        assert sum(r["suite"] == suite for r in rows) == 30, suite
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["domain"] for r in rows} <= {"reasoning", "text", "kg", "mixed"}


def test_ood_is_deterministic(corpus, world, ood_table):
    assert ood_table.equals(ood.generate(3, 30, LEVELS, corpus, world))
    assert not ood_table.equals(ood.generate(4, 30, LEVELS, corpus, world))


def test_ood_reasoning_suites_by_parsing(ood_table):
    trained = {(lv.operands, lv.digits) for lv in LEVELS}
    max_ops, max_digits = max(lv.operands for lv in LEVELS), max(lv.digits for lv in LEVELS)
    for r in ood_table.to_pylist():
        if r["domain"] != "reasoning":
            continue
        xs = _operands(r["text"])
        assert all(x.isdigit() for x in xs)
        digits = {len(x) for x in xs}
        if r["suite"] == "id_reasoning":
            assert "*" not in r["text"] and len(digits) == 1 and (len(xs), digits.pop()) in trained
        elif r["suite"] == "near_reasoning":
            assert "*" not in r["text"] and len(digits) == 1
            d = digits.pop()
            assert (len(xs), d) not in trained
            # exactly one dimension leaves the trained range, by exactly one
            assert (len(xs) == max_ops + 1 and d <= max_digits) or (len(xs) <= max_ops and d == max_digits + 1)
        elif r["suite"] == "mid_reasoning":
            assert "*" in r["text"] or min(digits) >= max_digits + 3


def test_ood_text_suites(corpus, ood_table):
    train = set(corpus.filter(pc.equal(corpus["split"], "train"))["text"].to_pylist())
    test = set(corpus.filter(pc.equal(corpus["split"], "test"))["text"].to_pylist())
    rows = ood_table.to_pylist()
    id_text = [r["text"] for r in rows if r["suite"] == "id_text"]
    assert set(id_text) <= test and not set(id_text) & train
    for r in rows:
        if r["suite"] == "near_text":
            assert all(w in grammar.WORD_CATEGORY for w in r["text"].split())
            assert not grammar.is_grammatical(r["text"])


def test_ood_kg_suites(world, ood_table):
    names = set(world["entities"]["entity"].to_pylist())
    fact_texts = set(world["facts"]["text"].to_pylist())
    train_texts = {f["text"] for f in world["facts"].to_pylist() if f["template_split"] == "train"}
    para_texts = fact_texts - train_texts
    for r in ood_table.to_pylist():
        caps = [w for w in r["text"].split() if re.fullmatch(r"[A-Z][a-z]+", w)]
        if r["suite"] == "id_kg":
            assert r["text"] in train_texts
        elif r["suite"] == "kg_paraphrase":
            assert r["text"] in para_texts
        elif r["suite"] == "kg_unseen_entities":
            assert r["text"] not in fact_texts and any(c not in names for c in caps)
        elif r["suite"] == "kg_wrong_entity":
            assert r["text"] not in fact_texts and all(c in names for c in caps)


def test_ood_far_suites(corpus, world, ood_table):
    rows = ood_table.to_pylist()
    id_alphabet = set("".join(r["text"] for r in rows if r["shift"] == 0))
    sources = {tuple(sorted(t.split())): t for t in corpus["text"].to_pylist() + world["facts"]["text"].to_pylist()}
    for r in rows:
        if r["suite"] == "far_random":
            assert set(r["text"]) <= id_alphabet and r["text"] == r["text"].strip()
        elif r["suite"] == "far_shuffled":
            original = sources[tuple(sorted(r["text"].split()))]  # same tokens as an ID sentence
            assert r["text"] != original


def test_ood_skips_missing_inputs_and_keeps_other_suites(ood_table):
    only_reasoning = ood.generate(3, 30, LEVELS, None, None)
    assert set(only_reasoning["suite"].to_pylist()) == {"id_reasoning", "near_reasoning", "mid_reasoning", "far_random"}
    full = ood_table.filter(pc.is_in(ood_table["suite"], pa.array(["near_reasoning", "mid_reasoning"])))
    part = only_reasoning.filter(pc.is_in(only_reasoning["suite"], pa.array(["near_reasoning", "mid_reasoning"])))
    assert full.equals(part)  # per-suite random streams
    assert ood.generate(3, 30, [], None, None).num_rows == 0


# --------------------------------------------------------------------------- loaders


def test_load_gsm8k_jsonl_and_parquet():
    t = loaders.load_gsm8k(FIXTURES / "gsm8k_sample.jsonl")
    assert t.schema.equals(reasoning.SCHEMA)
    assert t["answer"].to_pylist() == ["7", "14", "1200", "8", "-4"]
    assert t["id"].to_pylist()[0] == "gsm8k-000001"
    for r in t.to_pylist():
        assert r["prompt"].endswith("?\nAnswer:") and r["completion"] == r["solution"]
        assert r["solution"].rstrip().endswith(r["solution"].split("####")[-1].strip())
        assert (r["split"], r["level"], r["style"], r["source"]) == ("test", 0, "worked", "gsm8k")
    assert t.equals(loaders.load_gsm8k(FIXTURES / "gsm8k_sample.parquet"))


def test_load_math():
    t = loaders.load_math(FIXTURES / "math_sample.jsonl", split="val")
    assert t.schema.equals(reasoning.SCHEMA)
    assert t["answer"].to_pylist() == ["\\frac{1}{2}", "\\sqrt{2}", "\\left( \\frac{1}{2}, 3 \\right)", "10"]
    assert t["level"].to_pylist() == [1, 3, 2, 0]
    assert set(t["split"].to_pylist()) == {"val"} and set(t["source"].to_pylist()) == {"math"}


def test_last_boxed_edge_cases():
    assert loaders.last_boxed("so $\\boxed{a^{2}}$ and $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert loaders.last_boxed("the answer is $\\boxed 5$.") == "5"
    assert loaders.last_boxed("$\\fbox{x+1}$") == "x+1"
    assert loaders.last_boxed("$\\boxed{\\frac{1}{2}$") is None
    assert loaders.last_boxed("no box") is None


def test_loader_directory_reads_only_the_split(tmp_path):
    shutil.copy(FIXTURES / "gsm8k_sample.jsonl", tmp_path / "test.jsonl")
    train_row = {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2", "id": "tr-1"}
    (tmp_path / "train.jsonl").write_text(json.dumps(train_row) + "\n")
    assert loaders.load_gsm8k(tmp_path, "test").num_rows == 5
    train = loaders.load_gsm8k(tmp_path, "train")
    assert train["id"].to_pylist() == ["tr-1"] and train["split"].to_pylist() == ["train"]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(FIXTURES / "gsm8k_sample.jsonl", mixed / "a.jsonl")
    shutil.copy(FIXTURES / "gsm8k_sample.parquet", mixed / "b.parquet")
    assert loaders.load_gsm8k(mixed)["id"].to_pylist()[-1] == "gsm8k-000010"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD_GSM = json.dumps({"question": "q?", "answer": "x\n#### 3"})
GOOD_MATH = json.dumps({"problem": "p?", "solution": "$\\boxed{3}$"})


@pytest.mark.parametrize(
    "name, lines, load, where",
    [
        ("notjson.jsonl", [GOOD_GSM, "{not json"], loaders.load_gsm8k, "line 2"),
        ("array.jsonl", [GOOD_GSM, "[1, 2]"], loaders.load_gsm8k, "line 2"),
        ("nocol.jsonl", [GOOD_GSM, GOOD_GSM, json.dumps({"question": "q?"})], loaders.load_gsm8k, "line 3"),
        ("noanswer.jsonl", [json.dumps({"question": "q?", "answer": "it is 3"})], loaders.load_gsm8k, "line 1"),
        ("emptyq.jsonl", [json.dumps({"question": " ", "answer": "#### 3"})], loaders.load_gsm8k, "line 1"),
        ("nonumber.jsonl", [GOOD_GSM, json.dumps({"question": "q?", "answer": "x\n#### none"})], loaders.load_gsm8k, "line 2"),
        ("empty.jsonl", [], loaders.load_gsm8k, "no rows"),
        ("blank.jsonl", ["", "  "], loaders.load_math, "no rows"),
        ("nobox.jsonl", [GOOD_MATH, json.dumps({"problem": "p", "solution": "it is 3"})], loaders.load_math, "line 2"),
        ("openbox.jsonl", [json.dumps({"problem": "p", "solution": "$\\boxed{\\frac{1}{2}$"})], loaders.load_math, "line 1"),
        ("mathcol.jsonl", [GOOD_GSM], loaders.load_math, "line 1"),
    ],
)
def test_loader_bad_jsonl_raises_naming_file_and_line(tmp_path, name, lines, load, where):
    path = _write(tmp_path / name, lines)
    with pytest.raises(ValueError) as err:
        load(path)
    msg = str(err.value)
    assert name in msg and where in msg and "\n" not in msg


def test_loader_bad_parquet_and_paths(tmp_path):
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["#### 1", "no marker"]}), tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match=r"rows\.parquet: row 2"):
        loaders.load_gsm8k(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"question": ["a?"]}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"cols\.parquet: row 1: missing field 'answer'"):
        loaders.load_gsm8k(tmp_path / "cols.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet"):
        loaders.load_gsm8k(tmp_path / "junk.parquet")
    with pytest.raises(ValueError, match=r"missing\.jsonl"):
        loaders.load_gsm8k(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"data\.csv"):
        loaders.load_math(tmp_path / "data.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        loaders.load_math(empty)
