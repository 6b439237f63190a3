"""RL objectives (entroflow.rl.objectives) and EM-INF (entroflow.rl.em_inf) on tiny tensors.

Expected values are computed by hand in the comments next to each check.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from entroflow.answers import equivalent
from entroflow.rl.em_inf import EMInfProcessor
from entroflow.rl.objectives import (
    aggregate_tokens,
    em_rl_rewards,
    empo_keep,
    empo_rewards,
    entropy_loss,
    group_advantages,
    group_std,
    keep_informative_groups,
    kl_k3,
    overlong_penalty,
    policy_loss,
    rloo_advantages,
    token_entropy,
    token_logprobs,
)


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def _ids(*xs):
    return torch.tensor(xs, dtype=torch.long)


# ------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_values():
    # Group [1,0,0,1]: mean 0.5, Bessel var = 4 * 0.25 / 3 = 1/3, std = 0.57735;
    # A = +-0.5 / 0.57735 = +-0.866025.
    adv = group_advantages(_t(1, 0, 0, 1), _ids(0, 0, 0, 0))
    assert adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_group_advantages_groups_singletons_and_constant_groups():
    # Non-contiguous, interleaved ids. Group 7: [1,0,0,1] as above. Group 3: [0.1,0.1,0.1] is
    # constant -> exactly 0 (a float mean of 0.1s is not exactly 0.1, so this needs care).
    # Group 9 has one sample: mean 0, std 1 (verl) -> 0.7 / (1 + 1e-6).
    rewards = _t(1, 0.1, 0, 0.1, 0, 0.1, 1, 0.7)
    ids = _ids(7, 3, 7, 3, 7, 3, 7, 9)
    adv = group_advantages(rewards, ids)
    assert adv[[0, 2, 4, 6]].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert adv[[1, 3, 5]].tolist() == [0.0, 0.0, 0.0]
    assert adv[7].item() == pytest.approx(0.7 / (1 + 1e-6), abs=1e-7)


def test_dr_grpo_advantages_skip_std():
    # Dr. GRPO: R - mean only: [1,0,0,1] -> +-0.5; singleton -> raw reward 0.7; constant -> 0.
    adv = group_advantages(_t(1, 0, 0, 1, 0.7, 2, 2), _ids(0, 0, 0, 0, 1, 2, 2), scale_by_std=False)
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.7, 0.0, 0.0], abs=1e-7)


def test_rloo_advantages_hand_values():
    # [1,0,0,1]: for R=1 the others are [0,0,1], mean 1/3 -> 1 - 1/3 = 2/3;
    # for R=0 the others are [1,0,1], mean 2/3 -> -2/3. Singleton -> 0. Constant [3,3] -> 0.
    adv = rloo_advantages(_t(1, 0, 0, 1, 5, 3, 3), _ids(0, 0, 0, 0, 1, 2, 2))
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0], abs=1e-6)


def test_group_std_and_dynamic_sampling_filter():
    # group 0 [1,0]: Bessel std = sqrt(0.5 / 1) = 0.70711 -> informative;
    # group 1 [1,1] and group 2 [0,0]: std 0 -> dropped; group 3 singleton: std reported 0,
    # kept by default (verl keeps single-sample groups), dropped with keep_singletons=False.
    rewards = _t(1, 0, 1, 1, 0, 0, 1)
    ids = _ids(0, 0, 1, 1, 2, 2, 3)
    assert group_std(rewards, ids).tolist() == pytest.approx([0.707107, 0.707107, 0, 0, 0, 0, 0], abs=1e-6)
    assert keep_informative_groups(rewards, ids).tolist() == [True, True, False, False, False, False, True]
    assert keep_informative_groups(rewards, ids, keep_singletons=False).tolist() == [
        True, True, False, False, False, False, False,
    ]


def test_group_functions_reject_bad_input():
    with pytest.raises(ValueError):
        group_advantages(_t(1, 0), _t(0, 0))  # float group ids
    with pytest.raises(ValueError):
        group_advantages(_t(1, 0, 1), _ids(0, 0))


# ---------------------------------------------------------------------------- token quantities


def test_token_logprobs_and_entropy_hand_values():
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p(target=1) = ln 0.75 = -0.287682;
    # H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, _ids(1).view(1, 1)).item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert token_entropy(logits).item() == pytest.approx(0.562335, abs=1e-6)
    # Uniform over V=8: H = ln 8 = 2.079442.
    assert token_entropy(torch.zeros(2, 3, 8)).flatten().tolist() == pytest.approx([math.log(8)] * 6)


def test_token_entropy_with_masked_logits_is_finite_with_finite_gradient():
    # [0, 0, -inf]: uniform over the two finite tokens -> H = ln 2, and the -inf entry gets
    # gradient exactly 0 (no 0 * inf NaN).
    z = torch.tensor([[0.0, 0.0, float("-inf")]], requires_grad=True)
    h = token_entropy(z)
    assert h.item() == pytest.approx(math.log(2), abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 2].item() == 0.0


def test_kl_k3_hand_value_nonnegative_and_clamped():
    # logp = ln 0.5, logp_ref = ln 0.25: d = ln 0.5 = -0.693147, k3 = e^d - d - 1
    # = 0.5 + 0.693147 - 1 = 0.193147.
    assert kl_k3(_t(math.log(0.5)), _t(math.log(0.25))).item() == pytest.approx(0.193147, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g) * 3, torch.randn(50, generator=g) * 3
    assert (kl_k3(a, b) >= 0).all()
    assert kl_k3(a, a).abs().max().item() == 0.0
    # d = 30 is clamped to 20 before exp, and e^20 - 21 is then clamped to 10.
    assert kl_k3(_t(0.0), _t(30.0)).item() == 10.0


# -------------------------------------------------------------------------------- policy loss

# Two sequences, T = 3, ratios chosen inside and outside the clip range [0.8, 1.2] for both
# signs of A. Sequence 1 has length 2; its padding position holds garbage (NaN / -inf) that
# must not leak into the loss or the gradient.
_LOGP_OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.7, float("-inf")]]
_RATIOS = [[1.1, 1.5, 0.5], [0.5, 1.5, 1.0]]
_ADV = [1.0, -1.0]
_MASK = [[1, 1, 1], [1, 1, 0]]


def _hand_case():
    old = torch.tensor(_LOGP_OLD)
    new = old + torch.tensor(_RATIOS).log()
    new[1, 2] = float("nan")
    new.requires_grad_(True)
    return new, old, torch.tensor(_ADV), torch.tensor(_MASK, dtype=torch.bool)


# Per-token surrogate l = min(rA, clip(r, 0.8, 1.2) A), L = -l:
#   seq 0 (A=+1): r=1.1 -> min(1.1, 1.1) = 1.1   (inside)
#                 r=1.5 -> min(1.5, 1.2) = 1.2   (clipped high: gradient 0)
#                 r=0.5 -> min(0.5, 0.8) = 0.5   (below range, A>0: unclipped)
#                 sum L = -(1.1 + 1.2 + 0.5) = -2.8
#   seq 1 (A=-1): r=0.5 -> min(-0.5, -0.8) = -0.8 (clipped low: gradient 0)
#                 r=1.5 -> min(-1.5, -1.2) = -1.5 (above range, A<0: unclipped)
#                 sum L = 0.8 + 1.5 = 2.3
@pytest.mark.parametrize(
    "agg, kwargs, expected",
    [
        # every token weighs the same: (-2.8 + 2.3) / 5 = -0.1
        ("token-mean", {}, -0.1),
        # every sequence weighs the same: (-2.8/3 + 2.3/2) / 2 = (-0.933333 + 1.15) / 2 = 0.108333
        ("seq-mean-token-mean", {}, (-2.8 / 3 + 2.3 / 2) / 2),
        # (1/B) sum of token sums: -0.5 / 2 = -0.25
        ("seq-mean-token-sum", {}, -0.25),
        # Dr. GRPO with L_max = 4: -0.5 / (2 * 4) = -0.0625
        ("seq-mean-token-sum-norm", {"max_len": 4}, -0.0625),
        # token-mean with a global normaliser of 10 tokens: -0.5 / 10 = -0.05
        ("token-mean", {"normalizer": 10}, -0.05),
        # seq-mean-token-mean with a global count of 4 sequences: 0.216667 / 4 = 0.054167
        ("seq-mean-token-mean", {"normalizer": 4}, (-2.8 / 3 + 2.3 / 2) / 4),
    ],
)
def test_policy_loss_hand_values(agg, kwargs, expected):
    new, old, adv, mask = _hand_case()
    loss, _ = policy_loss(new, old, adv, mask, eps_low=0.2, eps_high=0.2, agg=agg, **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_policy_loss_gradient_and_stats():
    new, old, adv, mask = _hand_case()
    loss, stats = policy_loss(new, old, adv, mask, eps_low=0.2, eps_high=0.2)
    loss.backward()
    # token-mean: dL/dlogp_new = -A r / 5 where the unclipped branch is active, 0 where clipped:
    #   seq 0: -1.1/5 = -0.22, 0 (clipped), -0.5/5 = -0.1; seq 1: 0 (clipped), +1.5/5 = 0.3, pad 0.
    assert new.grad.flatten().tolist() == pytest.approx([-0.22, 0.0, -0.1, 0.0, 0.3, 0.0], abs=1e-6)
    # clip_frac_low: r < 0.8 with A < 0 -> seq 1 token 0 only -> 1/5. (seq 0 token 2 has r = 0.5
    # but A > 0, so the min takes the unclipped branch and it does not count.)
    # clip_frac_high: r > 1.2 with A > 0 -> seq 0 token 1 only -> 1/5.
    assert stats["clip_frac_low"] == pytest.approx(0.2)
    assert stats["clip_frac_high"] == pytest.approx(0.2)
    assert stats["dual_clip_frac"] == 0.0
    # ratio_mean = (1.1 + 1.5 + 0.5 + 0.5 + 1.5) / 5 = 1.02
    assert stats["ratio_mean"] == pytest.approx(1.02, abs=1e-6)
    # approx_kl = mean of k3(old, new) = mean of r - ln r - 1 over the 5 tokens.
    kl = sum(r - math.log(r) - 1 for r in (1.1, 1.5, 0.5, 0.5, 1.5)) / 5
    assert stats["approx_kl"] == pytest.approx(kl, abs=1e-6)
    assert all(isinstance(v, float) for v in stats.values())


def test_policy_loss_clip_higher_unclips_the_high_token():
    # eps_high = 0.28: seq 0 token 1 (r = 1.5) is still clipped, at 1.28 instead of 1.2;
    # token-mean = (-(1.1 + 1.28 + 0.5) + 2.3) / 5 = -0.58 / 5 = -0.116
    new, old, adv, mask = _hand_case()
    loss, _ = policy_loss(new, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(-0.116, abs=1e-6)


def test_policy_loss_dual_clip():
    # A = -1, ratios 4 and 2, c = 3: L = -min(-r, -1.2) = r -> 4 and 2; the dual clip caps the
    # first at -A c = 3. token-mean: (3 + 2) / 2 = 2.5 (without dual clip: (4 + 2) / 2 = 3).
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[4.0, 2.0]])).requires_grad_(True)
    adv, mask = _t(-1.0), torch.ones(1, 2, dtype=torch.bool)
    loss, stats = policy_loss(new, old, adv, mask, dual_clip_c=3.0)
    assert loss.item() == pytest.approx(2.5, abs=1e-6)
    assert stats["dual_clip_frac"] == pytest.approx(0.5)
    loss.backward()
    # capped token: constant 3 -> gradient 0; other: d(r)/dlogp / 2 = 2 / 2 = 1.
    assert new.grad.flatten().tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    loss_plain, _ = policy_loss(new, old, adv, mask)
    assert loss_plain.item() == pytest.approx(3.0, abs=1e-6)
    with pytest.raises(ValueError):
        policy_loss(new, old, adv, mask, dual_clip_c=1.0)


def test_policy_loss_ratio_one_and_empty_mask():
    # ratio == 1 (first mini-batch after rollout): loss = -(sum A over tokens) / tokens,
    # A = [2, -1] with 2 and 1 tokens -> -(2 + 2 - 1) / 3 = -1; nothing clipped, KL 0.
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = policy_loss(lp.clone(), lp, _t(2.0, -1.0), mask)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["clip_frac_low"] == stats["clip_frac_high"] == stats["approx_kl"] == 0.0
    assert stats["ratio_mean"] == 1.0
    # a micro-batch with no response token: zero loss, zero stats, no division by zero
    loss0, stats0 = policy_loss(lp.clone(), lp, _t(2.0, -1.0), torch.zeros(2, 2))
    assert loss0.item() == 0.0 and set(stats0.values()) == {0.0}


def test_aggregate_rejects_bad_arguments():
    v, m = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError):
        aggregate_tokens(v, m, "seq-mean-token-sum-norm")  # Dr. GRPO needs max_len
    with pytest.raises(ValueError):
        aggregate_tokens(v, m, "mean")
    with pytest.raises(ValueError):
        aggregate_tokens(v, m, normalizer=0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batch_gradient_equals_full_batch_gradient(agg):
    # A tiny linear "policy": logits = x W^T with real parameters W. Six sequences of unequal
    # lengths; old log-probs perturbed so that some ratios are clipped. The full mini-batch loss
    # and the sum of three 2-sequence micro-batch losses, each called with the mini-batch total
    # (tokens for token-mean, sequences for seq-mean), must give the same gradient.
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 6, 5, 4, 7
    x = torch.randn(B, T, D, generator=g)
    W = torch.randn(V, D, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.randn(B, generator=g)
    with torch.no_grad():
        old = token_logprobs(x @ W.T, targets) + 0.3 * torch.randn(B, T, generator=g)

    loss_full, stats = policy_loss(token_logprobs(x @ W.T, targets), old, adv, mask, eps_high=0.28, agg=agg)
    assert stats["clip_frac_low"] + stats["clip_frac_high"] > 0  # the clip is really exercised
    (grad_full,) = torch.autograd.grad(loss_full, W)

    normalizer = mask.sum() if agg == "token-mean" else B
    total, local_total = 0.0, 0.0
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        logp = token_logprobs(x[rows] @ W.T, targets[rows])
        loss, _ = policy_loss(
            logp, old[rows], adv[rows], mask[rows], eps_high=0.28, agg=agg, normalizer=normalizer
        )
        total = total + loss
        local, _ = policy_loss(logp, old[rows], adv[rows], mask[rows], eps_high=0.28, agg=agg)
        local_total += local.item()
    (grad_micro,) = torch.autograd.grad(total, W)
    assert total.item() == pytest.approx(loss_full.item(), abs=1e-6)
    assert torch.allclose(grad_micro, grad_full, atol=1e-6, rtol=0)
    # Without the global normaliser the micro-batch losses do not add up to the full loss
    # (the per-micro-batch means weigh the micro-batches equally), so the check above is not vacuous.
    assert abs(local_total - loss_full.item()) > 1e-3


# ------------------------------------------------------------------------------------ rewards


def test_overlong_penalty_piecewise():
    # max_len 20, cache 4 -> expected length 16.
    #   L=5, 16 -> 0 (within the expected length)
    #   L=17 -> (16 - 17) / 4 = -0.25 (first token into the cache)
    #   L=18 -> (16 - 18) / 4 = -0.5  (midpoint of the cache)
    #   L=20 -> (16 - 20) / 4 = -1    (at the cap)
    #   L=21 -> -1                    (beyond the cap)
    lengths = _ids(5, 16, 17, 18, 20, 21)
    assert overlong_penalty(lengths, 20, 4).tolist() == pytest.approx([0, 0, -0.25, -0.5, -1, -1])
    # factor scales every branch: 0.5 * the above
    assert overlong_penalty(lengths, 20, 4, factor=0.5).tolist() == pytest.approx(
        [0, 0, -0.125, -0.25, -0.5, -0.5]
    )
    # no cache: a hard penalty only past the cap
    assert overlong_penalty(_ids(20, 21), 20, 0).tolist() == [0.0, -1.0]
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 20, 21)


def test_empo_rewards_known_clusters_and_no_answer():
    # Group 0: ["4","4","5",None], G = 4: clusters {4}: 2, {5}: 1, no answer: 1.
    #   rewards [2/4, 2/4, 1/4, 0]; H = -(0.5 ln 0.5 + 0.25 ln 0.25 + 0.25 ln 0.25)
    #   = 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2 = 1.039721; p_max = 0.5.
    # Group 1 (interleaved): ["7","7","7"] -> all 1, H = 0, p_max = 1.
    # Group 2: [None, None] -> rewards 0, one no-answer cluster: H = 0, p_max = 0.
    answers = ["4", "7", "4", "7", "5", None, "7", None, None]
    groups = [0, 1, 0, 1, 0, 0, 1, 2, 2]
    rewards, entropy, p_max = empo_rewards(answers, groups, "synthetic")
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == pytest.approx([0.5, 1, 0.5, 1, 0.25, 0, 1, 0, 0])
    assert entropy[0] == pytest.approx(1.5 * math.log(2), abs=1e-9)
    assert entropy[1] == 0.0 and entropy[2] == 0.0
    assert p_max == {0: 0.5, 1: 1.0, 2: 0.0}


def test_empo_rewards_math_equivalence_is_symmetric():
    # \frac{1}{2}, 0.5 and 1/2 are one cluster whichever comes first: rewards 3/4, and 3 -> 1/4.
    assert equivalent("\\frac{1}{2}", "0.5", "math") and equivalent("0.5", "\\frac{1}{2}", "math")
    fwd, h_fwd, _ = empo_rewards(["\\frac{1}{2}", "0.5", "1/2", "3"], [0] * 4, "math")
    rev, h_rev, _ = empo_rewards(["3", "1/2", "0.5", "\\frac{1}{2}"], [0] * 4, "math")
    assert fwd.tolist() == [0.75, 0.75, 0.75, 0.25]
    assert rev.tolist() == [0.25, 0.75, 0.75, 0.75]
    # H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335
    assert h_fwd[0] == pytest.approx(0.562335, abs=1e-6) and h_rev[0] == h_fwd[0]


def test_empo_rewards_never_sees_labels():
    params = list(inspect.signature(empo_rewards).parameters)
    assert params == ["answers", "group_ids", "fmt"]
    assert not any(w in p for p in params for w in ("gold", "label", "truth", "reference", "target"))


def test_empo_keep_entropy_band():
    # keep low <= p_max <= high and p_max < 1 (H = 0 groups dropped when drop_certain)
    p_max = {0: 0.5, 1: 1.0, 2: 0.25, 3: 0.3, 4: 0.0}
    assert empo_keep(p_max) == {0, 3}
    assert empo_keep(p_max, drop_certain=False) == {0, 1, 3}
    assert empo_keep(p_max, high=0.4) == {3}
    assert empo_keep(p_max, low=0.0) == {0, 2, 3, 4}


def test_em_rl_rewards():
    # sequence (Eq. 3): mean log-prob [-1,-2,-3] -> -2, [-0.5] -> -0.5; sums -6 and -0.5.
    seq = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-0.5])]
    assert em_rl_rewards("sequence", seq).tolist() == pytest.approx([-2.0, -0.5])
    assert em_rl_rewards("sequence", seq, normalize_by_length=False).tolist() == pytest.approx([-6.0, -0.5])
    # token (Eq. 4): minus mean entropy [0.2,0.4] -> -0.3, [1,0,0.5] -> -0.5; sums -0.6, -1.5.
    ent = [[0.2, 0.4], [1.0, 0.0, 0.5], []]
    assert em_rl_rewards("token", ent).tolist() == pytest.approx([-0.3, -0.5, 0.0])
    assert em_rl_rewards("token", ent, normalize_by_length=False).tolist() == pytest.approx([-0.6, -1.5, 0.0])
    with pytest.raises(ValueError):
        em_rl_rewards("trajectory", seq)


def test_entropy_loss_uniform_and_masked():
    # Uniform logits over V = 8: every position has H = ln 8 = 2.079442, so the masked mean is
    # ln 8; with a global normaliser twice the local token count it is ln 8 / 2. Masked
    # positions hold NaN logits, which must not matter.
    logits = torch.zeros(2, 3, 8)
    logits[1, 2] = float("nan")
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert entropy_loss(logits, mask).item() == pytest.approx(math.log(8), abs=1e-6)
    assert entropy_loss(logits, mask, normalizer=10).item() == pytest.approx(math.log(8) / 2, abs=1e-6)
    # Its gradient lowers entropy: one SGD step on peaked-ish logits reduces the loss.
    z = torch.tensor([[[1.0, 0.0, -1.0]]], requires_grad=True)
    loss = entropy_loss(z, torch.ones(1, 1))
    loss.backward()
    with torch.no_grad():
        assert entropy_loss(z - 0.5 * z.grad, torch.ones(1, 1)).item() < loss.item()


# ------------------------------------------------------------------------------------- EM-INF


def _random_scores(seed=0, rows=8, vocab=40):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, vocab, generator=g) * 3
    s[2] = 0.0
    s[2, 5] = 12.0  # peaked row: H ~ 39 * e^-12 * 13 ~ 3e-3 < delta -> must be untouched
    return s


@pytest.mark.parametrize(
    "proc",
    [
        EMInfProcessor(),  # defaults: 5 steps of lr 0.1 (mostly stays above delta)
        EMInfProcessor(delta=0.5, n_steps=20, lr=1.0),  # aggressive: every row hits the floor
        EMInfProcessor(delta=0.5, n_steps=15, lr=0.5, kl_weight=0.05),  # code's KL anchor
    ],
    ids=["default", "aggressive", "kl"],
)
def test_em_inf_guarantees(proc):
    s = _random_scores()
    h_in = token_entropy(s)
    out = proc(torch.zeros(s.shape[0], 3, dtype=torch.long), s)
    h_out = token_entropy(out)
    above = h_in > proc.delta
    assert above.sum() >= 6 and not above[2]
    # delta - 1e-4 <= H_out <= H_in for rows that started above the floor ...
    assert (h_out[above] >= proc.delta - 1e-4).all()
    assert (h_out[above] <= h_in[above] + 1e-6).all()
    assert (h_out[above] < h_in[above]).any()  # ... and it actually does something
    # ... rows at/below the floor are returned bit-for-bit ...
    assert torch.equal(out[~above], s[~above])
    # ... and the argmax never moves (Prop. 1): greedy decoding is unaffected.
    assert torch.equal(out.argmax(-1), s.argmax(-1))


def test_em_inf_line_search_lands_on_the_floor():
    # With lr 1.0 an Adam step overshoots the floor; the bisection must stop each row just
    # above delta instead of far below it (the reference loop's overshoot).
    proc = EMInfProcessor(delta=0.5, n_steps=20, lr=1.0)
    s = _random_scores(seed=1)
    h_out = token_entropy(proc(None, s))
    above = token_entropy(s) > 0.5
    assert ((h_out[above] - 0.5).abs() < 1e-3).all()


def test_em_inf_keeps_masked_logits_and_rows_independent():
    s = _random_scores(seed=2)
    s[0, :10] = float("-inf")
    s[3, 20:] = float("-inf")
    proc = EMInfProcessor(delta=0.3, n_steps=10, lr=0.5)
    out = proc(None, s)
    assert torch.equal(torch.isneginf(out), torch.isneginf(s))
    assert torch.isfinite(out[~torch.isneginf(s)]).all()
    # A row's result does not depend on the batch it is in (the engine batches rows freely).
    alone = proc(None, s[3:4])
    assert torch.allclose(alone, out[3:4], atol=1e-5)


def test_em_inf_inside_inference_mode():
    # The rollout engine calls processors under torch.inference_mode(); the scores are then
    # inference tensors, which autograd cannot use directly.
    proc = EMInfProcessor(delta=0.3, n_steps=5, lr=0.3)
    expected = proc(None, _random_scores(seed=3))
    with torch.inference_mode():
        s = _random_scores(seed=3)
        out = proc(torch.zeros(8, 2, dtype=torch.long), s)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (token_entropy(out) < token_entropy(_random_scores(seed=3))).any()


def test_em_inf_rejects_bad_arguments():
    with pytest.raises(ValueError):
        EMInfProcessor(delta=-0.1)
    with pytest.raises(ValueError):
        EMInfProcessor(lr=0)
    with pytest.raises(ValueError):
        EMInfProcessor()(None, torch.zeros(2, 3, 4))
