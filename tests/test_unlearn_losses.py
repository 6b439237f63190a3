"""Unlearning objectives (entroflow.unlearn.losses) on tiny hand-made batches.

Expected values are computed by hand in the comments and with math.log / math.exp next to each check.
"""
from __future__ import annotations

import math

import pytest
import torch

from entroflow.unlearn.losses import (
    METHODS,
    grad_ascent,
    grad_diff,
    idk_dpo,
    mean_nll,
    npo,
    rmu,
    rmu_control_vector,
    sequence_logprob,
    simnpo,
)

NEG_INF = float("-inf")


def _t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def _logsig(z):
    return -math.log1p(math.exp(-z))


# Forget batch: row 0 has 2 answer tokens and a padded slot holding -inf (log 0), row 1 has 3.
# Sequence log-probs: [-1 - 2, -0.5 * 3] = [-3.0, -1.5]; 5 tokens, token-mean NLL = 4.5 / 5 = 0.9.
F_LOGPS = [[-1.0, -2.0, NEG_INF], [-0.5, -0.5, -0.5]]
F_MASK = [[1, 1, 0], [1, 1, 1]]
# Frozen reference on the same tokens: sequence log-probs [-0.5 - 1, -3] = [-1.5, -3.0].
REF_F = [[-0.5, -1.0, 0.0], [-1.0, -1.0, -1.0]]
# Retain batch: padded slot is NaN; NLL = (0.2 + 0.4 + 1.0) / 3 = 0.533333.
R_LOGPS = [[-0.2, -0.4], [-1.0, float("nan")]]
R_MASK = [[1, 1], [1, 0]]
R_NLL = 1.6 / 3


def test_methods_tuple():
    assert METHODS == ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu")


# ------------------------------------------------------------------------------ reductions


def test_sequence_logprob_and_mean_nll_drop_padding():
    seq = sequence_logprob(_t(F_LOGPS), _m(F_MASK))
    assert seq.tolist() == pytest.approx([-3.0, -1.5])
    assert mean_nll(_t(F_LOGPS), _m(F_MASK)).item() == pytest.approx(0.9)
    # Integer 0/1 masks work like bool ones; NaN padding is dropped too.
    assert mean_nll(_t(R_LOGPS), torch.tensor(R_MASK)).item() == pytest.approx(R_NLL)


def test_mean_nll_pools_tokens_not_sequences():
    # Pooled: (1 + 3 * 3) / 4 = 2.5; a per-sequence mean would give (1 + 3) / 2 = 2.
    logps = _t([[-1.0, 0.0, 0.0], [-3.0, -3.0, -3.0]])
    assert mean_nll(logps, _m([[1, 0, 0], [1, 1, 1]])).item() == pytest.approx(2.5)


# ------------------------------------------------------------------------------ GA / GradDiff


def test_grad_ascent_hand_value():
    assert grad_ascent(_t(F_LOGPS), _m(F_MASK)).item() == pytest.approx(-0.9)


