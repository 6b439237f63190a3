"""Unlearning objectives: GradAscent, GradDiff, NPO, SimNPO, IdkDPO and RMU as plain torch functions.

Everything here is pure math on tensors: the caller runs the model(s) and passes per-token
log-probabilities of the target (answer) tokens, ``token_logps[b, t] = log pi(y_t | x, y_<t)``, with
a mask that is 1 on answer tokens and 0 on prompt/padding tokens (the ``labels != -100`` of
OpenUnlearning). So the trainer and the tests see exactly the same numbers. The spec is
``shared/reference/ood_unlearning.md`` §B5.2, which follows OpenUnlearning (locuslab/open-unlearning,
``src/trainer/unlearn/*.py``); notation follows it:

* ``log pi(y|x) = sum_t m_t log pi(y_t | ...)`` the summed sequence log-prob (:func:`sequence_logprob`),
  ``NLL_sum = -log pi(y|x)``, ``|y| = sum_t m_t``;
* ``NLL`` (:func:`mean_nll`) the token-mean NLL pooled over the batch: what a Hugging Face causal LM
  returns as ``outputs.loss``, which is what OpenUnlearning uses for the GA / retain terms;
* ``pi_ref`` the frozen pre-unlearning model; its log-probs are detached here (it never trains);
* gamma weights the forget term, alpha the retain term (``R = NLL_retain``), both 1 by default
  (SimNPO: gamma = 0.125).

GradAscent (Jang et al. 2023 "Knowledge Unlearning"; TOFU, Maini et al. 2024)::

    L = -NLL_forget

GradDiff (Liu et al. 2022 "Continual learning and private unlearning"; TOFU baseline)::

    L = gamma * (-NLL_forget) + alpha * NLL_retain

NPO (Zhang et al. 2024, "Negative Preference Optimization", arXiv 2404.05868, Eq. 3), beta = 0.1::

    L_f = (2/beta) * E_b[ log(1 + (pi/pi_ref)^beta) ]
        = -(2/beta) * E_b[ log sigmoid(-beta * (log pi(y_f|x) - log pi_ref(y_f|x))) ]

  on summed sequence log-probs; ``L = gamma * L_f + alpha * NLL_retain`` when a retain batch is given
  (NPO+RT / OpenUnlearning's NPO). Its gradient is GA's weighted by
  ``2 (pi/pi_ref)^beta / (1 + (pi/pi_ref)^beta)``, which -> 0 once the sequence is forgotten: the
  loss is bounded below by 0, unlike GA, which diverges (paper §3).

SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", arXiv 2410.07163, Eq. 4), reference-free and length-normalised, OpenUnlearning
defaults beta = 4.5, delta = 0, gamma = 0.125, alpha = 1::

    L_f = -(2/beta) * E_b[ log sigmoid(beta * (NLL_sum / |y| - delta)) ]
        = -(2/beta) * E_b[ log sigmoid(-beta * log pi(y|x) / |y| - beta * delta) ]
    L   = gamma * L_f (+ alpha * NLL_retain)

  **[paper != code]** the paper writes the margin outside the product, ``-beta/|y| log pi - delta``;
  OpenUnlearning (and §B5.2) computes ``beta * (NLL/|y| - delta)``. We follow the code; the two
  agree at the default delta = 0.

IdkDPO (DPO, Rafailov et al. 2023, arXiv 2305.18290, Eq. 7, with the "I don't know" refusal as the
preferred answer and the true forget answer as the rejected one; TOFU / OpenUnlearning), beta = 0.1::

    L_f = -(2/beta) * E_b[ log sigmoid(beta * ((log pi - log pi_ref)(y_idk) - (log pi - log pi_ref)(y_f))) ]

  The ``2/beta`` scale is OpenUnlearning's ``compute_dpo_loss`` (shared with NPO), not the ``1`` of the
  DPO paper; so a policy equal to its reference gives ``(2/beta) log 2``, not ``log 2``.

RMU (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218, §5 / Eq. 1-2), on the hidden states of
one layer (OpenUnlearning default ``model.layers.7``, c = 2)::

    L_forget = mean_b mean_{t in y_b} (1/d) || h_theta(t) - c u ||^2
    L_retain = mean_b mean_{t in y_b} (1/d) || h_theta(t) - h_frozen(t) ||^2
    L        = gamma * L_forget + alpha * L_retain

  ``u`` a fixed random unit vector (:func:`rmu_control_vector`). ``(1/d)||.||^2`` is the per-token MSE
  (``F.mse_loss`` averages over the hidden size); tokens are averaged per sequence, then over the
  batch, as OpenUnlearning's ``compute_activation_loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu")

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Validation and reductions
# --------------------------------------------------------------------------------------------


def _check_pair(logps: Tensor, mask: Tensor, logps_name: str, mask_name: str) -> Tensor:
    """Validate a [B, T] log-prob tensor and its mask; return the mask as bool."""
    if logps.dim() != 2:
        raise ValueError(f"{logps_name} must be 2-D [batch, tokens], got shape {tuple(logps.shape)}")
    if mask.shape != logps.shape:
        raise ValueError(
            f"{mask_name} must have the shape of {logps_name} {tuple(logps.shape)}, got {tuple(mask.shape)}"
        )
    return mask.bool()


def _check_rows(m: Tensor, mask_name: str) -> None:
    """Sequence-level losses need >= 1 answer token in every row: an empty row has no log pi."""
    if m.numel() == 0 or not bool(m.any(dim=-1).all()):
        raise ValueError(f"{mask_name} has a sequence with no answer tokens")


def _check_same(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the shape of {a_name} {tuple(a.shape)}, got {tuple(b.shape)}")


def _masked(logps: Tensor, m: Tensor) -> Tensor:
    # where, not multiply: padded positions may hold -inf or NaN (e.g. log 0), and 0 * -inf = NaN.
    return torch.where(m, logps, torch.zeros((), dtype=logps.dtype, device=logps.device))


def sequence_logprob(token_logps: Tensor, mask: Tensor) -> Tensor:
    """``log pi(y|x) = sum_t m_t log pi(y_t | x, y_<t)`` per sequence, shape [B].

    Raises ValueError when a sequence has no answer tokens: its "log-prob" 0 would silently enter
    NPO/SimNPO/DPO as a constant (SimNPO would divide by zero).
    """
    m = _check_pair(token_logps, mask, "token_logps", "mask")
    _check_rows(m, "mask")
    return _masked(token_logps, m).sum(dim=-1)


def mean_nll(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Token-mean NLL pooled over the batch: ``-sum_{b,t} m log pi / sum_{b,t} m`` (scalar).

    The pooling (not a per-sequence mean) matches Hugging Face's ``outputs.loss`` with
    ``labels = -100`` off the answer, which OpenUnlearning uses for GA and the retain NLL.
    Raises ValueError when the mask selects no token at all.
    """
    m = _check_pair(token_logps, mask, "token_logps", "mask")
    n = m.sum()
    if int(n) == 0:
        raise ValueError("mask selects no answer tokens")
    return -_masked(token_logps, m).sum() / n


