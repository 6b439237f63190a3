"""Unlearning evaluation metrics (TOFU / MUSE / OpenUnlearning) as plain functions over arrays.

No model is called here: the caller runs the model and passes per-token log-probabilities of the
answer tokens, ``token_logps[b, t] = log pi(y_t | x, y_<t)``, with a mask that is 1 on answer tokens
and 0 on prompt/padding tokens (as in :mod:`entroflow.unlearn.losses`). Inputs may be numpy arrays
or torch tensors; results are numpy float64 arrays (one value per sequence) or Python floats. The
spec is ``shared/reference/ood_unlearning.md`` §B5.2, which follows OpenUnlearning
(locuslab/open-unlearning, ``src/evals/metrics/{memorization,privacy,utility}.py``, ``mia/*.py``).
Notation: ``|y| = sum_t m_t`` and ``lbar(y|x) = (1/|y|) sum_t m_t log pi(y_t | ...)`` the
length-normalised log-prob.

Probability (TOFU, Maini et al. 2024, arXiv 2401.06121, §2.5; OpenUnlearning ``probability``)::

    P~(y|x) = P(y|x)^(1/|y|) = exp(lbar(y|x))                      (:func:`answer_probability`)

Truth Ratio (TOFU §2.5; OpenUnlearning ``truth_ratio``), K perturbed (wrong) answers y^pert_k and one
paraphrased answer y~::

    R = exp( (1/K) sum_k lbar(y^pert_k|x) ) / exp( lbar(y~|x) )            (:func:`truth_ratio`)

  i.e. the token-mean log-probs of the perturbations are averaged first and then exponentiated: the
  numerator is the *geometric* mean of P~ over the K perturbations (§B5.2). Summaries
  (:func:`truth_ratio_summary`): forget set ``closer_to_1_better = mean min(R, 1/R)``; retain /
  real-authors / world-facts ``true_better = mean max(0, 1 - R)``. OpenUnlearning adds 1e-10 to the
  denominators; we compute R in log space and skip the epsilons (R > 0 always).

Forget Quality (TOFU §2.5.1; OpenUnlearning ``ks_test``): the p-value of the two-sample
Kolmogorov-Smirnov test between the per-question Truth Ratios of the unlearned model and of the retain
model on the forget set, ``scipy.stats.ks_2samp(tr_unl, tr_ret).pvalue`` (:func:`forget_quality`).

Model Utility (TOFU §2.5.1; OpenUnlearning ``hm_aggregate``): the harmonic mean of its components
(9 in TOFU: {retain, real authors, world facts} x {probability, ROUGE, Truth Ratio true_better}),
``scipy.stats.hmean`` (:func:`model_utility`); 0 as soon as one component is 0.

Extraction Strength (Carlini et al. 2021 "Extracting Training Data from LLMs"; OpenUnlearning
``extraction_strength``, §B5.2)::

    ES = 1 - k*/|y|,  k* = min{ k in 0..|y| : argmax pi(. | x, y_<t) = y_t for every t >= k }

  with teacher-forced argmax predictions (:func:`extraction_strength`). k* = |y| (empty suffix) when
  not even the last token is predicted, so a never-extracted answer scores 0 and a fully extracted
  one 1. **[code != this]** OpenUnlearning loops ``for k in range(|y|)`` and keeps k = |y| - 1 when
  no suffix matches, giving 1/|y| instead of 0 for a never-extracted answer; we use the definition.

Exact Memorization (Tirumala et al. 2022; OpenUnlearning ``exact_memorization``)::

    EM = (1/|y|) sum_t m_t [argmax pi(. | x, y_<t) = y_t]                 (:func:`exact_memorization`)

Membership-inference scores, here all oriented "higher = more likely a member" (OpenUnlearning's
attacks return the opposite sign and label the *holdout* set 1 in ``roc_auc_score``; the AUC is the
same, "1 = forget more likely"):

* LOSS (Yeom et al. 2018): ``s = lbar(y|x) = -avg NLL``                        (:func:`mia_loss`)
* ZLib (Carlini et al. 2021, §5.1): ``s = lbar(y|x) / len(zlib.compress(text.encode("utf-8")))``,
  the avg NLL over the zlib-compressed byte length, negated                    (:func:`mia_zlib`)
* Min-K% (Shi et al. 2024, arXiv 2310.16789, Eq. 1): the mean of the ``n = max(1, int(k |y|))`` lowest
  token log-probs, k = 0.4 in the TOFU config                                  (:func:`mia_mink`)
* Min-K%++ (Zhang et al. 2024, arXiv 2404.02936, Eq. 4): each token's log-prob standardised by the
  model's own next-token distribution, ``(log p(y_t) - mu_t) / sigma_t`` with
  ``mu_t = E_{z~p} log p(z)``, ``sigma_t^2 = E_{z~p} (log p(z))^2 - mu_t^2``, then Min-K%
  (:func:`mia_mink_plus_plus`)
* AUC: ``sklearn.metrics.roc_auc_score`` with members (forget) labelled 1 (:func:`mia_auc`).

PrivLeak (MUSE, Shi et al. 2024, arXiv 2407.06460, §3; OpenUnlearning ``privleak``)::

    PrivLeak = (AUC'_unl - AUC'_ret) / AUC'_ret * 100,   AUC' = 1 - AUC       (:func:`privleak`)

  MUSE reports the MIA AUC as ``1 - AUC`` of the usual "members score higher" convention, and
  OpenUnlearning flips its AUCs accordingly before the relative difference; :func:`privleak` takes
  AUCs in our convention (from :func:`mia_auc`) and does the same flip. ~0 is good; an
  under-unlearned model (forget set still looks like members, AUC > AUC_ret) gives a large
  *negative* value (the MUSE target models are near -100), an over-unlearned one a large positive
  value. (§B5.2 states the opposite sign reading; its formula, the MUSE paper and the code agree
  with the one here.) OpenUnlearning uses AUC_ret = 0.5 when no retain-model logs are given.
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

TRUTH_RATIO_MODES = ("closer_to_1_better", "true_better")


# --------------------------------------------------------------------------------------------
# Validation and reductions
# --------------------------------------------------------------------------------------------


def _arr(x, dtype=np.float64) -> np.ndarray:
    """numpy copy of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double().numpy() if dtype is np.float64 else x.numpy()
    return np.asarray(x, dtype=dtype)


