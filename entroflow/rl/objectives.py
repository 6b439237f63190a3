"""Objectives of the RL stage: GRPO, DAPO, EMPO, EM-RL and EM-FT as plain torch functions.

Everything here is pure math on tensors (plus answer clustering for EMPO): no model, optimiser,
tracking or orchestration, so the trainer and the tests see exactly the same numbers. The spec is
``shared/reference/rl.md`` §1-4; notation follows it. ``m_{i,t}`` is the response mask, ``R_i``
the scalar reward of response ``o_i``, ``G`` the size of its group (samples of one prompt), and
``r_{i,t} = pi_theta / pi_old`` the token ratio, computed as ``exp(clamp(logp_new - logp_old,
-20, 20))`` (verl clamps before ``exp`` so that one stale token cannot overflow the loss).

GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, Eq. 3 objective / §4.1.2 advantage)
---------------------------------------------------------------------------------------------
* Advantage, the same for every token of ``o_i`` (:func:`group_advantages`)::

      A_i = (R_i - mean_j R_j) / (std_j R_j + eps)      std Bessel-corrected (n-1), eps = 1e-6

  as verl's ``compute_grpo_outcome_advantage``: a group of one sample uses mean 0 and std 1 (its
  advantage is its raw reward), a group whose rewards are all equal gets advantage exactly 0.
  ``scale_by_std=False`` drops the division: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
  Training", arXiv 2503.20783), verl ``norm_adv_by_std_in_grpo=False``.
* Clipped surrogate per token (maximised; the loss is its negative, :func:`policy_loss`)::

      l_{i,t} = min( r_{i,t} A_i ,  clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i )

  Original GRPO uses eps_low = eps_high = 0.2, a per-sequence token mean and
  ``- beta * KL(pi_theta || pi_ref)`` per token with the k3 estimator (:func:`kl_k3`)::

      KL ~ pi_ref/pi_theta - log(pi_ref/pi_theta) - 1     (log-ratio clamped to [-20, 20],
                                                             result clamped to [-10, 10], verl
                                                             ``low_var_kl``)

  verl's *dual clip* (``clip_ratio_c``, Ye et al. 2020 "Mastering Complex Control in MOBA
  Games", arXiv 1912.09729) additionally caps the per-token loss of a negative-advantage token at
  ``-A * c``, so a token whose ratio exploded (r >> 1 with A < 0) cannot dominate the batch.

DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 8-13)
-------------------------------------------------
* Eq. 8 objective, token-level (``agg="token-mean"``)::

      J = (1 / sum_i |o_i|) * sum_i sum_t min( r A, clip(r, 1 - eps_low, 1 + eps_high) A ),
      s.t. 0 < |{o_i : correct}| < G,        no KL term

  with Eq. 9 the group advantage above; Eq. 10-12 restate it per technique. Clip-Higher
  (§3.1): decoupled eps_low = 0.2, eps_high = 0.28. Dynamic sampling (§3.2): drop groups whose
  rewards are all equal (:func:`keep_informative_groups`; the caller over-samples to refill).
  Token-level loss (§3.3): every token of the mini-batch weighs the same, so the
  normaliser is the token count of the *whole mini-batch*, not of one micro-batch — the caller
  passes it as ``normalizer`` and the micro-batch losses then sum to exactly the full-batch loss.
* Eq. 13 soft overlong punishment (:func:`overlong_penalty`), added to the correctness reward,
  with ``L_exp = L_max - L_cache``::

      R_length(L) = 0                          if L <= L_exp
                  = (L_exp - L) / L_cache      if L_exp < L <= L_max     (0 down to -1)
                  = -1                         if L > L_max

  scaled by verl's ``penalty_factor`` (1.0 in all DAPO scripts).

Loss aggregations (rl.md §1.3; ``L_{i,t} = -l_{i,t}``, ``B`` sequences)
-----------------------------------------------------------------------
=========================== ===============================================================
``token-mean``              ``sum_i sum_t m L / sum_i sum_t m``       (DAPO; TRL ``dapo``)
``seq-mean-token-mean``     ``(1/B) sum_i (sum_t m L / sum_t m)``     (original GRPO)
``seq-mean-token-sum``      ``(1/B) sum_i sum_t m L``
``seq-mean-token-sum-norm`` ``sum_i sum_t m L / (B * L_max)``         (Dr. GRPO, constant L_max)
=========================== ===============================================================

The denominators ``sum m`` / ``B`` default to those of the tensors passed in; a trainer that splits
a mini-batch into micro-batches passes the mini-batch totals as ``normalizer`` so that the sum of
micro-batch losses (and gradients) equals the mini-batch loss exactly.

EMPO (Zhang et al. 2025, "Right Question is Already Half the Answer", arXiv 2504.05812, Eq. 3-7)
-----------------------------------------------------------------------------------------------
Label-free. The G answers of a prompt are clustered by meaning (:func:`entroflow.answers.
cluster_answers`: greedy, each answer joins the first cluster whose representative it is
equivalent to)::

      p(c_j | q) = |c_j| / G                                   (Eq. 3)
      H_sem(q)   = - sum_j p(c_j | q) log p(c_j | q)           (Eq. 4, nats)
      A_i        = GRPO advantage of R_i                        (Eq. 5)
      R_i        = p(c(o_i) | q)                                (Eq. 6)
      J          = clipped GRPO surrogate, no KL, s.t. delta_low < H_sem < delta_high   (Eq. 7)

No-answer convention (rl.md §3.4 "recommended spec"): responses without an extractable answer
are one extra cluster of their own. They get reward 0, they count in G (so the answered clusters'
probabilities are ``|c_j| / G`` with the full G), and their mass ``n_none / G`` is one term of
``H_sem``. The entropy band of Eq. 7 is implemented as the verl code does it, on the probability
of the largest *answered* cluster ``p_max`` (:func:`empo_keep`: keep ``low <= p_max <= high``,
and drop ``p_max = 1``, i.e. H_sem = 0, when ``drop_certain``); ``p_max`` ignores the no-answer
cluster so that a prompt the model mostly fails to answer never looks "confident".

Entropy minimisation (Agarwal et al. 2025, "The Unreasonable Effectiveness of Entropy
Minimization in LLM Reasoning", arXiv 2505.15134, Eq. 1-4)
------------------------------------------------------------------------------------------
* Eq. 1 trajectory entropy estimate ``H_traj = -(1/N) sum_i sum_t log pi(y_t^i | y_<t^i)``.
* Eq. 2 token entropy estimate ``H_tok = (1/N) sum_i sum_t H(pi(. | y_<t^i))``, full vocabulary.
* EM-FT (§3.1): minimise Eq. 2 directly on self-sampled responses (:func:`entropy_loss`,
  token-mean with a global normaliser, the stable scale choice of rl.md §4.2).
* EM-RL (§3.2, :func:`em_rl_rewards`) uses negative entropy as the only reward, with the RLOO
  baseline ``A_i = R_i - mean_{j != i} R_j`` (:func:`rloo_advantages`):

      EM-RL-sequence  R(y) =  sum_t log pi(y_t | y_<t)          (Eq. 3)
      EM-RL-token     R(y) = -sum_t H(pi(. | y_<t))             (Eq. 4)

  **[paper != code]** the released reward managers divide both by the response length (mean
  instead of sum); ``normalize_by_length=True`` (default) follows the code, which produced the
  reported numbers.

Entropies here are the logsumexp form ``H(z) = logsumexp(z) - sum_v softmax(z)_v z_v``, which
needs no ``log`` of a probability (no ``0 * log 0``) and is exact for ``-inf`` (masked) logits.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from entroflow.answers import cluster_answers

from entroflow.rl.settings import AGGREGATIONS  # noqa: E402  (one list for config and math)
LOG_RATIO_CLAMP = 20.0  # verl: clamp log pi/pi_old to [-20, 20] before exp
KL_CLAMP = 10.0  # verl low_var_kl: clamp the k3 value to [-10, 10]


# --------------------------------------------------------------------------------------------
# Group statistics and advantages
# --------------------------------------------------------------------------------------------


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-row group index, group size, mean, Bessel std and "all rewards equal" flag (float64).

    Computed in float64 and with an explicit max == min test for constant groups: a float mean
    of equal values need not equal them exactly (0.1 + 0.1 + 0.1 != 0.3), and "all equal" must
    give exactly zero advantage and exactly zero std for dynamic sampling to be right.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    r = rewards.detach().to(torch.float64)
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n_groups = counts.numel()
    n = counts.to(torch.float64)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    mean = zeros.index_add(0, inv, r) / n
    sq = zeros.index_add(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (n - 1).clamp(min=1))
    gmax = zeros.scatter_reduce(0, inv, r, "amax", include_self=False)
    gmin = zeros.scatter_reduce(0, inv, r, "amin", include_self=False)
    const = gmax == gmin
    std = torch.where(const, torch.zeros_like(std), std)
    return inv, counts, mean, std, const


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantage ``(R - group mean) / (group std + eps)`` per row, float32 ``[N]``.

    std is Bessel-corrected (n-1) as in verl and TRL; ``scale_by_std=False`` gives Dr. GRPO's
    ``R - group mean``. A group of one sample uses mean 0 and std 1 (verl), so its advantage is
    its raw reward (divided by ``1 + eps``); a group whose rewards are all equal gets exactly 0.
    ``group_ids`` may be any integers (they need not be contiguous or sorted).
    """
    inv, counts, mean, std, const = _group_stats(rewards, group_ids)
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    adv = rewards.detach().to(torch.float64) - mean[inv]
    if scale_by_std:
        adv = adv / (std[inv] + eps)
    adv = torch.where((const & ~single)[inv], torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO advantage ``R_i - mean_{j != i} R_j`` over the other members of i's group, ``[N]``.

    The leave-one-out baseline is unbiased (it does not depend on o_i). A group of one sample has
    no other member and gets 0; a group of equal rewards gets exactly 0.
    """
    inv, counts, mean, _, const = _group_stats(rewards, group_ids)
    r = rewards.detach().to(torch.float64)
    n = counts.to(torch.float64)[inv]
    total = (mean * counts.to(torch.float64))[inv]
    adv = r - (total - r) / (n - 1).clamp(min=1)
    zero = (counts == 1)[inv] | const[inv]
    adv = torch.where(zero, torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def group_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected std of each row's group, float32 ``[N]``; 0 for one-sample groups.

    Exactly 0 when the group's rewards are all equal (the DAPO "uninformative group" test, and
    TRL's ``frac_reward_zero_std`` metric is the mean of ``group_std == 0``). Note that
    :func:`group_advantages` substitutes std 1 for one-sample groups; this function reports the
    spread that is actually there.
    """
    inv, counts, _, std, _ = _group_stats(rewards, group_ids)
    std = torch.where(counts == 1, torch.zeros_like(std), std)
    return std[inv].to(torch.float32)


def keep_informative_groups(
    rewards: torch.Tensor, group_ids: torch.Tensor, keep_singletons: bool = True
) -> torch.Tensor:
    """DAPO dynamic sampling (Eq. 11): bool ``[N]``, True for rows whose group is informative.

    A group is informative when its rewards are not all equal (std > 0): otherwise every
    advantage is 0 and the group adds no gradient, only dilutes the token-mean. One-sample
    groups are kept when ``keep_singletons`` (verl ``RayDAPOTrainer`` keeps them: "std > 0 or
    the group has a single sample"), since their advantage is the raw reward, not 0.
    The caller passes the metric to filter on: DAPO filters on accuracy, so the overlong
    penalty is excluded and groups that differ only in length count as uniform.
    """
    inv, counts, _, _, const = _group_stats(rewards, group_ids)
    keep = ~const
    if keep_singletons:
        keep = keep | (counts == 1)
    return keep[inv]


# --------------------------------------------------------------------------------------------
# Per-token quantities
# --------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` per position: ``[B,T,V], [B,T] -> [B,T]`` float32.

    Computed as ``z[target] - logsumexp(z)`` so the ``[B,T,V]`` log-softmax is never
    materialised (the gather picks one entry per position). Logits are upcast to float32 first:
    bf16 log-probs are too coarse for ratios near 1.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    z = logits.float()
    picked = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy ``H(softmax(z))`` in nats per position: ``[..., V] -> [...]``.

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v``: no log of a probability is taken, so there is
    no ``0 * log 0`` (NaN) for vanishing probabilities. ``-inf`` logits (masked tokens) contribute
    exactly 0, with zero gradient: they are replaced by 0 in the ``p * z`` product, where their
    probability is 0 anyway.
    """
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    z_finite = torch.where(torch.isneginf(z), torch.zeros_like(z), z)
    return torch.logsumexp(z, dim=-1) - (p * z_finite).sum(-1)


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 ("low_var_kl") estimate of ``KL(pi || pi_ref)`` per token from samples of ``pi``.

    ``d = clamp(logp_ref - logp, -20, 20)``; ``k3 = exp(d) - d - 1`` clamped to [-10, 10] (verl).
    Unbiased because ``E_pi[pi_ref/pi] = 1``, and non-negative since ``e^d >= 1 + d``; 0 exactly
    when the two log-probs agree.
    """
    d = (logp_ref - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1).clamp(-KL_CLAMP, KL_CLAMP)


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------


def aggregate_tokens(
    values: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token losses ``[B,T]`` to a scalar with one of :data:`AGGREGATIONS`.

    ``normalizer`` replaces the denominator computed from this call's tensors: the masked token
    count for ``token-mean``, the number of sequences for the ``seq-mean-*`` modes (``B`` in the
    formulas; ``B * max_len`` is the Dr. GRPO denominator). The default sequence count is the
    number of rows with at least one masked token, so fully masked padding rows never dilute the
    loss; a trainer passing a global count should count the same way. Masked entries of
    ``values`` are ignored even when they are NaN/inf.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; expected one of {', '.join(AGGREGATIONS)}")
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must be equal [B,T]")
    m = mask.bool()
    v = torch.where(m, values, torch.zeros_like(values))
    if normalizer is not None and float(normalizer) <= 0:
        raise ValueError(f"normalizer must be > 0, got {float(normalizer)}")
    if agg == "token-mean":
        denom = normalizer if normalizer is not None else m.sum().clamp(min=1)
        return v.sum() / denom
    tokens = m.sum(-1)
    n_seq = normalizer if normalizer is not None else (tokens > 0).sum().clamp(min=1)
    if agg == "seq-mean-token-mean":
        return (v.sum(-1) / tokens.clamp(min=1)).sum() / n_seq
    if agg == "seq-mean-token-sum":
        return v.sum() / n_seq
    if max_len is None or max_len <= 0:
        raise ValueError("agg='seq-mean-token-sum-norm' needs a positive constant max_len (Dr. GRPO L_max)")
    return v.sum() / (n_seq * max_len)


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    dual_clip_c: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss (GRPO/DAPO surrogate, negated) and its diagnostics.

    Per token ``L = -min(r A, clip(r, 1-eps_low, 1+eps_high) A)`` with
    ``r = exp(clamp(logp_new - logp_old, -20, 20))`` (``logp_old`` is treated as a constant);
    with ``dual_clip_c = c`` (must be > 1) tokens with ``A < 0`` have ``L`` capped at ``-A c``.
    The scalar is :func:`aggregate_tokens` of ``L`` with ``agg``/``normalizer``/``max_len``
    (``max_len`` only for Dr. GRPO's ``seq-mean-token-sum-norm``). Pass the mini-batch token
    (or sequence) count as ``normalizer`` when summing micro-batch losses.

    ``advantages`` is ``[B]`` (one per sequence) or ``[B,T]``. ``mask`` is bool or 0/1.

    stats (python floats, over the masked tokens of this call; 0.0 when there are none):

    * ``clip_frac_low``: fraction of tokens with ``r < 1 - eps_low`` and ``A < 0`` — the tokens
      where the lower clip is the active branch of the min, i.e. whose gradient is zeroed
      because the policy already moved far enough *down*. Tokens below the range with ``A > 0``
      are not clipped by the min and do not count.
    * ``clip_frac_high``: fraction with ``r > 1 + eps_high`` and ``A > 0`` (upper clip active;
      the quantity Clip-Higher is about). ``A = 0`` tokens count in neither.
    * ``dual_clip_frac``: fraction with ``A < 0`` and ``r > c`` (dual-clip cap active; 0.0
      without dual clip).
    * ``approx_kl``: mean of ``kl_k3(logp_old, logp_new)``, the k3 estimate of
      ``KL(pi_old || pi_new)`` from the samples (drawn from ``pi_old``).
    * ``ratio_mean``: mean of ``r``.
    """
    if logp_new.shape != logp_old.shape or logp_new.shape != mask.shape or logp_new.dim() != 2:
        raise ValueError(
            f"logp_new {tuple(logp_new.shape)}, logp_old {tuple(logp_old.shape)} and mask "
            f"{tuple(mask.shape)} must be equal [B,T]"
        )
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if dual_clip_c is not None and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    m = mask.bool()
    adv = advantages.to(logp_new.dtype)
    if adv.dim() == 1:
        if adv.shape[0] != logp_new.shape[0]:
            raise ValueError(f"advantages {tuple(adv.shape)} do not match batch {logp_new.shape[0]}")
        adv = adv[:, None]
    adv = adv.expand_as(logp_new)
    zero = torch.zeros_like(logp_new)
    # Masked positions are zeroed *before* exp: padding log-probs may be -inf/NaN, and a NaN
    # there would otherwise reach the gradient through 0 * NaN.
    adv = torch.where(m, adv, zero)
    log_ratio = torch.where(m, logp_new - logp_old.detach(), zero)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    per_token = -surrogate
    if dual_clip_c is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip_c), per_token)
    loss = aggregate_tokens(per_token, m, agg, normalizer, max_len)

    with torch.no_grad():
        n_tok = int(m.sum())
        if n_tok == 0:
            keys = ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl", "ratio_mean")
            stats = dict.fromkeys(keys, 0.0)
            return loss, stats

        def frac(cond: torch.Tensor) -> float:
            return float((cond & m).sum()) / n_tok

        r = ratio.detach()
        kl = kl_k3(torch.zeros_like(log_ratio), log_ratio.detach())  # k3(logp_old, logp_new)
        stats = {
            "clip_frac_low": frac((r < 1 - eps_low) & (adv < 0)),
            "clip_frac_high": frac((r > 1 + eps_high) & (adv > 0)),
            "dual_clip_frac": frac((adv < 0) & (r > dual_clip_c)) if dual_clip_c is not None else 0.0,
            "approx_kl": float(torch.where(m, kl, zero).sum()) / n_tok,
            "ratio_mean": float(torch.where(m, r, zero).sum()) / n_tok,
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------


def overlong_penalty(
    lengths: torch.Tensor, max_len: int, cache_len: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong punishment (Eq. 13), float32 ``[N]``, to add to the correctness reward.

    With ``L_exp = max_len - cache_len``: 0 up to ``L_exp``, then linear
    ``(L_exp - L) / cache_len * factor`` down to ``-factor`` at ``L = max_len``, and ``-factor``
    beyond. ``cache_len = 0`` degenerates to a hard penalty for ``L > max_len``.
    """
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"need 0 <= cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    L = lengths.to(torch.float64)
    expected = float(max_len - cache_len)
    if cache_len > 0:
        pen = ((expected - L) / cache_len).clamp(max=0.0) * factor
    else:
        pen = torch.zeros_like(L)
    pen = torch.where(L > max_len, torch.full_like(L, -float(factor)), pen)
    return pen.to(torch.float32)


def empo_rewards(
    answers: Sequence[str | None], group_ids: Sequence[int], fmt: str
) -> tuple[torch.Tensor, dict[int, float], dict[int, float]]:
    """EMPO semantic-cluster rewards (Eq. 6), per-group semantic entropy (Eq. 4) and ``p_max``.

    ``answers[i]`` is the extracted answer of response i (None: no answer), ``group_ids[i]`` its
    prompt. Each group's answers are clustered with :func:`entroflow.answers.cluster_answers`
    in format ``fmt``. Returns

    * rewards, float32 ``[N]``: ``|cluster| / G`` for an answered response, 0 for no answer;
    * ``H[g] = -sum_j p_j log p_j`` (nats) over the answered clusters plus one no-answer cluster
      of mass ``n_none / G`` (rl.md §3.4: "no answer" is its own cluster);
    * ``p_max[g]`` = largest answered-cluster probability (0 if nothing was answered), the
      quantity :func:`empo_keep` filters on.

    Label-free by construction: no gold answer is accepted, so none can leak into the reward.
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"{len(answers)} answers but {len(group_ids)} group ids")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(int(g), []).append(i)
    rewards = [0.0] * len(answers)
    entropy: dict[int, float] = {}
    p_max: dict[int, float] = {}
    for g, idx in members.items():
        size = len(idx)
        ids = cluster_answers([answers[i] for i in idx], fmt)
        counts = Counter(c for c in ids if c >= 0)  # cluster_answers gives -1 for no answer
        n_none = size - sum(counts.values())
        for i, c in zip(idx, ids):
            rewards[i] = counts[c] / size if c >= 0 else 0.0
        masses = [k / size for k in counts.values()] + ([n_none / size] if n_none else [])
        entropy[g] = sum(-p * math.log(p) for p in masses)
        p_max[g] = max(counts.values(), default=0) / size
    return torch.tensor(rewards, dtype=torch.float32), entropy, p_max


def empo_keep(
    p_max: dict[int, float], low: float = 0.3, high: float = 1.0, drop_certain: bool = True
) -> set[int]:
    """Groups inside EMPO's entropy band (Eq. 7), expressed on the top-cluster probability.

    Keep g iff ``low <= p_max[g] <= high`` and, when ``drop_certain``, ``p_max[g] < 1`` (H_sem =
    0: every answer agrees, so all rewards and advantages are equal anyway and the group only
    dilutes the loss). A low ``p_max`` means high semantic entropy: the majority is unreliable as
    a pseudo-label. Defaults are the verl EMPO scripts' 0.3 / 1.0 (rl.md §3.4). Comparisons
    allow 1e-9 slack because ``p_max`` is a ratio ``k/G`` that a bound like 0.3 may only
    approximate in binary.
    """
    tol = 1e-9
    kept = set()
    for g, p in p_max.items():
        if p < low - tol or p > high + tol:
            continue
        if drop_certain and p >= 1.0 - tol:
            continue
        kept.add(g)
    return kept


def em_rl_rewards(
    mode: str,
    values: Sequence[torch.Tensor | Sequence[float]],
    normalize_by_length: bool = True,
) -> torch.Tensor:
    """EM-RL rewards, float32 ``[N]``, one per response, from its per-token values.

    * ``mode="sequence"`` (Eq. 3): ``values[i]`` are the token log-probs of response i; reward is
      their sum ``log pi(y)``, or their mean when ``normalize_by_length``.
    * ``mode="token"`` (Eq. 4): ``values[i]`` are the per-token full-vocabulary entropies; reward
      is minus their sum, or minus their mean when ``normalize_by_length``.

    The mean is the released code's choice (rl.md §4.3 [paper != code]); summed rewards favour
    short answers. An empty response gets reward 0.
    """
    if mode not in ("sequence", "token"):
        raise ValueError(f"mode must be 'sequence' or 'token', got {mode!r}")
    sign = 1.0 if mode == "sequence" else -1.0
    out = []
    for v in values:
        t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if t.numel() == 0:
            out.append(0.0)
            continue
        total = float(t.sum())
        out.append(sign * (total / t.numel() if normalize_by_length else total))
    return torch.tensor(out, dtype=torch.float32)


def entropy_loss(
    logits: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """EM-FT loss (§3.1, Eq. 2): masked token-mean of full-vocabulary entropies, to minimise.

    ``logits [B,T,V]`` at the response positions' *predicting* logits, ``mask [B,T]``. The
    gradient flows through the whole softmax at every position (unlike a policy gradient, which
    only sees the sampled token). ``normalizer`` defaults to the masked token count; pass the
    mini-batch token count when summing micro-batches, as for :func:`policy_loss`.
    """
    return aggregate_tokens(token_entropy(logits), mask, "token-mean", normalizer)