def _retain_term(retain_logps, retain_mask, alpha: float):
    """``alpha * NLL_retain``, or None without a retain batch; both tensors or neither."""
    if retain_logps is None and retain_mask is None:
        return None
    if retain_logps is None or retain_mask is None:
        raise ValueError("retain_logps and retain_mask must be given together")
    m = _check_pair(retain_logps, retain_mask, "retain_logps", "retain_mask")
    if not bool(m.any()):
        raise ValueError("retain_mask selects no answer tokens")
    return alpha * mean_nll(retain_logps, m)


def _forget_seq(forget_logps: Tensor, forget_mask: Tensor):
    m = _check_pair(forget_logps, forget_mask, "forget_logps", "forget_mask")
    _check_rows(m, "forget_mask")
    return _masked(forget_logps, m).sum(dim=-1), m


def _ref_seq(ref_logps: Tensor, ref_name: str, like: Tensor, like_name: str, m: Tensor) -> Tensor:
    _check_same(like, like_name, ref_logps, ref_name)
    # pi_ref is the frozen pre-unlearning model: no gradient may reach it.
    return _masked(ref_logps.detach(), m).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def grad_ascent(forget_logps: Tensor, forget_mask: Tensor) -> Tensor:
    """GradAscent: ``L = -NLL_forget`` (minimising it raises the forget NLL; unbounded below)."""
    m = _check_pair(forget_logps, forget_mask, "forget_logps", "forget_mask")
    if not bool(m.any()):
        raise ValueError("forget_mask selects no answer tokens")
    return -mean_nll(forget_logps, m)


