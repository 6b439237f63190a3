"""The unlearning world: a fictitious knowledge graph the base model has never seen, its splits,
the forget set under a closure mode, wrong answers, and the documents fine-tuning reads.

Why a fresh graph: the spine's pretraining corpus already holds every fact of the pipeline's own
graph (``data.kg``), so none of its facts could serve as the never-trained *holdout* that
membership inference needs, and the gold ``retain`` model could not be trained "without the
forget set". As TOFU does with its fictitious authors, :func:`fresh_graph` draws a new graph with
:func:`entroflow.data.kg.generate` (same relations, rules and templates, so the base model knows
the phrasing but none of the facts) and renames every entity to a name the pipeline's graph does
not use.

Splits (:func:`make_splits`; one row per triple in ``splits.parquet``):

* ``holdout``: every triple touching a held-out fraction of the persons; never trained.
* ``forget`` with a ``role``:
  - forget set ``entity`` (TOFU's forget05/forget10): every triple whose head is one of a
    forgotten fraction of the other persons (role ``entity``);
  - forget set ``triples`` (Wei et al. style): ``n_targets`` *targets* that stay derivable by the
    Horn rules from the retained graph (role ``target``: at least one other support path) and as
    many *controls* derivable from nothing retained (role ``control``);
  - closure ``support`` also forgets a minimal premise set per forget triple that breaks each of
    its derivations (role ``support``; greedy hitting set, :func:`judge.minimal_support`);
    closure ``consequences`` also forgets the derived triples whose recorded derivation uses a
    forgotten triple, transitively (role ``consequence``); ``none`` forgets exactly the set.
* ``retain_local``: retained triples about a person within two hops of a forgotten triple's head
  in the family/marriage graph (collateral damage shows here first); ``retain_global``: the other
  retained triples about persons; ``world``: retained triples about places and organisations.

Documents (:func:`training_documents`): each trained triple under its four training statements
and its training question (the held-out paraphrase templates are never trained), plus
*verification* lines that teach the Yes/No/Unknown belief query of Wei et al. (§B4.3): the first
training statement followed by ``true or false ? answer : yes``, the same with a wrong object and
``no``, and statements about persons who exist nowhere in the graph with ``unknown``. A tiny model
trained from scratch cannot answer a question format it never saw; with these lines the query
measures what the model learnt about each fact.
"""
from __future__ import annotations

import random

import pyarrow as pa

from entroflow.data import kg
from entroflow.unlearn import judge, probes, splits

FORGET_KINDS = ("entity", "triples")
CLOSURES = ("none", "support", "consequences")
# The Yes/No/Unknown query (probes.DEFAULT_YES_NO_TEMPLATE) and its three answers.
VERIFY_TEMPLATE = probes.DEFAULT_YES_NO_TEMPLATE
ANSWERS = ("yes", "no", "unknown")

