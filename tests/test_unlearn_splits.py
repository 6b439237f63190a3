"""The unlearning splits of the knowledge graph: disjoint and complete, the promised support
paths of triple-level targets (and their absence for controls), wrong objects of the right type."""
from __future__ import annotations

import pytest

from entroflow.data import kg
from entroflow.unlearn import splits


@pytest.fixture(scope="module")
def world():
    return kg.generate(30, 8, 4, 5, 7)


def _key(world):
    return {t["triple_id"]: (t["head"], t["relation"], t["tail"]) for t in world["triples"].to_pylist()}


def test_entity_splits_are_disjoint_complete_and_seeded(world):
    s = splits.entity_splits(world, 0.1, 0.1, seed=0)
    ids = set(_key(world))
    assert set().union(*s.values()) == ids and sum(len(v) for v in s.values()) == len(ids)
    key = _key(world)
    forgotten = {key[t][0] for t in s["forget"]}
    persons = {e["entity"] for e in world["entities"].to_pylist() if e["type"] == "Person"}
    # held-out persons: every triple that mentions them is held out
    held = {p for p in persons if all(t in s["holdout"] for t, (h, _, tl) in key.items() if p in (h, tl))}
    assert forgotten and held and not forgotten & held
    # every trained triple mentioning a held-out person is in holdout; world = places and organisations
    assert all(key[t][0] not in held and key[t][2] not in held for n in ("forget", "retain_local", "retain_global")
               for t in s[n])
    assert {key[t][1] for t in s["world"]} <= {"located_in", "headquartered_in"}
    assert s["retain_local"] and s["retain_global"]
    assert splits.entity_splits(world, 0.1, 0.1, seed=0) == s and splits.entity_splits(world, 0.1, 0.1, seed=1) != s


@pytest.mark.parametrize("kwargs, message", [
    ({"forget_frac": 0.0, "holdout_frac": 0.1}, "forget_frac: must be in (0, 1)"),
    ({"forget_frac": 0.1, "holdout_frac": 1.0}, "holdout_frac: must be in (0, 1)"),
    ({"forget_frac": 0.6, "holdout_frac": 0.5}, "leave no retained person"),
])
def test_entity_split_errors(world, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        splits.entity_splits(world, seed=0, **kwargs)


def test_triple_targets_keep_a_support_path_and_controls_do_not(world):
    got = splits.triple_forget_set(world, 8, seed=0)
    key = _key(world)
    assert len(got["targets"]) == 8 and len(got["controls"]) == 8
    gone = set(got["targets"]) | set(got["controls"])
    closed = kg.closure({key[i] for i in key if i not in gone})
    assert all(key[t] in closed for t in got["targets"])  # still inferable from what is retained
    assert not any(key[t] in closed for t in got["controls"])  # nothing retained implies them
    assert splits.triple_forget_set(world, 8, seed=0) == got
    with pytest.raises(ValueError, match="n_targets"):
        splits.triple_forget_set(world, 0, seed=0)


def test_perturbed_objects_are_wrong_and_of_the_right_type(world):
    wrong = splits.perturbed_objects(world, 3, seed=0)
    types = {e["entity"]: e["type"] for e in world["entities"].to_pylist()}
    truth = {(h, r, t) for h, r, t in _key(world).values()}
    for tid, (h, r, t) in _key(world).items():
        assert 1 <= len(wrong[tid]) <= 3 and len(set(wrong[tid])) == len(wrong[tid])
        for w in wrong[tid]:
            assert types[w] == kg.RELATIONS[r][1] and (h, r, w) not in truth and w != h
