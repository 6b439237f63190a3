"""The unlearning flow's parts: the fresh graph and its splits (every forget target keeps its support
path, controls have none, closure modes), training documents, the trainer (each method moves the
forget answer the right way; bad settings are clear errors), the evaluation pass and its summary
rates on hand-made tables, and the comparison's Pareto front and claims."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from entroflow import model as model_lib
from entroflow import tokenizer as tok_lib
from entroflow.data import kg
from entroflow.unlearn import compare, evaluate, judge, losses, metrics, plots, probes, trainer, world

SIZES = {"n_persons": 40, "n_cities": 8, "n_countries": 3, "n_orgs": 6}


@pytest.fixture(scope="module")
def graph():
    return world.fresh_graph(SIZES, 5, set())


def _key(r):
    return (r["head"], r["relation"], r["tail"])


def test_fresh_graph_is_consistent_and_avoids_taken_names():
    plain = kg.generate(**SIZES, seed=5)
    taken = {e["entity"] for e in plain["entities"].to_pylist()}
    g = world.fresh_graph(SIZES, 5, taken)
    assert kg.check_rules(g) == []
    names = {e["entity"] for e in g["entities"].to_pylist()}
    assert len(names) == len(taken) and not names & taken
    # Same structure as the plain draw, entities renamed; every fact renders its renamed triple.
    assert g["triples"].num_rows == plain["triples"].num_rows
    assert [t["relation"] for t in g["triples"].to_pylist()] == [t["relation"] for t in plain["triples"].to_pylist()]


def test_triple_targets_keep_a_support_path_and_controls_have_none(graph):
    rows = world.make_splits(graph, "triples", 0.1, 8, 0.1, "none", 3, seed=0).to_pylist()
    trained = {_key(r) for r in rows if r["split"] not in ("forget", "holdout")}
    closed = kg.closure(trained)
    targets = [r for r in rows if r["role"] == "target"]
    controls = [r for r in rows if r["role"] == "control"]
    assert len(targets) == 8 and controls
    for r in targets:
        assert _key(r) in closed, r
        assert judge.judge_inferable(_key(r), trained)["inferable"], r  # the judge finds that path
    for r in controls:
        assert _key(r) not in closed, r
    # Holdout: every triple touching a held-out person, never forgotten; the wrong answers are wrong.
    hold = [r for r in rows if r["split"] == "holdout"]
    assert hold and not any(r["role"] for r in hold)
    true = {(r["head"], r["relation"]): set() for r in rows}
    for r in rows:
        true[(r["head"], r["relation"])].add(r["tail"])
    assert all(r["wrong"] and not set(r["wrong"]) & true[(r["head"], r["relation"])] for r in rows)
    assert {r["split"] for r in rows} == {"forget", "holdout", "retain_local", "retain_global", "world"}


def test_closure_support_cuts_every_derivation_and_consequences_follow_premises(graph):
    rows = world.make_splits(graph, "triples", 0.1, 8, 0.1, "support", 3, seed=0).to_pylist()
    trained = {_key(r) for r in rows if r["split"] not in ("forget", "holdout")}
    assert any(r["role"] == "support" for r in rows)
    for r in rows:
        if r["role"] == "target":
            assert not judge.judge_inferable(_key(r), trained)["inferable"], r
    rows = world.make_splits(graph, "triples", 0.1, 8, 0.1, "consequences", 3, seed=0).to_pylist()
    forget = {r["triple_id"] for r in rows if r["split"] == "forget"}
    prem = {t["triple_id"]: t["premises"] for t in graph["triples"].to_pylist()}
    for r in rows:
        if r["split"] not in ("forget", "holdout") and r["kind"] == "derived":
            assert not set(prem[r["triple_id"]]) & forget, r  # no retained fact rests on a forgotten one
    assert any(r["role"] == "consequence" for r in rows)


def test_entity_forget_set_and_bad_arguments(graph):
    rows = world.make_splits(graph, "entity", 0.1, 8, 0.1, "none", 3, seed=1).to_pylist()
    heads = {r["head"] for r in rows if r["split"] == "forget"}
    assert len(heads) == round(0.1 * SIZES["n_persons"])
    assert all(r["role"] == "entity" for r in rows if r["split"] == "forget")
    # Every fact about a forgotten person as head is forgotten (unless it touches the holdout).
    assert all(r["split"] in ("forget", "holdout") for r in rows if r["head"] in heads)
    with pytest.raises(ValueError, match="forget.kind"):
        world.make_splits(graph, "facts", 0.1, 8, 0.1, "none", 3, seed=0)
    with pytest.raises(ValueError, match="closure"):
        world.make_splits(graph, "triples", 0.1, 8, 0.1, "all", 3, seed=0)


def test_training_documents_exclude_what_is_not_trained(graph):
    rows = world.make_splits(graph, "triples", 0.1, 8, 0.1, "none", 3, seed=0).to_pylist()
    keep = {r["triple_id"] for r in rows if r["split"] not in ("forget", "holdout")}
    docs = world.training_documents(graph["facts"], rows, keep, 0, True, set())
    facts = graph["facts"].to_pylist()
    allowed = {f["text"] for f in facts if f["triple_id"] in keep and f["template_split"] == "train"}
    forbidden = {f["text"] for f in facts if f["triple_id"] not in keep or f["template_split"] != "train"}
    assert set(docs["facts"]) == allowed and not set(docs["facts"]) & forbidden
    answers = {d.rsplit(" ", 1)[1] for d in docs["verify"]}
    assert answers == set(world.ANSWERS)
    gone = [r for r in rows if r["triple_id"] not in keep]
    for r in gone:  # no verification line states a forgotten or held-out fact as true
        assert world.verification_line(world.statement(r["relation"], r["head"], r["tail"]), "yes") not in docs["verify"]
    assert world.training_documents(graph["facts"], rows, keep, 0, False, set())["verify"] == []


# --- trainer -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(graph):
    texts = [f["text"] for f in graph["facts"].to_pylist()] + [world.verification_line("x", a) for a in world.ANSWERS]
    tok = tok_lib.train_tokenizer(texts, vocab_size=200)
    model = model_lib.build_model(len(tok), 32, 2, 2, 64, 64, seed=0)
    facts = [f for f in graph["facts"].to_pylist() if f["template_split"] == "train"]
    pairs = [(f["prompt"], f["answer"]) for f in facts]
    trainer.finetune(model, tok, {"facts": [f["text"] for f in facts]}, {"facts": 1.0}, 40, 32, 3e-3, 0, 4)
    return model, tok, pairs[:10], pairs[10:60]


def _forget_logprob(model, tok, pairs) -> float:
    lp, m = probes.answer_token_logps(model, tok, [p for p, _ in pairs], [a for _, a in pairs])
    return float(losses.sequence_logprob(lp, m).mean())


@pytest.mark.parametrize("method", losses.METHODS)
def test_every_method_lowers_the_forget_answer(tiny, method):
    """The forget term's direction, with the retain term off (on this barely trained model the
    retain NLL would otherwise dominate SimNPO's gamma = 0.125 forget term)."""
    import copy

    model, tok, forget, retain = tiny
    m = copy.deepcopy(model)
    before = _forget_logprob(m, tok, forget)
    hp = {"alpha": 0.0} if "alpha" in trainer.METHOD_DEFAULTS[method] else {}
    hist = trainer.unlearn(m, tok, method, forget, retain, steps=8, lr=3e-3, batch_size=8, seed=0, hp=hp)
    assert len(hist) == 8 and all(math.isfinite(h["loss"]) for h in hist)
    assert _forget_logprob(m, tok, forget) < before
    assert not m.training