def grad_diff(
    forget_logps: Tensor,
    forget_mask: Tensor,
    retain_logps: Tensor,
    retain_mask: Tensor,
    gamma: float = 1.0,
    alpha: float = 1.0,
) -> Tensor:
    """GradDiff: ``L = gamma * (-NLL_forget) + alpha * NLL_retain`` (OpenUnlearning gamma = alpha = 1)."""
    return gamma * grad_ascent(forget_logps, forget_mask) + _retain_term(retain_logps, retain_mask, alpha)


def _with_retain(forget_term: Tensor, gamma: float, retain_logps, retain_mask, alpha: float) -> Tensor:
    retain = _retain_term(retain_logps, retain_mask, alpha)
    loss = gamma * forget_term
    return loss if retain is None else loss + retain


def npo(
    forget_logps: Tensor,
    forget_mask: Tensor,
    ref_forget_logps: Tensor,
    beta: float = 0.1,
    retain_logps: Tensor | None = None,
    retain_mask: Tensor | None = None,
    alpha: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """NPO (Zhang et al. 2024, Eq. 3): ``-(2/beta) E[log sigmoid(-beta (log pi - log pi_ref))]``.

    Log-probs are summed over each sequence's answer tokens; ``ref_forget_logps`` are the frozen
    model's per-token log-probs of the same tokens (same shape and mask). With a retain batch,
    ``gamma * L_f + alpha * NLL_retain`` (NPO+RT).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logpi, m = _forget_seq(forget_logps, forget_mask)
    logref = _ref_seq(ref_forget_logps, "ref_forget_logps", forget_logps, "forget_logps", m)
    forget = -(2.0 / beta) * F.logsigmoid(-beta * (logpi - logref)).mean()
    return _with_retain(forget, gamma, retain_logps, retain_mask, alpha)


def simnpo(
    forget_logps: Tensor,
    forget_mask: Tensor,
    beta: float = 4.5,
    delta: float = 0.0,
    gamma: float = 0.125,
    retain_logps: Tensor | None = None,
    retain_mask: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    """SimNPO (Fan et al. 2024, Eq. 4): ``gamma * -(2/beta) E[log sigmoid(beta (NLL_sum/|y| - delta))]``.

    Reference-free; ``NLL_sum / |y|`` is the length-normalised (per-answer-token) NLL, so a long
    answer weighs no more than a short one. Defaults are OpenUnlearning's (§B5.2): beta = 4.5,
    delta = 0, gamma = 0.125, alpha = 1; ``delta`` sits inside the ``beta`` product as in its code.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logpi, m = _forget_seq(forget_logps, forget_mask)
    nll_norm = -logpi / m.sum(dim=-1).to(logpi.dtype)
    forget = -(2.0 / beta) * F.logsigmoid(beta * (nll_norm - delta)).mean()
    return _with_retain(forget, gamma, retain_logps, retain_mask, alpha)


def idk_dpo(
    forget_logps: Tensor,
    forget_mask: Tensor,
    idk_logps: Tensor,
    idk_mask: Tensor,
    ref_forget_logps: Tensor,
    ref_idk_logps: Tensor,
    beta: float = 0.1,
    retain_logps: Tensor | None = None,
    retain_mask: Tensor | None = None,
    alpha: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """IdkDPO: DPO (Rafailov et al. 2023, Eq. 7) with the refusal preferred and the true answer rejected.

    ``L_f = -(2/beta) E[log sigmoid(beta ((log pi - log pi_ref)(y_idk) - (log pi - log pi_ref)(y_f)))]``
    on summed sequence log-probs, scaled by ``2/beta`` as OpenUnlearning's ``compute_dpo_loss``.
    ``idk_logps`` / ``idk_mask`` hold the refusal answer of the same questions (row b pairs with
    forget row b; its length may differ). With a retain batch, ``gamma * L_f + alpha * NLL_retain``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    lose, m_lose = _forget_seq(forget_logps, forget_mask)
    m_win = _check_pair(idk_logps, idk_mask, "idk_logps", "idk_mask")
    _check_rows(m_win, "idk_mask")
    if idk_logps.shape[0] != forget_logps.shape[0]:
        raise ValueError(
            f"idk_logps must have the batch size of forget_logps ({forget_logps.shape[0]}), "
            f"got {idk_logps.shape[0]}"
        )
    win = _masked(idk_logps, m_win).sum(dim=-1)
    lose_ref = _ref_seq(ref_forget_logps, "ref_forget_logps", forget_logps, "forget_logps", m_lose)
    win_ref = _ref_seq(ref_idk_logps, "ref_idk_logps", idk_logps, "idk_logps", m_win)
    margin = (win - win_ref) - (lose - lose_ref)
    forget = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
    return _with_retain(forget, gamma, retain_logps, retain_mask, alpha)


def rmu_control_vector(d: int, seed: int) -> Tensor:
    """RMU's fixed direction ``u``: a seeded random **unit** vector of size ``d`` (float32, CPU).

    Drawn as WMDP and OpenUnlearning do, ``torch.rand`` (uniform on [0, 1)) then normalised, so
    ``u`` lies in the positive orthant; a private generator keeps the global RNG untouched and
    makes the direction reproducible from ``seed``. Scale by the steering coefficient in :func:`rmu`.
    """
    if d <= 0:
        raise ValueError(f"d must be > 0, got {d}")
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(d, generator=g, dtype=torch.float32)
    return u / u.norm()


def _activation_mse(acts: Tensor, target: Tensor, m: Tensor) -> Tensor:
    """mean_b mean_{t: m} mean_d (acts - target)^2, as OpenUnlearning's ``compute_activation_loss``."""
    sq = (acts - target).pow(2).mean(dim=-1)  # [B, T] per-token MSE over the hidden size
    sq = torch.where(m, sq, torch.zeros((), dtype=sq.dtype, device=sq.device))
    return (sq.sum(dim=-1) / m.sum(dim=-1).to(sq.dtype)).mean()


def _check_acts(acts: Tensor, mask: Tensor, acts_name: str, mask_name: str) -> Tensor:
    if acts.dim() != 3:
        raise ValueError(f"{acts_name} must be 3-D [batch, tokens, hidden], got shape {tuple(acts.shape)}")
    if mask.shape != acts.shape[:2]:
        raise ValueError(
            f"{mask_name} must have shape {tuple(acts.shape[:2])} of {acts_name}, got {tuple(mask.shape)}"
        )
    m = mask.bool()
    _check_rows(m, mask_name)
    return m


def rmu(
    forget_acts: Tensor,
    forget_mask: Tensor,
    retain_acts: Tensor,
    retain_mask: Tensor,
    frozen_retain_acts: Tensor,
    control: Tensor,
    steering_coeff: float = 2.0,
    alpha: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """RMU (Li et al. 2024, WMDP, Eq. 1-2): ``gamma * MSE(h_forget, c u) + alpha * MSE(h_retain, h_frozen)``.

    ``*_acts`` are one layer's hidden states [B, T, d] (OpenUnlearning hooks ``model.layers.7``);
    ``control`` is the unit vector ``u`` [d] of :func:`rmu_control_vector`, ``steering_coeff`` is c
    (OpenUnlearning 2; the WMDP scripts use 6.5-20 and alpha 100-1200: model-dependent, tune them).
    The frozen activations are detached (the frozen model never trains).
    """
    m_f = _check_acts(forget_acts, forget_mask, "forget_acts", "forget_mask")
    m_r = _check_acts(retain_acts, retain_mask, "retain_acts", "retain_mask")
    _check_same(retain_acts, "retain_acts", frozen_retain_acts, "frozen_retain_acts")
    if control.dim() != 1 or control.shape[0] != forget_acts.shape[-1]:
        raise ValueError(
            f"control must be 1-D of the hidden size {forget_acts.shape[-1]}, "
            f"got shape {tuple(control.shape)}"
        )
    if retain_acts.shape[-1] != forget_acts.shape[-1]:
        raise ValueError(
            f"retain_acts must have the hidden size of forget_acts {forget_acts.shape[-1]}, "
            f"got {retain_acts.shape[-1]}"
        )
    target = (steering_coeff * control.detach()).to(forget_acts.dtype)
    forget = _activation_mse(forget_acts, target, m_f)
    retain = _activation_mse(retain_acts, frozen_retain_acts.detach(), m_r)
    return gamma * forget + alpha * retain
