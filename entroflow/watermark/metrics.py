"""Detection metrics from detector scores of positives and negatives (watermark.md §0, §3.4, §4.3, §5).

Convention: a higher score means "more watermarked" (a z-score, or any score ordered the same
way; pass ``-p`` or ``-log p`` for p-value-type scores). A text is flagged when its score is
``>= threshold``. Positives are watermarked texts, negatives are unwatermarked generations, human
text or text watermarked under another key (one call per negative pool).

What is reported (:func:`detection_metrics`):

* ``auroc`` — ``sklearn.metrics.roc_auc_score`` (ties count one half).
* **Empirical TPR at a target FPR** — the operating point of the ROC curve with the highest TPR
  among those whose empirical FPR on the negatives is ``<= target``; i.e. the lowest threshold
  ``t`` (a score of the data) with ``#{neg >= t} / N_neg <= target``. It lets through at most
  ``floor(target · N_neg)`` negatives; ties at the threshold are flagged together, so the realised
  FPR can be below the target. The FPR resolution is ``1 / N_neg``: with ``N_neg < 1 / target``
  the only admissible FPR is 0, which measures TPR at FPR 0 rather than at the target, so the
  value is NaN and ``..._resolved`` is False (500 negatives resolve 1 % but not 0.1 %; LTW's
  table works at 0.2 % resolution, watermark.md §3.6).
* **Theoretical TPR** — from exact p-values (``pos_p``, ``neg_p``): the rule ``p <= alpha`` with
  ``alpha`` = the target FPR. Its TPR on positives, and its *realised* FPR on negatives (the check
  that the null is calibrated; it can exceed alpha when the null is wrong, e.g. repeated n-grams).
* ``best_f1`` — the largest F1 over thresholds (``precision_recall_curve``), with its threshold.
* ``median_score_pos`` / ``median_score_neg`` — the median z of each class when scores are z.

Edge cases never raise: empty ``pos`` or ``neg`` gives NaN for every metric that needs both
classes; a NaN score (a text too short to score, a failed detection) is counted
(``n_pos_nan``, ``n_neg_nan``) and treated as "not flagged" (set below every finite score), so
it lowers the TPR of positives instead of silently disappearing from the denominator; a NaN
p-value is likewise never ``<= alpha``. All-equal scores give AUROC 0.5.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def _clean(pos: Sequence[float], neg: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Arrays with NaN (and -inf) scores replaced by a value below every finite score; +inf is
    kept as the largest finite value + 1 (sklearn rejects infinities)."""
    p = np.asarray(list(pos), dtype=np.float64)
    n = np.asarray(list(neg), dtype=np.float64)
    n_pos_nan, n_neg_nan = int(np.isnan(p).sum()), int(np.isnan(n).sum())
    both = np.concatenate([p, n])
    finite = both[np.isfinite(both)]
    lo = float(finite.min()) - 1.0 if finite.size else 0.0
    hi = float(finite.max()) + 1.0 if finite.size else 1.0
    for a in (p, n):
        a[np.isnan(a) | (a == -np.inf)] = lo
        a[a == np.inf] = hi
    return p, n, n_pos_nan, n_neg_nan


def empirical_tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, target: float) -> tuple[float, float, float]:
    """(TPR, threshold, realised FPR) of the highest-TPR ROC point with FPR <= ``target``.

    Threshold ``+inf`` (nothing flagged) when even the largest negative cannot be let through.
    Inputs must be finite and both non-empty; see :func:`detection_metrics` for the NaN handling.
    """
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)  # thr[0] = +inf: nothing flagged
    k = int(np.nonzero(fpr <= target + 1e-12)[0][-1])  # fpr is non-decreasing; fpr[0] = 0
    return float(tpr[k]), float(thr[k]), float(fpr[k])