def test_unlearn_with_zero_learning_rate_changes_nothing(tiny):
    import copy

    model, tok, forget, retain = tiny
    m = copy.deepcopy(model)
    trainer.unlearn(m, tok, "npo", forget, retain, steps=3, lr=1e-12, batch_size=4, seed=0)
    for (n, a), b in zip(model.state_dict().items(), m.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-8), n


def test_unlearn_bad_settings_are_clear(tiny):
    model, tok, forget, retain = tiny
    with pytest.raises(ValueError, match="unknown unlearning method 'forget_all'"):
        trainer.unlearn(model, tok, "forget_all", forget, retain, 1, 1e-4, 2, 0)
    with pytest.raises(ValueError, match="forget set is empty"):
        trainer.unlearn(model, tok, "grad_ascent", [], retain, 1, 1e-4, 2, 0)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        trainer.unlearn(model, tok, "npo", forget, retain, 1, 1e-4, 2, 0, {"betta": 1})
    with pytest.raises(ValueError, match="needs retain pairs"):
        trainer.unlearn(model, tok, "grad_diff", forget, [], 1, 1e-4, 2, 0)
    with pytest.raises(ValueError, match="rmu: layer 7"):
        trainer.unlearn(model, tok, "rmu", forget, retain, 1, 1e-4, 2, 0, {"layer": 7})


