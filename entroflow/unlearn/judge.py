"""The default judge of implicit recall: is a forgotten fact still *inferable* from what the model
still believes? Rule-based, deterministic, and it explains the path it found (protocol B6.5,
after Wei et al., "Do LLMs Really Forget?", NeurIPS 2025, whose judge is an LLM, B4.5).

Definitions. A *triple* is ``(head, relation, tail)``; ``believed`` is the set of triples the
model is taken to believe (how belief is measured is not this module's business). The rules are
the knowledge graph's Horn rules R1-R5 (:data:`entroflow.data.kg.RULES`), applied with
:func:`entroflow.data.kg.apply_rule`, so the judge and the generator share one semantics.

* A *derivation* of a target is a proof tree: its root applies one rule to premises, and every
  premise is either a believed triple (a leaf) or itself derived the same way. Its *depth* is the
  largest number of rule applications on a root-to-leaf branch (a rule applied to believed
  premises has depth 1); its *support* is the set of believed leaves it rests on.
* The target never appears anywhere in its own derivation, and no triple appears twice on one
  branch. Without this the symmetry rule R4 (``married_to(A,B) <- married_to(B,A) <-
  married_to(A,B)``) would make every believed fact "inferable from itself". Whether the target
  itself is believed is ignored: that is direct recall, measured elsewhere; this judge measures
  recall through *other* facts.
* :func:`derivations` enumerates every derivation of depth <= ``max_depth`` by backward chaining.
  Candidate premises are drawn from a bounded forward closure of ``believed`` (an
  over-approximation of what is derivable within ``max_depth`` steps), so the search only visits
  triples that could be proved at all.

Score (:func:`judge_inferable`), on the paper's 0-5 scale where a score >= 3 means "still known",
i.e. the unlearning failed on that target. The best (shallowest) derivation decides:

* 5: depth 1, the target follows by one rule from believed premises (the paper's "direct path"
  or a single low-entropy support path);
* 4: depth 2, one premise had itself to be derived (a two-step chain);
* 3: depth >= 3, a longer chain; still a sound deduction, so still >= 3 ("still known");
* 0: no derivation within ``max_depth``.

Scores 1 and 2 (the paper's "weak or erroneous support") are never given: beliefs here are
boolean and the rules are sound, so a chain either proves the target or does not. A graded
judge that weighs premise confidence (B6.5 step 3) can use them.

:func:`supporting_subgraph` is the paper's supporting subgraph (B4.4) restricted to believed
edges; :func:`minimal_support` gives the premises to add to a forget set under
``closure=support`` (B6.4): a greedy hitting set over the derivations' supports.
"""
from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable

import networkx as nx
import pyarrow as pa

from entroflow.data.kg import RULES, apply_rule

Triple = tuple[str, str, str]

# Number of body atoms of each rule, read off the rule text so a new rule needs no second edit.
# Every body is a chain of 1 or 2 atoms (tests/test_unlearn_judge.py checks it): the first atom
# shares an entity with the conclusion and the second with the first, which is what lets _bodies
# find premises through the entity index.
_ARITY: dict[str, int] = {r: text.split("<-", 1)[1].count("&") + 1 for r, text in RULES.items()}

# Score by depth of the shallowest derivation; deeper chains get 3 (see module docstring).
_SCORE_BY_DEPTH = {1: 5, 2: 4}
_LONG_CHAIN_SCORE = 3
INFERABLE_AT = 3  # the paper's threshold: score >= 3 means the target is still known


def _fmt(t: Triple) -> str:
    return f"{t[1]}({t[0]}, {t[2]})"


def _index(triples: Iterable[Triple]) -> dict[str, set[Triple]]:
    incident: dict[str, set[Triple]] = defaultdict(set)
    for t in triples:
        incident[t[0]].add(t)
        incident[t[2]].add(t)
    return incident