def test_grad_diff_hand_value_and_weights():
    loss = grad_diff(_t(F_LOGPS), _m(F_MASK), _t(R_LOGPS), _m(R_MASK))
    assert loss.item() == pytest.approx(-0.9 + R_NLL)  # gamma = alpha = 1
    loss = grad_diff(_t(F_LOGPS), _m(F_MASK), _t(R_LOGPS), _m(R_MASK), gamma=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(2.0 * -0.9 + 0.5 * R_NLL)


# ------------------------------------------------------------------------------ NPO


def test_npo_hand_value():
    # log pi - log pi_ref = [-3 + 1.5, -1.5 + 3] = [-1.5, 1.5], beta = 0.1:
    # L = -(2 / 0.1) * mean(logsig(0.15), logsig(-0.15)).
    expected = -20.0 * 0.5 * (_logsig(0.15) + _logsig(-0.15))
    loss = npo(_t(F_LOGPS), _m(F_MASK), _t(REF_F))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Same as the (2/beta) log(1 + (pi/pi_ref)^beta) form of the paper.
    alt = 20.0 * 0.5 * (math.log1p(math.exp(0.1 * -1.5)) + math.log1p(math.exp(0.1 * 1.5)))
    assert loss.item() == pytest.approx(alt, rel=1e-6)


def test_npo_with_retain_term():
    expected = -20.0 * 0.5 * (_logsig(0.15) + _logsig(-0.15)) + 0.7 * R_NLL
    loss = npo(
        _t(F_LOGPS), _m(F_MASK), _t(REF_F), retain_logps=_t(R_LOGPS), retain_mask=_m(R_MASK), alpha=0.7
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_at_reference_is_two_over_beta_log2(beta):
    loss = npo(_t(F_LOGPS), _m(F_MASK), _t(F_LOGPS), beta=beta)
    assert loss.item() == pytest.approx((2.0 / beta) * math.log(2.0), rel=1e-6)


def test_npo_gradient_is_bounded_where_ga_is_not():
    # One sequence of one token, so d/d logpi of GA = d(logpi)/d logpi = 1.
    # NPO: dL/dlogpi = 2 * sigmoid(beta * (logpi - logref)); equal to GA's at pi = pi_ref, and
    # 2 * sigmoid(0.1 * -50) = 2 * sigmoid(-5) = 0.013386 once the answer is well forgotten.
    mask = _m([[1]])
    ga_in = _t([[-60.0]], grad=True)
    grad_ascent(ga_in, mask).backward()
    assert ga_in.grad.item() == pytest.approx(1.0)

    at_ref = _t([[-10.0]], grad=True)
    npo(at_ref, mask, _t([[-10.0]])).backward()
    assert at_ref.grad.item() == pytest.approx(1.0, rel=1e-6)

    forgotten = _t([[-60.0]], grad=True)
    npo(forgotten, mask, _t([[-10.0]])).backward()
    assert forgotten.grad.item() == pytest.approx(2.0 / (1.0 + math.exp(5.0)), rel=1e-5)
    assert abs(forgotten.grad.item()) < abs(ga_in.grad.item())


# ------------------------------------------------------------------------------ SimNPO


def test_simnpo_hand_value_defaults():
    # Length-normalised NLL = [3 / 2, 1.5 / 3] = [1.5, 0.5]; defaults beta 4.5, delta 0, gamma 0.125:
    # L = 0.125 * -(2 / 4.5) * mean(logsig(6.75), logsig(2.25)).
    expected = 0.125 * -(2 / 4.5) * 0.5 * (_logsig(4.5 * 1.5) + _logsig(4.5 * 0.5))
    assert simnpo(_t(F_LOGPS), _m(F_MASK)).item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_delta_and_retain():
    # delta inside the beta product (OpenUnlearning): logsig(2 * (1.5 - 0.2)), logsig(2 * (0.5 - 0.2)).
    expected = 1.0 * -(2 / 2.0) * 0.5 * (_logsig(2.0 * 1.3) + _logsig(2.0 * 0.3)) + 2.0 * R_NLL
    loss = simnpo(
        _t(F_LOGPS), _m(F_MASK), beta=2.0, delta=0.2, gamma=1.0,
        retain_logps=_t(R_LOGPS), retain_mask=_m(R_MASK), alpha=2.0,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_is_length_normalised():
    # A: 2 tokens of -1 (sum -2), B: 4 tokens of -1 (sum -4); same mean, different length.
    a = (_t([[-1.0, -1.0, 0.0, 0.0]]), _m([[1, 1, 0, 0]]))
    b = (_t([[-1.0, -1.0, -1.0, -1.0]]), _m([[1, 1, 1, 1]]))
    both = (_t([[-1.0, -1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]), _m([[1, 1, 0, 0], [1, 1, 1, 1]]))
    la, lb, lab = simnpo(*a), simnpo(*b), simnpo(*both)
    assert la.item() == pytest.approx(lb.item(), rel=1e-7)
    assert lab.item() == pytest.approx(la.item(), rel=1e-7)
    expected = 0.125 * -(2 / 4.5) * _logsig(4.5 * 1.0)
    assert la.item() == pytest.approx(expected, rel=1e-6)
    # NPO, on summed log-probs, tells them apart (sanity check of the contrast).
    assert npo(*a, _t([[0.0] * 4])).item() != pytest.approx(npo(*b, _t([[0.0] * 4])).item())


# ------------------------------------------------------------------------------ IdkDPO


IDK = [[-0.1, -0.1], [-0.2, NEG_INF]]  # win sums [-0.2, -0.2]
IDK_MASK = [[1, 1], [1, 0]]
REF_IDK = [[-0.3, -0.3], [-0.1, 0.0]]  # ref win sums [-0.6, -0.1]


def test_idk_dpo_hand_value():
    # win ratio = [-0.2 + 0.6, -0.2 + 0.1] = [0.4, -0.1]; lose ratio = [-1.5, 1.5];
    # margin = [1.9, -1.6]; L = -(2 / 0.1) * mean(logsig(0.19), logsig(-0.16)).
    expected = -20.0 * 0.5 * (_logsig(0.19) + _logsig(-0.16))
    loss = idk_dpo(_t(F_LOGPS), _m(F_MASK), _t(IDK), _m(IDK_MASK), _t(REF_F), _t(REF_IDK))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with_r = idk_dpo(
        _t(F_LOGPS), _m(F_MASK), _t(IDK), _m(IDK_MASK), _t(REF_F), _t(REF_IDK),
        retain_logps=_t(R_LOGPS), retain_mask=_m(R_MASK), alpha=1.0,
    )
    assert with_r.item() == pytest.approx(expected + R_NLL, rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_idk_dpo_at_reference_is_log2_times_two_over_beta(beta):
    # margin 0 -> -logsig(0) = log 2, times OpenUnlearning's 2/beta scale.
    loss = idk_dpo(_t(F_LOGPS), _m(F_MASK), _t(IDK), _m(IDK_MASK), _t(F_LOGPS), _t(IDK), beta=beta)
    assert loss.item() == pytest.approx((2.0 / beta) * math.log(2.0), rel=1e-6)
    assert loss.item() * beta / 2.0 == pytest.approx(math.log(2.0), rel=1e-6)


# ------------------------------------------------------------------------------ RMU


def test_rmu_control_vector_is_seeded_unit():
    u = rmu_control_vector(16, seed=3)
    assert u.shape == (16,)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert bool((u >= 0).all())  # torch.rand then normalised, as WMDP / OpenUnlearning
    assert torch.equal(u, rmu_control_vector(16, seed=3))
    assert not torch.equal(u, rmu_control_vector(16, seed=4))


def test_rmu_hand_value():
    # d = 2, u = [1, 0], c = 2 -> target [2, 0]. Forget row 0: [2,0] -> 0, [3,1] -> (1+1)/2 = 1,
    # mean 0.5; row 1: [0,0] -> (4+0)/2 = 2 (the padded [100,100] is dropped); batch mean 1.25.
    # Retain: [1,1] vs [1,1] -> 0, [0,0] vs [1,-1] -> (1+1)/2 = 1; mean 0.5; alpha 3 -> 1.5.
    forget = _t([[[2.0, 0.0], [3.0, 1.0]], [[0.0, 0.0], [100.0, 100.0]]])
    retain = _t([[[1.0, 1.0], [0.0, 0.0]]])
    frozen = _t([[[1.0, 1.0], [1.0, -1.0]]])
    u = torch.tensor([1.0, 0.0])
    loss = rmu(forget, _m([[1, 1], [1, 0]]), retain, _m([[1, 1]]), frozen, u, steering_coeff=2.0, alpha=3.0)
    assert loss.item() == pytest.approx(1.25 + 1.5)


def test_rmu_zero_at_targets():
    u = rmu_control_vector(8, seed=0)
    c = 6.5
    forget = (c * u).expand(2, 3, 8).clone()
    forget[0, 2] = 50.0  # padding, masked out
    f_mask = _m([[1, 1, 0], [1, 1, 1]])
    frozen = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    r_mask = _m([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss = rmu(forget, f_mask, frozen.clone(), r_mask, frozen, u, steering_coeff=c, alpha=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    # Retain term alone is 0 when activations equal the frozen ones; forget term alone is 0 at c*u.
    shifted = frozen + 1.0  # per-token MSE exactly 1 -> retain term alpha * 1
    loss = rmu(forget, f_mask, shifted, r_mask, frozen, u, steering_coeff=c, alpha=2.0)
    assert loss.item() == pytest.approx(2.0, rel=1e-6)
    off = forget + 1.0  # forget term exactly 1
    loss = rmu(off, f_mask, frozen.clone(), r_mask, frozen, u, steering_coeff=c, alpha=2.0)
    assert loss.item() == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------------------------------------------ gradients


def _all_losses():
    """(name, loss, trainable inputs, frozen inputs) for every method."""
    f, r, i = _t(F_LOGPS, grad=True), _t(R_LOGPS, grad=True), _t(IDK, grad=True)
    ref_f, ref_i = _t(REF_F, grad=True), _t(REF_IDK, grad=True)
    fm, rm, im = _m(F_MASK), _m(R_MASK), _m(IDK_MASK)
    out = [
        ("grad_ascent", grad_ascent(f, fm), [f], []),
        ("grad_diff", grad_diff(f, fm, r, rm), [f, r], []),
        ("npo", npo(f, fm, ref_f, retain_logps=r, retain_mask=rm), [f, r], [ref_f]),
        ("simnpo", simnpo(f, fm, retain_logps=r, retain_mask=rm), [f, r], []),
        ("idk_dpo", idk_dpo(f, fm, i, im, ref_f, ref_i), [f, i], [ref_f, ref_i]),
    ]
    u = rmu_control_vector(4, seed=0)
    fa = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ra = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
    fr = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(2)).requires_grad_()
    out.append(("rmu", rmu(fa, fm, ra, rm, fr, u, steering_coeff=2.0, alpha=1.0), [fa, ra], [fr]))
    return out


def test_gradients_flow_and_skip_padding_and_frozen():
    cases = _all_losses()
    assert [c[0] for c in cases] == list(METHODS)
    for name, loss, trainable, frozen in cases:
        assert loss.dim() == 0, name
        assert torch.isfinite(loss), name
        loss.backward()
        for x in trainable:
            assert x.grad is not None and torch.isfinite(x.grad).all(), name
            assert x.grad.abs().sum() > 0, name
        for x in frozen:
            assert x.grad is None, name  # pi_ref / frozen activations never get a gradient
    # Padded positions get exactly zero gradient (the -inf / NaN slots stay harmless).
    _, loss, (f, r), _ = cases[1]
    assert f.grad[0, 2].item() == 0.0 and r.grad[1, 1].item() == 0.0


# ------------------------------------------------------------------------------ errors


def test_empty_masks_raise():
    with pytest.raises(ValueError, match="forget_mask"):
        grad_ascent(_t([[-1.0, -1.0]]), _m([[0, 0]]))
    with pytest.raises(ValueError, match="mask"):
        mean_nll(_t([[-1.0]]), _m([[0]]))
    with pytest.raises(ValueError, match="mask"):
        sequence_logprob(_t([[-1.0], [-1.0]]), _m([[1], [0]]))
    with pytest.raises(ValueError, match="retain_mask"):
        grad_diff(_t(F_LOGPS), _m(F_MASK), _t(R_LOGPS), _m([[0, 0], [0, 0]]))
    # Sequence-level losses need every row non-empty.
    with pytest.raises(ValueError, match="forget_mask"):
        npo(_t(F_LOGPS), _m([[1, 1, 0], [0, 0, 0]]), _t(REF_F))
    with pytest.raises(ValueError, match="forget_mask"):
        simnpo(_t(F_LOGPS), _m([[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="idk_mask"):
        idk_dpo(_t(F_LOGPS), _m(F_MASK), _t(IDK), _m([[1, 1], [0, 0]]), _t(REF_F), _t(REF_IDK))
    with pytest.raises(ValueError, match="forget_mask"):
        rmu(torch.zeros(1, 2, 3), _m([[0, 0]]), torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 2, 3),
            rmu_control_vector(3, 0))


def test_shape_mismatches_raise():
    with pytest.raises(ValueError, match="forget_mask"):
        grad_ascent(_t(F_LOGPS), _m([[1, 1]]))
    with pytest.raises(ValueError, match="forget_logps"):
        grad_ascent(_t([-1.0, -2.0]), _m([1, 1]))
    with pytest.raises(ValueError, match="ref_forget_logps"):
        npo(_t(F_LOGPS), _m(F_MASK), _t([[-1.0, -1.0]]))
    with pytest.raises(ValueError, match="ref_idk_logps"):
        idk_dpo(_t(F_LOGPS), _m(F_MASK), _t(IDK), _m(IDK_MASK), _t(REF_F), _t([[-1.0]]))
    with pytest.raises(ValueError, match="idk_logps"):
        idk_dpo(_t(F_LOGPS), _m(F_MASK), _t([[-0.1, -0.1]]), _m([[1, 1]]), _t(REF_F), _t([[-0.1, -0.1]]))
    with pytest.raises(ValueError, match="retain_mask"):
        npo(_t(F_LOGPS), _m(F_MASK), _t(REF_F), retain_logps=_t(R_LOGPS))
    with pytest.raises(ValueError, match="control"):
        rmu(torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 2, 3),
            rmu_control_vector(4, 0))
    with pytest.raises(ValueError, match="frozen_retain_acts"):
        rmu(torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 1, 3),
            rmu_control_vector(3, 0))
    with pytest.raises(ValueError, match="forget_mask"):
        rmu(torch.zeros(1, 2, 3), _m([[1, 1, 1]]), torch.zeros(1, 2, 3), _m([[1, 1]]), torch.zeros(1, 2, 3),
            rmu_control_vector(3, 0))
