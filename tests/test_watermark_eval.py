"""Tests of the watermark evaluation: attacks on token ids, text quality and detection metrics.

Hand-computed cases throughout; the tokenizer is trained on grammar sentences (as the world's
tokenizer is, among other text) and the oracle LM is a tiny random-weight Qwen2, which is enough
to check that batched perplexity equals a plain loop.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from entroflow.data import grammar
from entroflow.model import build_model
from entroflow.tokenizer import BOS, train_tokenizer
from entroflow.watermark import attacks as A
from entroflow.watermark import metrics as M
from entroflow.watermark import plots as P
from entroflow.watermark import quality as Q


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    rng = random.Random(0)
    return [" ".join(grammar.sample_sentence(rng)[0]) for _ in range(600)]


@pytest.fixture(scope="module")
def tok(sentences):
    return train_tokenizer(sentences, 256)


@pytest.fixture(scope="module")
def classes(tok):
    return A.grammar_classes(tok)


IDS = list(range(10, 110))
CONTEXT = {"classes": {i: [10, 11, 12] for i in (10, 11, 12)}, "vocab": [200, 201, 202], "other": list(range(500, 700))}


# --- attacks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_strength_zero_is_identity_and_draws_nothing(name):
    rng = np.random.default_rng(5)
    assert A.ATTACKS[name](IDS, 0.0, rng, **CONTEXT) == IDS
    assert rng.random() == np.random.default_rng(5).random()  # no number consumed
    assert A.apply_attack(name, IDS, 0, seed=3, sample_id="p0/0", **CONTEXT) == IDS
    assert A.regeneration_prefix(IDS, 0.0) == IDS


def test_delete():
    assert A.apply_attack("delete", IDS, 1.0, seed=0) == []
    ids = list(range(2000))
    out = A.apply_attack("delete", ids, 0.5, seed=0, sample_id=7)
    assert abs(len(out) - 1000) < 3 * math.sqrt(2000 * 0.25)
    assert out == sorted(out) and set(out) <= set(ids)  # order kept, only removals


def test_same_seed_same_output_other_sample_other_output():
    ids = list(range(300))
    for name in A.ATTACKS:
        a = A.apply_attack(name, ids, 0.4, seed=1, sample_id="p1/0", **CONTEXT)
        assert a == A.apply_attack(name, ids, 0.4, seed=1, sample_id="p1/0", **CONTEXT)
        if name != "substitute":  # CONTEXT's classes only touch ids 10-12: too few to differ reliably
            assert a != A.apply_attack(name, ids, 0.4, seed=1, sample_id="p1/1", **CONTEXT)
            assert a != A.apply_attack(name, ids, 0.4, seed=2, sample_id="p1/0", **CONTEXT)


def test_unknown_attack_and_bad_strength():
    with pytest.raises(ValueError, match="paraphrase_xl"):
        A.apply_attack("paraphrase_xl", IDS, 0.3, seed=0)
    with pytest.raises(ValueError, match="regenerate_suffix"):
        A.apply_attack("regenerate_suffix", IDS, 0.3, seed=0)
    with pytest.raises(ValueError, match="strength"):
        A.apply_attack("delete", IDS, 1.5, seed=0)


def test_substitute_keeps_length_and_class():
    cls = {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3], 7: [7]}
    ids = [1, 2, 3, 7, 9] * 50
    out = A.apply_attack("substitute", ids, 1.0, seed=0, classes=cls)
    assert len(out) == len(ids)
    for a, b in zip(ids, out):
        if a in (1, 2, 3):
            assert b in (1, 2, 3) and b != a  # strength 1: every class member is replaced
        else:
            assert b == a  # singleton class and unknown ids are kept


def test_grammar_classes_keep_sentences_grammatical(tok, classes, sentences):
    vocab = tok.get_vocab()
    brin, mesk, greva, grevu = (vocab.get("\u2581" + w) for w in ("brin", "mesk", "greva", "grevu"))
    assert brin in classes and mesk in classes[brin] and greva not in classes[brin]
    assert greva in classes and grevu not in classes[greva]  # number agreement kept
    for w in ("dun", "mael", "droma", "zum", "la"):  # collocations, phrasal verbs, determiners
        assert vocab.get("\u2581" + w) not in classes
    changed = 0
    for i, text in enumerate(sentences[:60]):
        ids = tok.encode(text, add_special_tokens=False)
        out = A.apply_attack("substitute", ids, 1.0, seed=0, sample_id=i, classes=classes)
        new = tok.decode(out)
        assert grammar.is_grammatical(new), (text, new)
        assert [grammar.WORD_CATEGORY[w] for w in new.split(" ")] == [grammar.WORD_CATEGORY[w] for w in text.split(" ")]
        changed += new != text
    assert changed >= 50


def test_insert():
    ids = list(range(2000))
    out = A.apply_attack("insert", ids, 0.3, seed=0, vocab=[-1, -2])
    assert abs((len(out) - 2000) - 600) < 3 * math.sqrt(2000 * 0.21)
    assert [t for t in out if t >= 0] == ids and set(out) - set(ids) <= {-1, -2}
    assert len(A.apply_attack("insert", ids[:10], 1.0, seed=0, vocab=[-1])) == 20


def test_copy_paste():
    ids = list(range(40))
    other = list(range(100, 200))
    for seed in range(5):
        out = A.apply_attack("copy_paste", ids, 0.25, seed=seed, other=other)
        assert len(out) == 40
        kept = [t for t in out if t < 100]
        assert len(kept) == 30 and kept == list(range(kept[0], kept[0] + 30))  # one span of the original
        j = out.index(kept[0])
        assert out[j:j + 30] == kept  # contiguous in the output too
        assert [t for t in out if t >= 100] == other[:10]
    assert A.apply_attack("copy_paste", ids, 1.0, seed=0, other=other) == other[:40]
    short = A.apply_attack("copy_paste", ids, 0.5, seed=0, other=[900, 901])  # documented: shorter output
    assert len(short) == 22 and sorted(t for t in short if t >= 900) == [900, 901]


def test_regeneration_prefix():
    assert A.regeneration_prefix(list(range(10)), 0.3) == list(range(7))
    assert A.regeneration_prefix(list(range(10)), 1.0) == []


# --- quality ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm():
    return build_model(40, 32, 2, 2, 64, 64, seed=0)


def _hand_ppl(model, prompt, comp):
    ids = torch.tensor([prompt + comp])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    nll = [-logp[t - 1, ids[0, t]].item() for t in range(len(prompt), len(prompt) + len(comp))]
    return math.exp(sum(nll) / len(nll))


def test_conditional_perplexity_matches_hand_loop_and_ignores_batching(lm):
    g = random.Random(1)
    prompts = [[BOS] + [g.randrange(4, 40) for _ in range(g.randrange(1, 9))] for _ in range(5)]
    comps = [[g.randrange(4, 40) for _ in range(g.randrange(1, 12))] for _ in range(5)]
    hand = np.array([_hand_ppl(lm, p, c) for p, c in zip(prompts, comps)])
    for side in ("right", "left"):
        for bs in (1, 2, 5):
            got = Q.conditional_perplexity(lm, prompts, comps, batch_size=bs, padding_side=side)
            np.testing.assert_allclose(got, hand, rtol=1e-4)
    # an empty completion is unscored; unconditional = a [<bos>] prompt
    got = Q.conditional_perplexity(lm, [[BOS], [BOS, 5]], [[], [6, 7]])
    assert math.isnan(got[0]) and got[1] == pytest.approx(_hand_ppl(lm, [BOS, 5], [6, 7]), rel=1e-4)
    agg = Q.aggregate_perplexity([2.0, 8.0, float("nan")])
    assert agg == {"ppl": pytest.approx(4.0), "ppl_median": 5.0, "ppl_mean": 5.0, "n": 2}


def test_diversity_hand_cases():
    assert Q.distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)  # (1,2) (2,1) (1,2) | (1,2)
    assert Q.distinct_n([[1, 2, 3], [3, 1]], 2) == pytest.approx(1.0)  # no n-gram spans two sequences
    assert Q.distinct_n([[1, 1, 1]], 1) == pytest.approx(1 / 3)
    assert math.isnan(Q.distinct_n([[1]], 2))
    assert Q.repetition_n([1, 2, 1, 2, 1], 2) == pytest.approx(1 - 2 / 4)
    assert Q.repetition_n([1, 2], 3) == 0.0
    # rep_2 = 1/2, rep_3 = 1 - 2/3, rep_4 = 1 - 2/2 = 0 -> diversity = 1/2 * 2/3 * 1 = 1/3
    seq = [1, 2, 1, 2, 1]
    assert Q.diversity(seq) == pytest.approx(1 / 3)
    assert Q.log_diversity(seq) == pytest.approx(-math.log(2 / 3))
    # one token repeated: rep_2 = 3/4, rep_3 = 2/3, rep_4 = 1/2 -> diversity 1/24 (-> 0 as the text grows)
    assert Q.log_diversity([7, 7, 7, 7, 7]) == pytest.approx(-math.log(1 - 1 / 24))
    assert Q.log_diversity(list(range(10))) == Q.LOG_DIV_CAP  # no repeats: capped
    assert Q.distinct_n([["la", "brin"], ["la", "brin"]], 2) == 0.5  # words work too


# --- detection metrics --------------------------------------------------------------------------------

def test_separated_and_identical():
    m = M.detection_metrics([5.0, 6.0, 7.0] * 40, [0.0, 1.0, 2.0] * 40, fprs=(0.01,))
    assert m["auroc"] == 1.0 and m["tpr_at_fpr_0.01"] == 1.0 and m["best_f1"] == 1.0
    assert m["median_score_pos"] == 6.0 and m["median_score_neg"] == 1.0
    rng = np.random.default_rng(0)
    m = M.detection_metrics(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(m["auroc"] - 0.5) < 0.03


def test_empirical_threshold_rule_and_resolution():
    neg = list(range(100))  # FPR 1% lets exactly one negative (99) through
    pos = [98.5, 99, 99.5, 100, 50]
    m = M.detection_metrics(pos, neg, fprs=(0.01, 0.02, 0.001))
    # lowest admissible threshold: 98.5 flags negative 99 only, and positives 98.5 ... 100
    assert m["threshold_at_fpr_0.01"] == 98.5 and m["tpr_at_fpr_0.01"] == pytest.approx(4 / 5)
    assert m["realised_fpr_at_fpr_0.01"] == pytest.approx(0.01)
    m2 = M.detection_metrics([99, 99.5, 100, 50], neg, fprs=(0.01, 0.02))  # without the 98.5 positive
    assert m2["threshold_at_fpr_0.01"] == 99 and m2["tpr_at_fpr_0.01"] == pytest.approx(3 / 4)
    assert m2["threshold_at_fpr_0.02"] == 98 and m2["realised_fpr_at_fpr_0.02"] == pytest.approx(0.02)
    assert math.isnan(m["tpr_at_fpr_0.001"]) and m["tpr_at_fpr_0.001_resolved"] == 0.0  # 100 < 1/0.001
    # ties: two negatives share the top score; 1% of 100 cannot let both through, so the threshold
    # moves above them (realised FPR 0 < target)
    m = M.detection_metrics([99, 99.5], list(range(98)) + [99, 99], fprs=(0.01,))
    assert m["tpr_at_fpr_0.01"] == pytest.approx(1 / 2) and m["realised_fpr_at_fpr_0.01"] == 0.0


def test_theoretical_tpr_and_edge_cases():
    m = M.detection_metrics([3, 4], [0, 1], pos_p=[0.005, 0.02], neg_p=[0.5, 0.0005], fprs=(0.01,), z_threshold=4)
    assert m["tpr_at_fpr_0.01_theory"] == 0.5 and m["realised_fpr_at_fpr_0.01_theory"] == 0.5
    assert m["tpr_at_z"] == 0.5 and m["fpr_at_z"] == 0.0
    m = M.detection_metrics([], [1.0, 2.0])
    assert math.isnan(m["auroc"]) and math.isnan(m["tpr_at_fpr_0.01"]) and math.isnan(m["best_f1"])
    m = M.detection_metrics([1.0, 1.0], [1.0, 1.0])  # all equal
    assert m["auroc"] == 0.5
    m = M.detection_metrics([float("nan"), 5.0], [0.0] * 100, fprs=(0.01,))  # NaN positive: undetected
    assert m["n_pos_nan"] == 1 and m["tpr_at_fpr_0.01"] == 0.5 and m["auroc"] == 0.5


def test_tokens_to_detect_and_length_curve():
    assert M.tokens_to_detect([float("nan"), 1.0, 3.9, 4.0, 5.0], 4.0) == 4
    assert M.tokens_to_detect([1.0, 2.0], 4.0) is None
    curve = M.detection_vs_length([[1, 2, 5, 6], [1, 5], [0, 0, 0, 0]], [1, 2, 4], 4.0)
    assert curve == {"T": [1, 2, 4], "rate": [0.0, 1 / 3, 2 / 3], "n_full": [3, 3, 2]}
    assert M.mean_and_spread([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert M.mean_and_spread([0.5]) == (0.5, 0.0, 1)


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    pos, neg = list(rng.normal(4, 1, 60)), list(rng.normal(0, 1, 60))
    paths = [
        P.plot_roc({"kgw": (pos, neg), "unigram": (pos, neg[:30])}, tmp_path / "roc.png", log_fpr=True),
        P.plot_z_histograms(pos + [float("nan")], {"unwatermarked": neg, "human": neg[:20]}, tmp_path / "z.png"),
        P.plot_quality_tradeoff({"kgw": [{"ppl": 12, "tpr": 0.9, "ppl_err": 0.5, "label": "δ=1"}, {"ppl": 15, "tpr": 1.0}],
                                 "ltw": [{"ppl": 11, "tpr": 0.95}]}, tmp_path / "pareto.png", reference_ppl=10.0),
        P.plot_attack_strength({"delete": {"kgw": [{"strength": 0, "value": 1}, {"strength": 0.3, "value": 0.8, "err": 0.05}]},
                                "substitute": {"kgw": [{"strength": 0.5, "value": 0.6}]}}, tmp_path / "attacks.png"),
        P.plot_detection_vs_length({"kgw": M.detection_vs_length([[1, 5], [5, 6]], [1, 2], 4.0)}, tmp_path / "len.png"),
    ]
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    assert P._pareto([(12, 0.9), (15, 1.0), (11, 0.95), (13, 0.8)]) == [(11, 0.95), (15, 1.0)]