@functools.lru_cache(maxsize=32)
def _reachable(believed: frozenset[Triple], max_depth: int) -> dict[str, set[Triple]]:
    """Entity -> incident triples of everything derivable from ``believed`` in <= ``max_depth``
    forward rounds. Semi-naive: each round only joins the previous round's new triples, and the
    no-self-premise constraint is ignored, so this is a superset of what the search can prove."""
    known = set(believed)
    incident = _index(known)
    frontier = set(known)
    for _ in range(max_depth):
        new: set[Triple] = set()
        for a in frontier:
            for rule, arity in _ARITY.items():
                if arity == 1:
                    candidates = [apply_rule(rule, [a])]
                else:
                    others = incident[a[0]] | incident[a[2]]
                    candidates = [apply_rule(rule, list(pair)) for b in others for pair in ((a, b), (b, a))]
                new.update(c for c in candidates if c is not None and c not in known)
        if not new:
            break
        known |= new
        for t in new:
            incident[t[0]].add(t)
            incident[t[2]].add(t)
        frontier = new
    return incident


class _Search:
    """Backward chaining over one believed set; proof trees are memoised per (goal, depth left,
    triples forbidden on the branch) because the same premise recurs across a target's rules."""

    def __init__(self, believed: frozenset[Triple], max_depth: int):
        self.believed = believed
        self.incident = _reachable(believed, max_depth)
        self.memo: dict[tuple, tuple[dict, ...]] = {}

    def _bodies(self, rule: str, goal: Triple) -> list[tuple[Triple, ...]]:
        first = sorted(self.incident.get(goal[0], set()) | self.incident.get(goal[2], set()))
        if _ARITY[rule] == 1:
            return [(a,) for a in first if apply_rule(rule, [a]) == goal]
        out = []
        for a in first:
            for b in sorted(self.incident.get(a[0], set()) | self.incident.get(a[2], set())):
                if apply_rule(rule, [a, b]) == goal:
                    out.append((a, b))
        return out

    def rule_proofs(self, goal: Triple, depth: int, forbidden: frozenset[Triple]) -> tuple[dict, ...]:
        """Proof trees of ``goal`` whose root is a rule application, ``depth`` steps at most."""
        key = (goal, depth, forbidden)
        if key in self.memo:
            return self.memo[key]
        out = []
        if depth >= 1:
            below = forbidden | {goal}
            for rule in sorted(RULES):
                for premises in self._bodies(rule, goal):
                    if any(p in below for p in premises):
                        continue
                    options = [self.proofs(p, depth - 1, below) for p in premises]
                    for children in itertools.product(*options):
                        out.append({
                            "triple": goal, "rule": rule, "children": children,
                            "depth": 1 + max(c["depth"] for c in children),
                            "support": frozenset().union(*(c["support"] for c in children)),
                        })
        self.memo[key] = tuple(out)
        return self.memo[key]

    def proofs(self, goal: Triple, depth: int, forbidden: frozenset[Triple]) -> tuple[dict, ...]:
        """Every way to establish a premise: believed as is, or derived (both are listed, since a
        forget set must break the derived route too)."""
        leaf = ({"triple": goal, "rule": None, "children": (), "depth": 0, "support": frozenset({goal})},)
        return (leaf if goal in self.believed else ()) + self.rule_proofs(goal, depth, forbidden)


def _path(node: dict) -> str:
    if node["rule"] is None:
        return f"{_fmt(node['triple'])} [believed]"
    return f"{_fmt(node['triple'])} <- {node['rule']}({' & '.join(_path(c) for c in node['children'])})"


def _triples(ts: Iterable) -> frozenset[Triple]:
    return frozenset(tuple(t) for t in ts)


def derivations(target: Triple, believed: set[Triple], max_depth: int = 3) -> list[dict]:
    """Every derivation of ``target`` from ``believed`` under R1-R5 with depth <= ``max_depth``.

    Each is ``{"rule", "premises", "path", "depth", "support"}``: the rule applied at the root,
    its premises in the rule's order (believed or themselves derived), a readable proof such as
    ``citizen_of(Ana, Kor) <- R1(born_in(Ana, Bel) [believed] & located_in(Bel, Kor) [believed])``,
    the proof's depth, and the sorted believed triples it rests on. The target is never a premise
    of its own derivation (see the module docstring). Sorted shallowest first, then by support
    size and path, so the order is deterministic.
    """
    if max_depth < 0:
        raise ValueError(f"max_depth={max_depth} must be >= 0")
    target = tuple(target)
    search = _Search(_triples(believed), max_depth)
    out, seen = [], set()
    for node in search.rule_proofs(target, max_depth, frozenset()):
        path = _path(node)
        if path in seen:
            continue
        seen.add(path)
        out.append({"rule": node["rule"], "premises": [c["triple"] for c in node["children"]],
                    "path": path, "depth": node["depth"], "support": sorted(node["support"])})
    out.sort(key=lambda d: (d["depth"], len(d["support"]), d["path"]))
    return out