def _pair(values, mask, values_name: str, mask_name: str, ndim: int | None = 2, dtype=np.float64):
    """Validate values [..., T] and a same-shape mask; every row needs >= 1 answer token."""
    v = _arr(values, dtype)
    m = _arr(mask, bool)
    if ndim is not None and v.ndim != ndim:
        raise ValueError(f"{values_name} must be {ndim}-D, got shape {v.shape}")
    if v.ndim < 1:
        raise ValueError(f"{values_name} must be at least 1-D, got shape {v.shape}")
    if m.shape != v.shape:
        raise ValueError(f"{mask_name} must have the shape of {values_name} {v.shape}, got {m.shape}")
    if v.size == 0 or not bool(m.any(axis=-1).all()):
        raise ValueError(f"{mask_name} has a sequence with no answer tokens")
    return v, m


def _mean_logp(token_logps, mask, logps_name: str = "token_logps", mask_name: str = "mask", ndim=2):
    """``lbar = sum_t m_t logp_t / sum_t m_t`` over the last axis."""
    v, m = _pair(token_logps, mask, logps_name, mask_name, ndim)
    # where, not multiply: padded positions may hold -inf or NaN, and 0 * -inf = NaN.
    return np.where(m, v, 0.0).sum(axis=-1) / m.sum(axis=-1)


