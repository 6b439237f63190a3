"""Unlearning splits of the synthetic knowledge graph (entroflow/data/kg.py), in the TOFU / MUSE
mould (reference Part B, B5-B6), each a set of ``triple_id``s:

* ``holdout``: every triple about a held-out fraction of the persons (as head or tail). Never
  trained: the non-members of membership inference (TOFU's holdout authors).
* ``forget``: every triple whose head is one of a forgotten fraction of the other persons
  (TOFU's forget01/05/10: all facts about an author); ``forget_frac`` names it (0.05 -> forget05).
* ``retain_local``: trained triples within two hops of a forgotten person in the graph (their
  spouses', parents' and birth cities' facts...): what an unlearning method damages first.
* ``retain_global``: the remaining trained triples about persons.
* ``world``: triples about places and organisations (``located_in``, ``headquartered_in``):
  general knowledge no person's forgetting should touch (TOFU's world facts).

The triple-level variant, :func:`triple_forget_set`, draws *targets* that stay derivable by the
graph's Horn rules from what is retained (at least one other support path: the paper's
"forgotten but inferable" case) and *controls* that are derivable from nothing retained. A fact
counts as derivable when it is in the rule closure (``kg.closure``) of the retained triples.
:func:`perturbed_objects` gives each triple wrong objects of the right type (truth ratio,
multiple-choice probes). Everything is seeded and deterministic.
"""
from __future__ import annotations

import random

import networkx as nx
import pyarrow as pa

from entroflow.data import kg

SPLITS = ("forget", "retain_local", "retain_global", "world", "holdout")


def entity_splits(tables: dict[str, pa.Table], forget_frac: float | None, holdout_frac: float,
                  seed: int) -> dict[str, set[str]]:
    """Disjoint sets of triple ids, one per name in :data:`SPLITS`, covering every triple (see the
    module docstring). ``forget_frac=None`` forgets nobody (the holdout alone, which does not
    depend on the forget fraction: it is drawn first)."""
    for name, frac in (("forget_frac", forget_frac), ("holdout_frac", holdout_frac)):
        if frac is not None and not 0 < frac < 1:
            raise ValueError(f"{name}: must be in (0, 1), got {frac}")
    persons = sorted(e["entity"] for e in tables["entities"].to_pylist() if e["type"] == "Person")
    rng = random.Random(f"{seed}/unlearn/entities")
    rng.shuffle(persons)
    n_hold = max(1, round(holdout_frac * len(persons)))
    n_forget = 0 if forget_frac is None else max(1, round(forget_frac * len(persons)))
    if n_hold + n_forget >= len(persons):
        raise ValueError(f"forget_frac + holdout_frac leave no retained person ({len(persons)} persons)")
    held, forgotten = set(persons[:n_hold]), set(persons[n_hold:n_hold + n_forget])
    triples = tables["triples"].to_pylist()
    out: dict[str, set[str]] = {k: set() for k in SPLITS}
    for t in triples:
        if t["head"] in held or t["tail"] in held:
            out["holdout"].add(t["triple_id"])
        elif t["head"] in forgotten:
            out["forget"].add(t["triple_id"])
    # Two hops from a forgotten person over the undirected graph of the trained triples.
    g = nx.Graph()
    g.add_edges_from((t["head"], t["tail"]) for t in triples if t["triple_id"] not in out["holdout"])
    near: set[str] = set()
    for p in forgotten:
        if p in g:
            near |= set(nx.single_source_shortest_path_length(g, p, cutoff=2))
    for t in triples:
        tid = t["triple_id"]
        if tid in out["holdout"] or tid in out["forget"]:
            continue
        if kg.RELATIONS[t["relation"]][0] != "Person":
            out["world"].add(tid)
        elif t["head"] in near or t["tail"] in near:
            out["retain_local"].add(tid)
        else:
            out["retain_global"].add(tid)
    if forget_frac is not None and not out["forget"]:
        raise ValueError("forget set is empty: the forgotten persons have no facts")
    return out


def triple_forget_set(tables: dict[str, pa.Table], n_targets: int, seed: int,
                      exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, list[str]]:
    """``{targets, controls}``: up to ``n_targets`` triples (not in ``exclude``) that stay
    derivable from the other trained triples once all targets and controls are removed, and up
    to as many controls that are not. Drawn one at a time and checked against the closure of
    what is left, so a later pick never removes an earlier target's last support path."""
    if n_targets < 1:
        raise ValueError(f"n_targets: must be >= 1, got {n_targets}")
    key = {t["triple_id"]: (t["head"], t["relation"], t["tail"])
           for t in tables["triples"].to_pylist() if t["triple_id"] not in exclude}
    ids = sorted(key)
    random.Random(f"{seed}/unlearn/triples").shuffle(ids)
    removed: set[str] = set()
    targets: list[str] = []
    controls: list[str] = []
    for tid in ids:
        if len(targets) >= n_targets and len(controls) >= n_targets:
            break
        gone = removed | {tid}
        closed = kg.closure({key[i] for i in key if i not in gone})
        if not all(key[t] in closed for t in targets):
            continue  # removing this one would cut an earlier target's last support
        if key[tid] in closed:
            if len(targets) < n_targets:
                targets.append(tid)
                removed.add(tid)
        elif len(controls) < n_targets:
            controls.append(tid)
            removed.add(tid)
    if not targets:
        raise ValueError("no triple stays derivable once removed: the graph has no redundant support")
    return {"targets": targets, "controls": controls}


def perturbed_objects(tables: dict[str, pa.Table], k: int, seed: int) -> dict[str, list[str]]:
    """``triple_id -> k`` wrong objects of the tail's type: never a true object of
    (head, relation) and never the head itself (fewer when the type has fewer candidates)."""
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    by_type: dict[str, list[str]] = {}
    for e in tables["entities"].to_pylist():
        by_type.setdefault(e["type"], []).append(e["entity"])
    triples = tables["triples"].to_pylist()
    true: dict[tuple[str, str], set[str]] = {}
    for t in triples:
        true.setdefault((t["head"], t["relation"]), set()).add(t["tail"])
    rng = random.Random(f"{seed}/unlearn/perturbed")
    out = {}
    for t in triples:
        pool = sorted(e for e in by_type[kg.RELATIONS[t["relation"]][1]]
                      if e not in true[(t["head"], t["relation"])] and e != t["head"])
        out[t["triple_id"]] = rng.sample(pool, min(k, len(pool)))
    return out
