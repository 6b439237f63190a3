"""Tests of the OOD core: metrics, per-layer detectors, layer fusion and training-free selection.

Hand-computed cases and direct numpy formulas throughout; everything runs on small arrays in well
under a second per test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import differential_entropy
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score

from entroflow.ood import detectors as D
from entroflow.ood import fusion as F
from entroflow.ood.metrics import ood_metrics


# --- metrics --------------------------------------------------------------------------------------

def test_metrics_match_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(0, 1, 300), rng.normal(1, 1.5, 200)
    m = ood_metrics(s_id, s_ood)
    assert set(m) == {"auroc", "aupr_in", "aupr_out", "fpr95_id_pos", "fpr95_ood_pos"}
    y = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[s_id, s_ood]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["auroc"] == pytest.approx((s_ood[:, None] > s_id[None]).mean())  # Mann-Whitney, no ties
    assert m["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s))
    assert m["aupr_out"] == pytest.approx(average_precision_score(y, s))
    # fpr95_ood_pos: the smallest threshold catching 95 % of OOD, by sorting.
    t = np.sort(s_ood)[::-1][math.ceil(0.95 * 200) - 1]
    assert m["fpr95_ood_pos"] == pytest.approx((s_id >= t).mean())
    t = np.sort(s_id)[math.ceil(0.95 * 300) - 1]  # keep the 285 lowest ID scores as ID
    assert m["fpr95_id_pos"] == pytest.approx((s_ood <= t).mean())


def test_perfect_reversed_and_tied_scores():
    ids, oods = np.arange(10.0), np.arange(10.0) + 100
    perfect = {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95_id_pos": 0.0, "fpr95_ood_pos": 0.0}
    assert ood_metrics(ids, oods) == pytest.approx(perfect)
    rev = ood_metrics(oods, ids)
    assert (rev["auroc"], rev["fpr95_id_pos"], rev["fpr95_ood_pos"]) == (0.0, 1.0, 1.0)
    assert ood_metrics(np.ones(7), np.ones(5))["auroc"] == 0.5  # ties count half


def test_the_two_fpr95_conventions_differ_on_an_asymmetric_example():
    s_id = np.arange(20.0)                                # 0..19
    s_ood = np.r_[5.0, 6.0, np.arange(25.0, 43.0)]        # 5, 6, 25..42 (20 scores)
    m = ood_metrics(s_id, s_ood)
    # ID positive: keep 19/20 ID as ID -> accept s <= 18; OOD accepted: 5 and 6 -> 2/20 = 0.10.
    assert m["fpr95_id_pos"] == pytest.approx(0.10)
    # OOD positive: catch 19/20 OOD -> flag s >= 6 (6 and 25..42); ID flagged: 6..19 -> 14/20 = 0.70.
    assert m["fpr95_ood_pos"] == pytest.approx(0.70)


def test_auroc_invariant_under_monotone_transform():
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(0, 1, 100), rng.normal(0.5, 1, 80)
    transformed = ood_metrics(np.exp(3 * s_id) + 2, np.exp(3 * s_ood) + 2)["auroc"]
    assert transformed == pytest.approx(ood_metrics(s_id, s_ood)["auroc"])


def test_metrics_reject_empty_or_non_finite_sides():
    with pytest.raises(ValueError, match="score_id is empty"):
        ood_metrics([], [1.0])
    with pytest.raises(ValueError, match="score_ood is empty"):
        ood_metrics([1.0], [])
    with pytest.raises(ValueError, match="score_ood has 1 non-finite"):
        ood_metrics([1.0, 2.0], [np.nan, 3.0])
    with pytest.raises(ValueError, match="score_id has 1 non-finite"):
        ood_metrics([np.inf], [3.0])


# --- feature detectors ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_class():
    rng = np.random.default_rng(2)
    a = rng.multivariate_normal([0, 0, 0], [[2, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 0.5]], 40)
    b = rng.multivariate_normal([3, -1, 1], [[1, 0, 0], [0, 2, 0.3], [0, 0.3, 1]], 30)
    x = np.vstack([a, b])
    y = np.r_[np.zeros(40, int), np.ones(30, int)]
    query = rng.normal(0, 2, (25, 3))
    return x, y, query


def _maha_direct(x, y, query):
    """min_k (q - mu_k)^T Sigma^-1 (q - mu_k) with Sigma the ML covariance of class-centred features."""
    means = np.stack([x[y == k].mean(0) for k in np.unique(y)])
    centred = x - means[np.searchsorted(np.unique(y), y)]
    prec = np.linalg.inv(centred.T @ centred / len(x))
    d = np.stack([np.einsum("ij,jk,ik->i", query - mu, prec, query - mu) for mu in means], 1)
    return d.min(1)


def test_mahalanobis_equals_direct_computation(two_class):
    x, y, q = two_class
    np.testing.assert_allclose(D.Mahalanobis("empirical").fit(x, y).score(q), _maha_direct(x, y, q), rtol=1e-9)
    one_class = _maha_direct(x, np.zeros(len(x), int), q)
    np.testing.assert_allclose(D.Mahalanobis("empirical").fit(x).score(q), one_class, rtol=1e-9)
    out = D.Mahalanobis().fit(x, y).score(q)  # default: Ledoit-Wolf's shrunk precision, same formula
    means = np.stack([x[:40].mean(0), x[40:].mean(0)])
    prec = LedoitWolf(assume_centered=True).fit(x - means[y]).precision_
    expected = np.min([np.einsum("ij,jk,ik->i", q - mu, prec, q - mu) for mu in means], axis=0)
    assert out.dtype == np.float64 and out.shape == (25,)
    np.testing.assert_allclose(out, expected, rtol=1e-9)


def test_rmd_equals_direct_computation(two_class):
    x, y, q = two_class
    expected = _maha_direct(x, y, q) - _maha_direct(x, np.zeros(len(x), int), q)
    np.testing.assert_allclose(D.RelativeMahalanobis("empirical").fit(x, y).score(q), expected, rtol=1e-9, atol=1e-9)


def test_knn_equals_brute_force_cosine_kth_neighbour(two_class):
    x, _, q = two_class
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cos_dist = 1 - qn @ xn.T
    expected = np.sqrt(2 * np.sort(cos_dist, axis=1)[:, 4])  # |a-b| = sqrt(2 (1 - cos)) on the sphere
    np.testing.assert_allclose(D.CosineKNN(k=5).fit(x).score(q), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cls", [D.Mahalanobis, D.RelativeMahalanobis, D.CosineKNN])
def test_detector_errors_name_the_class(cls):
    name = cls.__name__
    with pytest.raises(D.DetectorError, match=rf"^{name}: score\(\) called before fit\(\)$"):
        cls().score(np.zeros((2, 3)))
    with pytest.raises(D.DetectorError, match=rf"^{name}: fit\(\) needs at least 2 samples, got 0"):
        cls().fit(np.zeros((0, 3)))
    with pytest.raises(D.DetectorError, match=rf"^{name}: fit\(\) needs at least 2 samples, got 1"):
        cls().fit(np.ones((1, 3)))
    fitted = cls(**({"k": 2} if cls is D.CosineKNN else {})).fit(np.random.default_rng(0).normal(size=(12, 3)))
    with pytest.raises(D.DetectorError, match=rf"^{name}: score\(\) got 4-dimensional features, fit\(\) had 3"):
        fitted.score(np.ones((2, 4)))
    with pytest.raises(D.DetectorError, match=rf"^{name}: score\(\) expects a 2-D"):
        fitted.score(np.ones(3))
    with pytest.raises(D.DetectorError, match=rf"^{name}: fit\(\) got 1 non-finite"):
        cls().fit(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_knn_needs_k_samples_and_make_detector():
    with pytest.raises(D.DetectorError, match=r"^CosineKNN: .*k=5.*n=3"):
        D.CosineKNN(k=5).fit(np.ones((3, 2)))
    assert isinstance(D.make_detector("rmd", covariance="empirical"), D.RelativeMahalanobis)
    assert D.make_detector("knn", k=3).k == 3
    with pytest.raises(D.DetectorError, match="mahalanobis, rmd, knn"):
        D.make_detector("vim")


def test_logit_scores_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    s = D.logit_scores(logits)
    assert set(s) == set(D.LOGIT_DETECTORS)
    torch.testing.assert_close(s["msp"], torch.tensor([-0.75, -0.5]))
    torch.testing.assert_close(s["max_logit"], torch.tensor([-math.log(3.0), -1.0]))
    torch.testing.assert_close(s["energy"], torch.tensor([-math.log(4.0), -(1 + math.log(2.0))]))
    # H(1/4, 3/4) = 1/4 log 4 + 3/4 log(4/3) = log 4 - 3/4 log 3; H(1/2, 1/2) = log 2.
    torch.testing.assert_close(s["entropy"], torch.tensor([math.log(4) - 0.75 * math.log(3), math.log(2)]))
    assert all(v.dtype == torch.float32 for v in D.logit_scores(logits.bfloat16()).values())


# --- fusion and selection -------------------------------------------------------------------------

def test_fuse_single_layer_is_z_score_with_same_auroc():
    rng = np.random.default_rng(3)
    val = {1: rng.normal(5, 2, 50)}
    stats = F.layer_stats(val)
    assert stats[1] == pytest.approx((val[1].mean(), val[1].std()))
    s_id, s_ood = rng.normal(5, 2, 40), rng.normal(7, 2, 30)
    test = {1: np.r_[s_id, s_ood]}
    fused = F.fuse(test, [1], stats)
    np.testing.assert_allclose(fused, (test[1] - val[1].mean()) / val[1].std())
    assert ood_metrics(fused[:40], fused[40:])["auroc"] == pytest.approx(ood_metrics(s_id, s_ood)["auroc"])
    assert F.layer_stats({0: np.full(5, 2.0)})[0] == (2.0, F.STD_FLOOR)  # constant layer: no 0 division


def test_candidate_sets_and_entropies_by_hand():
    assert F.candidate_sets([1, 2, 3], 3) == [(3,), (1, 3), (2, 3), (1, 2, 3)]
    one_hot = {1: np.array([[1.0, 0.0], [0.0, 1.0]]), 2: np.array([[0.0, 1.0], [1.0, 0.0]])}
    assert F.mean_softmax_entropy(one_hot, [1, 2]) == pytest.approx(math.log(2))
    assert F.mean_softmax_entropy(one_hot, [1]) == pytest.approx(0.0)
    # score_entropy: a histogram estimate of the differential entropy (bin width SCORE_BIN in z units)
    val = {4: np.random.default_rng(4).normal(size=20000)}
    stats = F.layer_stats(val)
    z = (val[4] - stats[4][0]) / stats[4][1]
    gaussian = 0.5 * math.log(2 * math.pi * math.e)  # a unit normal's differential entropy
    assert F.score_entropy(val, stats, [4]) == pytest.approx(gaussian, abs=0.02)
    assert F.score_entropy(val, stats, [4]) == pytest.approx(differential_entropy(z), abs=0.02)
    # by hand: z-scores -1, -1, 1, 1 fall in two bins of width w with p = 1/2 each:
    # H = -sum p log(p / w) = -log(0.5 / w)
    two = {0: np.array([0.0, 0.0, 2.0, 2.0])}
    assert F.score_entropy(two, F.layer_stats(two), [0]) == pytest.approx(-math.log(0.5 / F.SCORE_BIN))
    ties = {0: np.r_[np.zeros(50), np.random.default_rng(0).normal(size=50)]}
    assert np.isfinite(F.score_entropy(ties, F.layer_stats(ties), [0]))


def test_select_layers_exhaustive_with_ties():
    table = {(3,): 1.0, (1, 3): 0.5, (2, 3): 0.7, (1, 2, 3): 0.5}
    best, values = F.select_layers(table.__getitem__, [1, 2, 3], 3)
    assert best == (1, 3) and values == table  # tie with (1, 2, 3) goes to the smaller set
    table[(2, 3)] = 0.2
    assert F.select_layers(table.__getitem__, [1, 2, 3], 3)[0] == (2, 3)
    with pytest.raises(ValueError, match="NaN"):
        F.select_layers(lambda s: float("nan"), [1, 2], 2)


def test_select_layers_greedy_path_and_stop():
    weight = {1: -1.0, 2: -3.0, 3: 2.0, 4: 0.0}
    best, values = F.select_layers(lambda s: sum(weight[l] for l in s), [1, 2, 3, 4], 4, exhaustive_max=1)
    # (4,) 0 -> (2,4) -3 -> (1,2,4) -4; (1,2,3,4) = -2 is worse, so it stops.
    assert best == (1, 2, 4)
    assert set(values) == {(4,), (1, 4), (2, 4), (3, 4), (1, 2, 4), (2, 3, 4), (1, 2, 3, 4)}
    assert (1, 3, 4) not in values  # exhaustive would have evaluated it
    best, values = F.select_layers(len, [1, 2, 3, 4], 4, exhaustive_max=1)  # nothing improves on (4,)
    assert best == (4,) and len(values) == 4


def test_oracle_layers_picks_best_auroc():
    table = {(3,): 0.8, (1, 3): 0.9, (2, 3): 0.95, (1, 2, 3): 0.95}
    best, values = F.oracle_layers(table.__getitem__, [1, 2, 3], 3)
    assert best == (2, 3) and values == table


def test_selection_is_a_function_of_id_val_data_only():
    rng = np.random.default_rng(5)
    layers, final, n = [0, 1, 2, 3, 4], 4, 150
    shift = {0: 0.0, 1: 0.3, 2: 1.5, 3: 0.8, 4: 0.5}  # layer 2 separates best
    val = {l: rng.normal(0, 1 + 0.2 * l, n) for l in layers}
    probs = {l: rng.dirichlet(np.full(6, 0.5 + l), n) for l in layers}
    test = {l: np.r_[rng.normal(0, 1 + 0.2 * l, n), rng.normal(shift[l], 1 + 0.2 * l, n)] for l in layers}
    is_ood = np.r_[np.zeros(n, bool), np.ones(n, bool)]

    def pipeline(is_ood):
        stats = F.layer_stats(val)
        by_probs = F.select_layers(lambda s: F.mean_softmax_entropy(probs, s), layers, final)
        by_scores = F.select_layers(lambda s: F.score_entropy(val, stats, s), layers, final)

        def auroc(s):
            fused = F.fuse(test, s, stats)
            return ood_metrics(fused[~is_ood], fused[is_ood])["auroc"]

        return by_probs, by_scores, F.oracle_layers(auroc, layers, final)

    (sel_a, vals_a), (sel_b, vals_b), (oracle, aurocs) = pipeline(is_ood)
    assert 2 in oracle
    (sel_a2, vals_a2), (sel_b2, vals_b2), (_, aurocs2) = pipeline(rng.permutation(is_ood))
    assert (sel_a, sel_b, vals_a, vals_b) == (sel_a2, sel_b2, vals_a2, vals_b2)
    assert aurocs != aurocs2  # the labels did change, and only the oracle saw them