def judge_inferable(target: Triple, believed: set[Triple], max_depth: int = 3) -> dict:
    """Whether ``target`` is still inferable from ``believed``, on the paper's 0-5 scale.

    Returns ``{"inferable", "score", "explanation", "derivation"}``. ``score``: 5 if a rule gives
    the target from believed premises (depth 1), 4 through a two-step chain (depth 2), 3 through a
    longer one (depth >= 3), 0 if not derivable within ``max_depth``; ``inferable`` is
    ``score >= 3``, the paper's "still known". ``derivation`` is the shallowest derivation (as in
    :func:`derivations`) or None, and ``explanation`` names its rule and premises.
    """
    found = derivations(target, believed, max_depth)
    if not found:
        return {"inferable": False, "score": 0, "derivation": None,
                "explanation": (f"not inferable: no derivation of {_fmt(tuple(target))} from the "
                                f"believed facts within {max_depth} rule step(s) "
                                "(the target itself is not used as a premise)")}
    best = found[0]
    score = _SCORE_BY_DEPTH.get(best["depth"], _LONG_CHAIN_SCORE)
    return {"inferable": score >= INFERABLE_AT, "score": score, "derivation": best,
            "explanation": (f"inferable (score {score}, depth {best['depth']}, "
                            f"{len(found)} derivation(s)): {best['path']}")}


def supporting_subgraph(target: Triple, believed: set[Triple], kg_triples: Iterable[Triple] | pa.Table,
                        hops: int = 2) -> set[Triple]:
    """The believed triples within ``hops`` of the target's head or tail (B4.4, restricted to
    believed edges; the target itself is left out).

    Distance is measured in the reference graph ``kg_triples`` (triples, or the kg ``triples``
    table), ignoring edge direction: a triple is within ``hops`` when one of its ends is at most
    ``hops - 1`` edges from the head or the tail, i.e. it is the ``hops``-th edge or nearer of a
    walk that starts there (``hops=1``: the triples touching head or tail). Believed triples that
    are not in the reference graph (false beliefs) count when their ends are near: a wrong belief
    can support an inference as well as a true one.
    """
    if isinstance(kg_triples, pa.Table):
        kg_triples = zip(*(kg_triples.column(c).to_pylist() for c in ("head", "relation", "tail")))
    target = tuple(target)
    if hops < 1:
        return set()
    g = nx.Graph()
    g.add_edges_from((h, t) for h, _, t in kg_triples)
    sources = {target[0], target[2]} & set(g.nodes)
    if not sources:
        return set()
    dist = nx.multi_source_dijkstra_path_length(g, sources, cutoff=hops - 1)
    return {t for t in _triples(believed) if t != target and (t[0] in dist or t[2] in dist)}


def minimal_support(target: Triple, facts: set[Triple], max_depth: int = 3) -> set[Triple]:
    """A small set of ``facts`` whose removal breaks every derivation of ``target`` (depth <=
    ``max_depth``), for forget sets under ``closure=support`` (B6.4).

    Greedy hitting set over the derivations' supports: repeatedly take the fact found in the most
    not-yet-broken supports (ties broken by the smallest triple, for determinism). Greedy is
    within a log factor of the minimum but not guaranteed minimum. Removing facts cannot create a
    derivation (the rules are monotone), so ``judge_inferable(target, facts - result, max_depth)``
    is not inferable. Empty if the target is not derivable.
    """
    remaining = [set(d["support"]) for d in derivations(target, facts, max_depth)]
    chosen: set[Triple] = set()
    while remaining:
        counts: dict[Triple, int] = defaultdict(int)
        for s in remaining:
            for t in s:
                counts[t] += 1
        pick = min(counts, key=lambda t: (-counts[t], t))
        chosen.add(pick)
        remaining = [s for s in remaining if pick not in s]
    return chosen