def test_finetune_stops_at_the_target_or_at_the_given_step(tiny, graph):
    _, tok, _, _ = tiny
    facts = [f["text"] for f in graph["facts"].to_pylist() if f["template_split"] == "train"]
    m = model_lib.build_model(len(tok), 32, 2, 2, 64, 64, seed=1)
    calls = []
    h = trainer.finetune(m, tok, {"facts": facts}, {"facts": 1.0}, 50, 8, 1e-3, 0, 2,
                         known=lambda: calls.append(1) or (1.0 if len(calls) >= 2 else 0.0), check_every=10)
    assert len(h) == 20 and len(calls) == 2  # checked at 10 and 20, reached at 20
    h = trainer.finetune(m, tok, {"facts": facts}, {"facts": 1.0}, 50, 8, 1e-3, 0, 2, stop_at=7)
    assert len(h) == 7


# --- evaluation -------------------------------------------------------------------------------

def test_score_pairs_matches_the_probe_and_the_span_rule(tiny):
    model, tok, forget, _ = tiny
    pairs = forget[:6] + [(forget[0][0], "Nobody")]
    spans = probes.answer_spans(tok, pairs)
    assert spans == [probes.answer_span(tok, p, a) for p, a in pairs]
    # ... and equal to per-string encoding: the full text's ids, the answer after the longest common prefix.
    for (p, a), (ids, start) in zip(pairs, spans):
        full, pre = tok.encode(f"{p} {a}"), tok.encode(p)
        lcp = next((i for i, (x, y) in enumerate(zip(pre, full)) if x != y), min(len(pre), len(full)))
        assert ids == full and start == lcp
    scored = evaluate.score_pairs(model, tok, pairs, batch_size=3)
    lp, m = probes.answer_token_logps(model, tok, [p for p, _ in pairs], [a for _, a in pairs])
    for i, s in enumerate(scored):
        assert np.allclose(s["logps"], lp[i][m[i]].numpy(), atol=1e-5)
    # MinK++ from the pass's per-position statistics equals the full-vocabulary definition.
    ids, start = spans[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
    vocab = logp[start - 1:].numpy()[None]
    ref = metrics.mia_mink_plus_plus(np.array([scored[0]["logps"]]), vocab, np.ones((1, vocab.shape[1]), bool))
    got = metrics.mink_plus_plus_from_stats(np.array([scored[0]["logps"]]), np.array([scored[0]["mu"]]),
                                            np.sqrt(np.array([scored[0]["var"]])), np.ones((1, vocab.shape[1]), bool))
    assert np.allclose(ref, got, atol=1e-4)


def test_per_triple_table_and_implicit_on_a_trained_model(tiny, graph):
    model, tok, _, _ = tiny
    rows = world.make_splits(graph, "triples", 0.1, 4, 0.1, "none", 3, seed=0).to_pylist()
    table = evaluate.per_triple(model, tok, graph["facts"], rows, batch_size=128)
    assert table.num_rows == len(rows)
    t = table.to_pylist()
    for r in t:
        assert 0 <= r["p_worst"] <= r["p_mean"] <= r["p_max"] <= 1
        assert abs(r["p_yes"] + r["p_no"] + r["p_unknown"] - 1) < 1e-9 and r["truth_ratio"] > 0
        assert r["recall_any"] or not r["recall"]
    inf = evaluate.implicit(table, rows).to_pylist()
    assert {r["triple_id"] for r in inf} == {r["triple_id"] for r in rows if r["split"] == "forget"}
    believed = {(r["head"], r["relation"], r["tail"]) for r in t if r["recall"]}
    for r in inf:
        assert r["inferable"] == judge.judge_inferable((r["head"], r["relation"], r["tail"]), believed)["inferable"]


def _row(tid, split, role="", recall=False, **kw):
    base = {"triple_id": tid, "head": "A" + tid, "relation": "born_in", "tail": "C", "kind": "base", "split": split,
            "role": role, "p_mean": 0.5, "p_worst": 0.4, "p_max": 0.6, "p_train": 0.5, "p_para": 0.5,
            "recall": recall, "recall_any": recall, "recall_para": recall, "truth_ratio": 0.5, "prob": 0.5,
            "es": 0.5, "em": 0.5, "mia_loss": -1.0, "mia_zlib": -0.1, "mia_mink": -2.0, "mia_minkpp": -1.0,
            "p_yes": 0.5, "p_no": 0.3, "p_unknown": 0.2, "yn_entropy": 1.2, "yn_believed": False}
    return {**base, **kw}


def test_summary_rates_by_hand():
    # Four targets: recalled; forgotten but inferable; forgotten and not inferable (x2); one control.
    per = pa.Table.from_pylist([
        _row("1", "forget", "target", True), _row("2", "forget", "target"), _row("3", "forget", "target"),
        _row("4", "forget", "target"), _row("5", "forget", "control"),
        _row("6", "retain_local", recall=True, truth_ratio=0.25), _row("7", "world", recall=True),
        _row("8", "holdout", mia_loss=-3.0, mia_zlib=-0.3, mia_mink=-4.0, mia_minkpp=-2.0)])
    inf = pa.Table.from_pylist([
        {"triple_id": i, "role": role, "recall": rec, "recall_any": rec, "inferable": infr,
         "support_survival": sv}
        for i, role, rec, infr, sv in [("1", "target", True, True, 1.0), ("2", "target", False, True, 1.0),
                                       ("3", "target", False, False, 0.5), ("4", "target", False, False, 0.0),
                                       ("5", "control", False, False, None)]])
    s = evaluate.summarise(per, inf)
    assert s["forget_target/fsr_s"] == 0.75 and s["forget_target/fsr_k"] == 0.5 and s["forget_target/gap"] == 0.25
    assert s["forget/fsr_s"] == 0.8 and s["forget/fsr_k"] == 0.6 and abs(s["forget/gap"] - 0.2) < 1e-12
    assert s["forget_target/support_survival"] == 0.625 and s["forget_control/gap"] == 0.0
    assert s["retain_local/truth_ratio"] == 0.75  # true_better: max(0, 1 - 0.25)
    assert s["mia/loss_auc"] == 1.0  # every forget triple scores above the holdout one
    parts = {"retain_prob": 0.5, "retain_recall": 1.0, "retain_truth_ratio": 0.75,
             "world_prob": 0.5, "world_recall": 1.0, "world_truth_ratio": 0.5}
    assert abs(s["model_utility"] - metrics.model_utility(parts)) < 1e-12
    # Against a reference (the gold model): identical truth ratios give forget quality 1.
    ref_inf = pa.Table.from_pylist([{**r, "inferable": False} for r in inf.to_pylist()])
    ref = pa.Table.from_pylist([{**r, "mia_loss": -1.0} for r in per.to_pylist()])  # members = holdout: AUC 0.5
    s2 = evaluate.summarise(per, inf, (ref, ref_inf))
    assert s2["forget_quality"] == 1.0
    assert s2["privleak"] == -100.0  # ((1 - 1.0) - 0.5) / 0.5 * 100: this model leaks membership fully
    assert s2["forget/relative_leak"] == 0.4  # 2 of 5 inferable here, none in the reference


def test_pareto_front_and_claims():
    assert plots.pareto_front([(0.2, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.9, 0.05)]) == \
        [(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)]
    rows = []
    for seed, gaps in enumerate([(0.3, 0.0, 0.02), (0.2, 0.01, 0.1)]):
        for name, gap in zip(("a", "b", "retrain"), gaps):
            m = {"forget_target/gap": gap, "forget_target/fsr_s": 0.9, "forget_target/fsr_k": 0.9 - gap,
                 "retain/recall": 0.8, "forget_target/support_survival": 0.7, "model_utility": 0.6}
            rows.append(compare.model_row(name, name, seed, m))
    summ = compare.summary(rows)
    assert summ[0]["gap"] == pytest.approx(0.25) and summ[0]["gap_sd"] == pytest.approx(math.sqrt(0.005))
    cl = {c["claim"]: c for c in compare.claims(summ)}
    assert len(cl) == 2  # no claim row for the bounds
    assert cl["instance-level evaluation overestimates forgetting (a)"]["verdict"] == "holds"
    assert cl["instance-level evaluation overestimates forgetting (b)"]["verdict"] == "does not hold"
    assert "gold retain model's own gap 0.06" in cl["instance-level evaluation overestimates forgetting (a)"]["evidence"]


def test_the_config_names_the_methods_and_modes_the_core_has():
    """entroflow/config.py keeps its own copies (it must not import torch); they must agree."""
    import typing

    from entroflow import config

    assert config.UNLEARN_METHODS == losses.METHODS
    assert {m: set(v) for m, v in config.UNLEARN_HPARAMS.items()} == \
        {m: set(v) for m, v in trainer.METHOD_DEFAULTS.items()}
    assert typing.get_args(config.ForgetCfg.model_fields["kind"].annotation) == world.FORGET_KINDS
    assert typing.get_args(config.UnlearningCfg.model_fields["closure"].annotation) == world.CLOSURES
