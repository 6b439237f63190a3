"""Unlearning metrics against hand computations (entroflow/unlearn/metrics.py)."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy.stats import hmean, ks_2samp

from entroflow.unlearn import metrics as M

L = math.log
NEG_INF = float("-inf")


def test_answer_probability_masks_padding():
    # row 0: tokens p = 0.5, 0.25 then padding (-inf must not leak); row 1: one token p = 0.8
    lp = torch.tensor([[L(0.5), L(0.25), NEG_INF], [L(0.8), float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = M.answer_probability(lp, mask)
    assert got == pytest.approx([math.exp((L(0.5) + L(0.25)) / 2), 0.8])
    assert got[0] == pytest.approx(math.sqrt(0.5 * 0.25))


def test_answer_probability_errors():
    with pytest.raises(ValueError, match="mask has a sequence with no answer tokens"):
        M.answer_probability(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="mask must have the shape of token_logps"):
        M.answer_probability(np.zeros((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="token_logps must be 2-D"):
        M.answer_probability(np.zeros(3), np.ones(3))


def test_truth_ratio_equal_probabilities_is_one():
    lp = np.log(np.array([[0.3, 0.6], [0.2, 0.9]]))
    mask = np.ones((2, 2))
    pert = np.stack([lp, lp, lp], axis=1)  # [B, K=3, T]
    r = M.truth_ratio(pert, np.ones_like(pert), lp, mask)
    assert r == pytest.approx([1.0, 1.0])
    assert M.truth_ratio_summary(r, "closer_to_1_better") == pytest.approx(1.0)
    assert M.truth_ratio_summary(r, "true_better") == pytest.approx(0.0)


def test_truth_ratio_geometric_mean_over_perturbations_by_hand():
    # one question; paraphrase tokens p = 0.5, 0.5 (P~ = 0.5); two perturbations with P~ = 0.1 and
    # 0.4 (single tokens, padded) -> numerator exp(mean(log .1, log .4)) = sqrt(0.04) = 0.2
    para = np.array([[L(0.5), L(0.5)]])
    pert = np.array([[[L(0.1), -99.0], [L(0.4), NEG_INF]]])
    pmask = np.array([[[1, 0], [1, 0]]])
    r = M.truth_ratio(pert, pmask, para, np.ones((1, 2)))
    assert r == pytest.approx([0.2 / 0.5])
    # the same through the list form (different lengths per perturbation)
    r_list = M.truth_ratio(
        [np.array([[L(0.1)]]), np.array([[L(0.4), 0.0]])], [np.ones((1, 1)), np.array([[1, 0]])],
        para, np.ones((1, 2)),
    )
    assert r_list == pytest.approx(r)


def test_truth_ratio_summaries_by_hand():
    r = np.array([0.4, 2.0])
    # closer_to_1_better: mean(min(.4, 2.5), min(2, .5)) = (0.4 + 0.5)/2
    assert M.truth_ratio_summary(r, "closer_to_1_better") == pytest.approx((0.4 + 0.5) / 2)
    # true_better: mean(max(0, 1 - .4), max(0, 1 - 2)) = 0.6/2
    assert M.truth_ratio_summary(r, "true_better") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="mode must be one of"):
        M.truth_ratio_summary(r, "false_better")


def test_truth_ratio_errors():
    para = np.zeros((2, 2))
    with pytest.raises(ValueError, match="paraphrased_logps must have the batch size"):
        M.truth_ratio(np.zeros((3, 2)), np.ones((3, 2)), para, np.ones((2, 2)))
    with pytest.raises(ValueError, match="perturbed_mask must have the shape of perturbed_logps"):
        M.truth_ratio(np.zeros((2, 2, 2)), np.ones((2, 2)), para, np.ones((2, 2)))
    with pytest.raises(ValueError, match="paraphrased_mask has a sequence with no answer tokens"):
        M.truth_ratio(np.zeros((2, 2)), np.ones((2, 2)), para, np.array([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match=r"perturbed_mask\[1\] has a sequence"):
        M.truth_ratio([np.zeros((2, 2))] * 2, [np.ones((2, 2)), np.zeros((2, 2))], para, np.ones((2, 2)))


def test_forget_quality_is_ks_pvalue():
    a = np.array([0.1, 0.5, 0.7, 0.9, 1.2])
    b = np.array([0.3, 0.4, 0.8, 1.5, 2.0, 2.2])
    assert M.forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert M.forget_quality(a, a.copy()) == 1.0
    with pytest.raises(ValueError, match="truth_ratios_retain_model must be a non-empty"):
        M.forget_quality(a, [])


def test_model_utility_harmonic_mean():
    vals = {"retain_prob": 0.9, "retain_rouge": 0.6, "retain_tr": 0.3}
    assert M.model_utility(vals) == pytest.approx(hmean([0.9, 0.6, 0.3]))
    assert M.model_utility(vals) == pytest.approx(3 / (1 / 0.9 + 1 / 0.6 + 1 / 0.3))
    assert M.model_utility({**vals, "wf_rouge": 0.0}) == 0.0
    with pytest.raises(ValueError, match="values must hold at least one component"):
        M.model_utility({})
    with pytest.raises(ValueError, match="values must be finite and >= 0"):
        M.model_utility({"a": -0.1})


def test_extraction_strength_hand_cases():
    # row 0: all 3 answer tokens right -> k* = 0 -> 1.0
    # row 1: last answer token wrong -> k* = |y| = 3 -> 0.0 (never extracted)
    # row 2: answer tokens [wrong, right, right] after one prompt position -> k* = 1 -> 1 - 1/3
    # row 3: [right, wrong, right, right] -> k* = 2 -> 1 - 2/4
    correct = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [1, 0, 1, 1, 0],
    ], dtype=torch.bool)
    mask = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ])
    assert M.extraction_strength(correct, mask) == pytest.approx([1.0, 0.0, 1 - 1 / 3, 1 - 2 / 4])
    with pytest.raises(ValueError, match="mask has a sequence with no answer tokens"):
        M.extraction_strength(correct, torch.zeros(4, 5))


def test_exact_memorization_by_hand():
    pred = np.array([[5, 6, 7, 9], [1, 2, 3, 4]])
    tgt = np.array([[5, 0, 7, 0], [1, 2, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # padding at 9 vs 0 must not count
    assert M.exact_memorization(pred, tgt, mask) == pytest.approx([2 / 3, 1.0])
    with pytest.raises(ValueError, match="pred_tokens must have the shape of target_tokens"):
        M.exact_memorization(pred[:, :3], tgt, mask)


def test_mia_loss_and_zlib_by_hand():
    lp = np.array([[L(0.5), L(0.2), NEG_INF], [L(0.9), 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    loss = M.mia_loss(lp, mask)
    assert loss == pytest.approx([(L(0.5) + L(0.2)) / 2, L(0.9)])
    texts = ["aaaaaaaaaaaaaaaaaaaaaaaa", "The capital of Kaloru is Vemba."]
    sizes = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    assert sizes[0] < len(texts[0])  # repetitive text compresses
    got = M.mia_zlib(lp, mask, texts)
    assert got == pytest.approx([loss[0] / sizes[0], loss[1] / sizes[1]])
    with pytest.raises(ValueError, match="texts must be a list of 2 strings"):
        M.mia_zlib(lp, mask, texts[:1])


def test_mia_mink_by_hand():
    # 5 answer tokens, k = 0.4 -> n = int(2.0) = 2 lowest: log .1, log .2
    lp = np.array([[L(0.9), L(0.1), L(0.5), L(0.2), L(0.7), NEG_INF]])
    mask = np.array([[1, 1, 1, 1, 1, 0]])
    assert M.mia_mink(lp, mask, k=0.4) == pytest.approx([(L(0.1) + L(0.2)) / 2])
    # k small -> at least one token
    assert M.mia_mink(lp, mask, k=0.01) == pytest.approx([L(0.1)])
    with pytest.raises(ValueError, match="k must be in"):
        M.mia_mink(lp, mask, k=0.0)


def test_mia_mink_plus_plus_by_hand():
    # vocab of 2 with p = (0.8, 0.2) at both positions; answer tokens 0 then 1
    p = np.array([0.8, 0.2])
    vocab = np.log(np.array([[p, p]]))
    lp = np.array([[L(0.8), L(0.2)]])
    mu = 0.8 * L(0.8) + 0.2 * L(0.2)
    sigma = math.sqrt(0.8 * L(0.8) ** 2 + 0.2 * L(0.2) ** 2 - mu**2)
    z = [(L(0.8) - mu) / sigma, (L(0.2) - mu) / sigma]
    assert M.mia_mink_plus_plus(lp, vocab, np.ones((1, 2)), k=0.5) == pytest.approx([min(z)])
    assert M.mia_mink_plus_plus(lp, vocab, np.ones((1, 2)), k=1.0) == pytest.approx([sum(z) / 2])
    with pytest.raises(ValueError, match="vocab_logps must be"):
        M.mia_mink_plus_plus(lp, vocab[:, :1], np.ones((1, 2)))


def test_mia_auc():
    assert M.mia_auc([3.0, 4.0, 5.0], [0.0, 1.0]) == 1.0
    assert M.mia_auc([0.0, 1.0], [3.0, 4.0]) == 0.0
    assert M.mia_auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    # one of 2x2 pairs misordered -> 3/4
    assert M.mia_auc([2.0, 4.0], [1.0, 3.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="nonmember_scores must be a non-empty"):
        M.mia_auc([1.0], [])


def test_privleak_by_hand():
    # MUSE flip: AUC' = 1 - AUC; retain 0.5 -> 0.5; unlearned 0.9 -> 0.1: (0.1 - 0.5)/0.5*100 = -80
    assert M.privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert M.privleak(0.5, 0.5) == 0.0
    assert M.privleak(0.3, 0.5) == pytest.approx((0.7 - 0.5) / 0.5 * 100)
    with pytest.raises(ValueError, match="auc_retain must be < 1"):
        M.privleak(0.5, 1.0)
    with pytest.raises(ValueError, match="auc_unlearned must be in"):
        M.privleak(1.5, 0.5)