def detection_metrics(pos: Sequence[float], neg: Sequence[float], pos_p: Sequence[float] | None = None,
                      neg_p: Sequence[float] | None = None, fprs: Sequence[float] = (0.01, 0.001),
                      z_threshold: float | None = None) -> dict[str, float]:
    """Detection metrics of one (positives, negative pool) pair; keys below (module docstring).

    For each ``f`` in ``fprs`` (keys use ``f"{f:g}"``, e.g. ``0.01``):
    ``tpr_at_fpr_{f}`` (empirical, NaN when unresolved), ``tpr_at_fpr_{f}_resolved`` (1.0/0.0),
    ``threshold_at_fpr_{f}``, ``realised_fpr_at_fpr_{f}``, and with p-values
    ``tpr_at_fpr_{f}_theory`` and ``realised_fpr_at_fpr_{f}_theory``. Also ``auroc``,
    ``best_f1``, ``best_f1_threshold``, ``median_score_pos``, ``median_score_neg``, ``n_pos``,
    ``n_neg``, ``n_pos_nan``, ``n_neg_nan``, ``fpr_resolution`` (1/N_neg) and, with
    ``z_threshold``, the fixed-threshold rates ``tpr_at_z`` / ``fpr_at_z`` (score >= z_threshold;
    e.g. KGW's z > 4). Every value is a float (MLflow-loggable; key names avoid ``@`` and ``=``,
    which MLflow rejects).
    """
    nan = float("nan")
    raw_p = np.asarray(list(pos), dtype=np.float64)
    raw_n = np.asarray(list(neg), dtype=np.float64)
    p, n, n_pos_nan, n_neg_nan = _clean(pos, neg)
    both = p.size > 0 and n.size > 0
    out: dict[str, float] = {"n_pos": float(p.size), "n_neg": float(n.size), "n_pos_nan": float(n_pos_nan),
                             "n_neg_nan": float(n_neg_nan),
                             "fpr_resolution": 1.0 / n.size if n.size else nan}
    with warnings.catch_warnings():  # nanmedian of an all-NaN slice warns; NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        out["median_score_pos"] = float(np.nanmedian(raw_p)) if raw_p.size else nan
        out["median_score_neg"] = float(np.nanmedian(raw_n)) if raw_n.size else nan
    y = np.r_[np.ones(p.size), np.zeros(n.size)]
    s = np.r_[p, n]
    out["auroc"] = float(roc_auc_score(y, s)) if both else nan
    if both:
        prec, rec, thr = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)[:-1]  # last point has no threshold
        k = int(np.argmax(f1))
        out["best_f1"], out["best_f1_threshold"] = float(f1[k]), float(thr[k])
    else:
        out["best_f1"] = out["best_f1_threshold"] = nan
    for f in fprs:
        key = f"{f:g}"
        resolved = n.size * f >= 1.0 - 1e-9
        out[f"tpr_at_fpr_{key}_resolved"] = float(resolved and both)
        if both:
            tpr, thr_f, realised = empirical_tpr_at_fpr(p, n, f)
            out[f"tpr_at_fpr_{key}"] = tpr if resolved else nan
            out[f"threshold_at_fpr_{key}"] = thr_f if resolved else nan
            out[f"realised_fpr_at_fpr_{key}"] = realised if resolved else nan
        else:
            out[f"tpr_at_fpr_{key}"] = out[f"threshold_at_fpr_{key}"] = out[f"realised_fpr_at_fpr_{key}"] = nan
        if pos_p is not None:
            pp = np.asarray(list(pos_p), dtype=np.float64)
            out[f"tpr_at_fpr_{key}_theory"] = float(np.mean(pp <= f)) if pp.size else nan  # NaN <= f is False
        if neg_p is not None:
            npv = np.asarray(list(neg_p), dtype=np.float64)
            out[f"realised_fpr_at_fpr_{key}_theory"] = float(np.mean(npv <= f)) if npv.size else nan
    if z_threshold is not None:
        out["tpr_at_z"] = float(np.mean(p >= z_threshold)) if p.size else nan
        out["fpr_at_z"] = float(np.mean(n >= z_threshold)) if n.size else nan
    return out


def tokens_to_detect(z_at_T: Sequence[float], z_threshold: float) -> int | None:
    """First prefix length at which the prefix z reaches ``z_threshold`` (``z >= threshold``).

    ``z_at_T[i]`` is the z-score of the first ``i + 1`` scored tokens (the detector's cumulative
    ``z_at_T``), so the answer is ``i + 1``; None if the threshold is never reached. NaN entries
    (prefixes too short to score) never count as reached.
    """
    for i, z in enumerate(z_at_T):
        if z is not None and not math.isnan(z) and z >= z_threshold:
            return i + 1
    return None


def detection_vs_length(z_at_T: Sequence[Sequence[float]], lengths: Sequence[int],
                        z_threshold: float) -> dict[str, list[float]]:
    """Detection rate at a fixed z threshold of the prefix z, for each length ``T`` in ``lengths``.

    For sequence ``i`` the score at length ``T`` is ``z_at_T[i][T-1]``; a sequence with fewer
    than ``T`` scored tokens uses its last value (its whole text is read by then; KGW truncates
    the same way). Empty ``z_at_T[i]`` or NaN scores count as not detected. On positives the rate
    is the TPR, on negatives the FPR of the rule. Returns ``{"T": [...], "rate": [...],
    "n_full": [...]}``, ``n_full`` = sequences with at least ``T`` scored tokens.
    """
    Ts, rates, full = [], [], []
    for T in lengths:
        if T < 1:
            raise ValueError(f"lengths must be >= 1, got {T}")
        hits = 0
        n_full = 0
        for z in z_at_T:
            if len(z) == 0:
                continue
            n_full += len(z) >= T
            v = z[min(T, len(z)) - 1]
            hits += v is not None and not math.isnan(v) and v >= z_threshold
        Ts.append(int(T))
        rates.append(hits / len(z_at_T) if len(z_at_T) else float("nan"))
        full.append(n_full)
    return {"T": Ts, "rate": rates, "n_full": full}


def mean_and_spread(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1), n) over seeds, NaNs left out.

    One value has no spread: std 0.0 (as entroflow/rl/compare.py reports it); no value gives
    (NaN, NaN, 0). Use for metrics across seeds, not across samples (those have their own
    intervals).
    """
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size)