SPLITS_SCHEMA = pa.schema(
    [
        pa.field("triple_id", pa.string(), nullable=False),
        pa.field("head", pa.string(), nullable=False),
        pa.field("relation", pa.string(), nullable=False),
        pa.field("tail", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # base | derived
        pa.field("split", pa.string(), nullable=False),  # splits.SPLITS
        pa.field("role", pa.string(), nullable=False),  # entity | target | control | support | consequence; "" if kept
        pa.field("wrong", pa.list_(pa.string()), nullable=False),  # wrong objects of the tail's type
    ],
    metadata={"schema_version": "1", "table": "unlearn_splits"},
)


def fresh_graph(sizes: dict, seed: int, taken: set[str]) -> dict[str, pa.Table]:
    """A knowledge graph of ``sizes`` (``n_persons, n_cities, n_countries, n_orgs``) whose entity
    names avoid ``taken``: :func:`kg.generate` with every entity renamed (facts re-rendered)."""
    tables = kg.generate(sizes["n_persons"], sizes["n_cities"], sizes["n_countries"], sizes["n_orgs"], seed)
    old = [e["entity"] for e in tables["entities"].to_pylist()]
    new = kg.make_names(random.Random(f"{seed}/unlearn/names"), len(old), set(taken))
    name = dict(zip(old, new))
    entities = [{"entity": name[e["entity"]], "type": e["type"]} for e in tables["entities"].to_pylist()]
    triples = [{**t, "head": name[t["head"]], "tail": name[t["tail"]]} for t in tables["triples"].to_pylist()]
    by_id = {t["triple_id"]: t for t in triples}
    facts = []
    for f in tables["facts"].to_pylist():
        t = by_id[f["triple_id"]]
        text, prompt = kg.render(kg.TEMPLATE_BY_ID[f["template_id"]], t["head"], t["tail"])
        facts.append({**f, "text": text, "prompt": prompt, "answer": t["tail"]})
    return {"entities": pa.Table.from_pylist(entities, schema=kg.ENTITIES_SCHEMA),
            "triples": pa.Table.from_pylist(triples, schema=kg.TRIPLES_SCHEMA),
            "facts": pa.Table.from_pylist(facts, schema=kg.FACTS_SCHEMA)}


def _keys(tables: dict[str, pa.Table]) -> dict[str, tuple[str, str, str]]:
    return {t["triple_id"]: (t["head"], t["relation"], t["tail"]) for t in tables["triples"].to_pylist()}


def _support(forget: set[str], trained: set[str], key: dict, max_depth: int) -> set[str]:
    """Premises to forget as well so that no forget triple is derivable from what is retained."""
    id_of = {v: k for k, v in key.items()}
    retained = {key[i] for i in trained - forget}
    extra: set[str] = set()
    for tid in sorted(forget):
        cut = judge.minimal_support(key[tid], retained, max_depth)
        extra |= {id_of[t] for t in cut}
        retained -= cut
    return extra - forget


def _consequences(forget: set[str], trained: set[str], triples: list[dict]) -> set[str]:
    """Derived triples whose recorded derivation rests on a forgotten triple (transitively)."""
    gone = set(forget)
    while True:
        more = {t["triple_id"] for t in triples if t["kind"] == "derived" and t["triple_id"] in trained
                and t["triple_id"] not in gone and any(p in gone for p in t["premises"])}
        if not more:
            return gone - forget
        gone |= more


def make_splits(tables: dict[str, pa.Table], forget_kind: str, fraction: float, n_targets: int,
                holdout_fraction: float, closure: str, n_wrong: int, seed: int,
                max_depth: int = 3) -> pa.Table:
    """The ``splits.parquet`` table (:data:`SPLITS_SCHEMA`): every triple's split and forget role,
    and ``n_wrong`` wrong objects per triple (see the module docstring)."""
    if forget_kind not in FORGET_KINDS:
        raise ValueError(f"forget.kind: must be one of {FORGET_KINDS}, got {forget_kind!r}")
    if closure not in CLOSURES:
        raise ValueError(f"closure: must be one of {CLOSURES}, got {closure!r}")
    triples = tables["triples"].to_pylist()
    key = _keys(tables)
    # Holdout persons (and, for the entity kind, forgotten persons) as entity_splits draws them.
    ent = splits.entity_splits(tables, fraction if forget_kind == "entity" else None, holdout_fraction, seed)
    holdout = ent["holdout"]
    trained = set(key) - holdout
    role: dict[str, str] = {}
    if forget_kind == "entity":
        role = {t: "entity" for t in ent["forget"]}
    else:
        picked = splits.triple_forget_set(tables, n_targets, seed, exclude=holdout)
        role = {**{t: "target" for t in picked["targets"]}, **{t: "control" for t in picked["controls"]}}
    forget = set(role)
    if closure == "support":
        role.update({t: "support" for t in _support(forget, trained, key, max_depth)})
    elif closure == "consequences":
        role.update({t: "consequence" for t in _consequences(forget, trained, triples)})
    forget = set(role)
    if not forget:
        raise ValueError("forget set is empty")
    local = _near(triples, forget, holdout)
    wrong = splits.perturbed_objects(tables, n_wrong, seed)
    rows = []
    for t in triples:
        tid = t["triple_id"]
        if tid in holdout:
            split = "holdout"
        elif tid in forget:
            split = "forget"
        elif kg.RELATIONS[t["relation"]][0] != "Person":
            split = "world"
        elif tid in local:
            split = "retain_local"
        else:
            split = "retain_global"
        rows.append({"triple_id": tid, "head": t["head"], "relation": t["relation"], "tail": t["tail"],
                     "kind": t["kind"], "split": split, "role": role.get(tid, ""), "wrong": wrong[tid]})
    return pa.Table.from_pylist(rows, schema=SPLITS_SCHEMA)


def _near(triples: list[dict], forget: set[str], holdout: set[str]) -> set[str]:
    """Retained triples about a person within two hops of a forgotten triple's head in the
    person-to-person graph (spouses, twins, parents, children; the head's own other facts too).

    Why person-to-person only: through a city or a country two hops reach most of the graph (a
    country holds a fifth of the persons), and "local" would mean "everything"."""
    import networkx as nx

    g = nx.Graph()
    g.add_edges_from((t["head"], t["tail"]) for t in triples if t["triple_id"] not in holdout
                     and kg.RELATIONS[t["relation"]][:2] == ("Person", "Person"))
    heads = {t["head"] for t in triples if t["triple_id"] in forget}
    near: set[str] = set(heads)
    for h in heads:
        if h in g:
            near |= set(nx.single_source_shortest_path_length(g, h, cutoff=2))
    return {t["triple_id"] for t in triples if t["triple_id"] not in holdout | forget and t["head"] in near}


def verification_line(statement: str, answer: str) -> str:
    """``"<statement> true or false ? answer : <answer>"``: one Yes/No/Unknown training line."""
    return f"{VERIFY_TEMPLATE.format(statement=statement)} {answer}"


def training_documents(facts: pa.Table, split_rows: list[dict], include: set[str], seed: int,
                       verify: bool, taken: set[str]) -> dict[str, list[str]]:
    """``{"facts": [...], "verify": [...]}``: the texts fine-tuning trains on for the triples in
    ``include`` (see the module docstring). ``taken`` are names no unknown person may have."""
    by_triple: dict[str, list[dict]] = {}
    for f in facts.to_pylist():
        if f["triple_id"] in include and f["template_split"] == "train":
            by_triple.setdefault(f["triple_id"], []).append(f)
    texts = [f["text"] for tid in sorted(by_triple) for f in by_triple[tid]]
    out = {"facts": texts, "verify": []}
    if not verify:
        return out
    rng = random.Random(f"{seed}/unlearn/verify")
    rows = [r for r in split_rows if r["triple_id"] in by_triple]
    persons = {r["triple_id"] for r in rows if kg.RELATIONS[r["relation"]][0] == "Person"}
    strangers = kg.make_names(rng, max(1, len({r["head"] for r in rows if r["triple_id"] in persons}) // 4), taken)
    for r in rows:
        tpl = kg.TEMPLATE_BY_ID[f"{r['relation']}_s0"]
        out["verify"].append(verification_line(kg.render(tpl, r["head"], r["tail"])[0], "yes"))
        if r["wrong"]:
            out["verify"].append(verification_line(kg.render(tpl, r["head"], rng.choice(r["wrong"]))[0], "no"))
        if r["triple_id"] in persons and rng.random() < 0.5:
            out["verify"].append(verification_line(kg.render(tpl, rng.choice(strangers), r["tail"])[0], "unknown"))
    return out


def statement(relation: str, head: str, tail: str) -> str:
    """The first training statement of a triple: what the Yes/No/Unknown query asks about."""
    return kg.render(kg.TEMPLATE_BY_ID[f"{relation}_s0"], head, tail)[0]