def _scores(x, name: str) -> np.ndarray:
    a = _arr(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


# --------------------------------------------------------------------------------------------
# TOFU: probability, truth ratio, forget quality, model utility
# --------------------------------------------------------------------------------------------


def answer_probability(token_logps, mask) -> np.ndarray:
    """Length-normalised answer probability ``P~ = exp(mean_t log pi(y_t|...))`` per sequence, [B]."""
    return np.exp(_mean_logp(token_logps, mask))


def truth_ratio(perturbed_logps, perturbed_mask, paraphrased_logps, paraphrased_mask) -> np.ndarray:
    """Per-question Truth Ratio ``R = exp(mean_k lbar(pert_k)) / exp(lbar(para))``, shape [B].

    ``perturbed_logps`` is either a [B, K, T] array with a [B, K, T] ``perturbed_mask`` (K perturbed
    answers per question, padded to T), a [B, T] array (K = 1), or a list of K [B, T_k] arrays with a
    list of K masks (the answers may be tokenised to different lengths). ``paraphrased_logps`` and
    ``paraphrased_mask`` are [B, T']. The numerator is the geometric mean of P~ over the K
    perturbations (losses averaged, then exponentiated, as OpenUnlearning).
    """
    if isinstance(perturbed_logps, (list, tuple)):
        if not isinstance(perturbed_mask, (list, tuple)) or len(perturbed_mask) != len(perturbed_logps):
            raise ValueError("perturbed_mask must be a list with one mask per perturbed_logps entry")
        if len(perturbed_logps) == 0:
            raise ValueError("perturbed_logps must hold at least one perturbed answer")
        cols = [
            _mean_logp(lp, m, f"perturbed_logps[{k}]", f"perturbed_mask[{k}]")
            for k, (lp, m) in enumerate(zip(perturbed_logps, perturbed_mask))
        ]
        if len({c.shape for c in cols}) != 1:
            raise ValueError("perturbed_logps entries must share the batch size")
        pert = np.stack(cols, axis=-1).mean(axis=-1)
    else:
        v = _arr(perturbed_logps)
        if v.ndim not in (2, 3):
            raise ValueError(f"perturbed_logps must be [B, T] or [B, K, T], got shape {v.shape}")
        lbar = _mean_logp(v, perturbed_mask, "perturbed_logps", "perturbed_mask", ndim=v.ndim)
        pert = lbar if v.ndim == 2 else lbar.mean(axis=-1)
    para = _mean_logp(paraphrased_logps, paraphrased_mask, "paraphrased_logps", "paraphrased_mask")
    if para.shape != pert.shape:
        raise ValueError(
            f"paraphrased_logps must have the batch size of perturbed_logps {pert.shape[0]}, got {para.shape[0]}"
        )
    return np.exp(pert - para)


def truth_ratio_summary(ratios, mode: str) -> float:
    """TOFU aggregate of per-question Truth Ratios.

    ``closer_to_1_better`` (forget set): ``mean min(R, 1/R)``, 1 when perturbed and paraphrased
    answers are equally likely. ``true_better`` (retain / utility sets): ``mean max(0, 1 - R)``,
    high when the paraphrased (true) answer beats the perturbed ones.
    """
    r = _scores(ratios, "ratios")
    if np.any(r <= 0):
        raise ValueError("ratios must be positive")
    if mode == "closer_to_1_better":
        return float(np.mean(np.minimum(r, 1.0 / r)))
    if mode == "true_better":
        return float(np.mean(np.maximum(0.0, 1.0 - r)))
    raise ValueError(f"mode must be one of {TRUTH_RATIO_MODES}, got {mode!r}")


def forget_quality(truth_ratios_unlearned, truth_ratios_retain_model) -> float:
    """Forget Quality: ``ks_2samp(TR_unlearned, TR_retain_model).pvalue`` (higher = closer to retain)."""
    a = _scores(truth_ratios_unlearned, "truth_ratios_unlearned")
    b = _scores(truth_ratios_retain_model, "truth_ratios_retain_model")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """Model Utility: harmonic mean (``scipy.stats.hmean``) of the named components; 0 if any is 0."""
    if not values:
        raise ValueError("values must hold at least one component")
    v = np.array([float(x) for x in values.values()])
    bad = [k for k, x in values.items() if not np.isfinite(float(x)) or float(x) < 0]
    if bad:
        raise ValueError(f"values must be finite and >= 0, got {bad[0]}={values[bad[0]]}")
    if np.any(v == 0):  # the harmonic mean's limit; spelled out so no divide-by-zero warning fires
        return 0.0
    return float(hmean(v))


# --------------------------------------------------------------------------------------------
# Memorisation: extraction strength, exact memorisation
# --------------------------------------------------------------------------------------------


def extraction_strength(token_correct, mask) -> np.ndarray:
    """Extraction Strength ``1 - k*/|y|`` per sequence, [B].

    ``token_correct[b, t]`` is True when the teacher-forced greedy prediction
    ``argmax pi(. | x, y_<t)`` equals the answer token ``y_t`` (the caller runs the model); ``mask``
    selects the answer tokens. Read along the answer tokens only, k* is the smallest prefix length
    k in 0..|y| such that every answer token from position k on is predicted correctly, i.e. one
    past the last wrong answer token (0 if none is wrong, |y| if the last one is wrong). So a fully
    reproduced answer scores 1.0 and one whose last token is not predicted scores 0. Written by
    hand: no library has it.
    """
    c, m = _pair(token_correct, mask, "token_correct", "mask", dtype=bool)
    out = np.empty(c.shape[0])
    for b in range(c.shape[0]):
        ans = c[b][m[b]]
        wrong = np.flatnonzero(~ans)
        k_star = 0 if wrong.size == 0 else int(wrong[-1]) + 1
        out[b] = 1.0 - k_star / ans.size
    return out


def exact_memorization(pred_tokens, target_tokens, mask) -> np.ndarray:
    """Exact Memorization: fraction of answer tokens whose teacher-forced argmax equals the target, [B]."""
    p = _arr(pred_tokens, np.int64)
    t, m = _pair(target_tokens, mask, "target_tokens", "mask", dtype=np.int64)
    if p.shape != t.shape:
        raise ValueError(f"pred_tokens must have the shape of target_tokens {t.shape}, got {p.shape}")
    return ((p == t) & m).sum(axis=-1) / m.sum(axis=-1)


# --------------------------------------------------------------------------------------------
# Membership inference (higher score = more likely a member)
# --------------------------------------------------------------------------------------------


def mia_loss(token_logps, mask) -> np.ndarray:
    """LOSS attack score: the mean answer-token log-prob ``lbar = -avg NLL`` per sequence, [B]."""
    return _mean_logp(token_logps, mask)


def mia_zlib(token_logps, mask, texts: Sequence[str]) -> np.ndarray:
    """ZLib attack score ``lbar / len(zlib.compress(text.encode("utf-8")))`` per sequence, [B].

    ``texts[b]`` is the decoded text the log-probs were computed on (OpenUnlearning decodes the
    whole input); its zlib length in bytes approximates its entropy, so easy-to-compress text is not
    mistaken for memorised text.
    """
    lbar = _mean_logp(token_logps, mask)
    if isinstance(texts, str) or len(texts) != lbar.shape[0]:
        raise ValueError(f"texts must be a list of {lbar.shape[0]} strings, one per sequence")
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return lbar / sizes


def _lowest_k_mean(values: np.ndarray, m: np.ndarray, k: float) -> np.ndarray:
    # Min-K%'s "mean of the k fraction lowest tokens" per row: a masked partial sort, by hand since
    # no library reduces a ragged (masked) batch this way.
    out = np.empty(values.shape[0])
    for b in range(values.shape[0]):
        row = np.sort(values[b][m[b]])
        n = max(1, int(len(row) * k))
        out[b] = row[:n].mean()
    return out


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")


def mia_mink(token_logps, mask, k: float = 0.4) -> np.ndarray:
    """Min-K% score: the mean of the ``max(1, int(k |y|))`` lowest answer-token log-probs, [B]."""
    _check_k(k)
    v, m = _pair(token_logps, mask, "token_logps", "mask")
    return _lowest_k_mean(v, m, k)


def mia_mink_plus_plus(token_logps, vocab_logps, mask, k: float = 0.4) -> np.ndarray:
    """Min-K%++ score, [B]: Min-K% over ``(log p(y_t) - mu_t) / sigma_t``.

    ``vocab_logps[b, t, :]`` is the model's full next-token log-distribution at answer position t
    (``log_softmax`` of the logits), ``mu_t = sum_z p(z) log p(z)``,
    ``sigma_t = sqrt(sum_z p(z) log p(z)^2 - mu_t^2)``.
    """
    _check_k(k)
    v, m = _pair(token_logps, mask, "token_logps", "mask")
    lv = _arr(vocab_logps)
    if lv.ndim != 3 or lv.shape[:2] != v.shape:
        raise ValueError(f"vocab_logps must be [B, T, V] with [B, T] = {v.shape}, got {lv.shape}")
    p = np.exp(lv)
    safe = np.where(p > 0, lv, 0.0)  # 0 * log 0 = 0
    mu = (p * safe).sum(axis=-1)
    sigma = np.sqrt(np.maximum((p * safe**2).sum(axis=-1) - mu**2, 0.0))
    return mink_plus_plus_from_stats(v, mu, sigma, m, k)


def mink_plus_plus_from_stats(token_logps, mu, sigma, mask, k: float = 0.4) -> np.ndarray:
    """Min-K%++ from the per-position ``mu_t`` and ``sigma_t`` of :func:`mia_mink_plus_plus`, [B]:
    what an evaluation pass that already reduced the vocabulary (and so never holds [B, T, V])
    passes in."""
    _check_k(k)
    v, m = _pair(token_logps, mask, "token_logps", "mask")
    mu, sigma = _arr(mu), _arr(sigma)
    if mu.shape != v.shape or sigma.shape != v.shape:
        raise ValueError(f"mu and sigma must have the shape {v.shape} of token_logps, got {mu.shape}, {sigma.shape}")
    if np.any(m & (sigma == 0)):
        raise ValueError("vocab_logps has a one-hot answer position: sigma = 0, Min-K%++ is undefined")
    z = np.where(m, (v - mu) / np.where(sigma > 0, sigma, 1.0), 0.0)
    return _lowest_k_mean(z, m, k)


def mia_auc(member_scores, nonmember_scores) -> float:
    """ROC AUC of an MIA (``roc_auc_score``, members labelled 1): 1 = members always score higher."""
    a = _scores(member_scores, "member_scores")
    b = _scores(nonmember_scores, "nonmember_scores")
    labels = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE PrivLeak ``(AUC'_unl - AUC'_ret) / AUC'_ret * 100`` with ``AUC' = 1 - AUC``.

    Both AUCs in :func:`mia_auc`'s convention (forget = members, 1 = forget more likely), on forget
    vs holdout, for the unlearned and the retain model. ~0 good, negative = under-unlearning,
    positive = over-unlearning (see the module docstring).
    """
    for name, a in (("auc_unlearned", auc_unlearned), ("auc_retain", auc_retain)):
        if not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {a}")
    ref = 1.0 - float(auc_retain)
    if ref == 0.0:
        raise ValueError("auc_retain must be < 1: PrivLeak divides by 1 - auc_retain")
    return ((1.0 - float(auc_unlearned)) - ref) / ref * 100.0
