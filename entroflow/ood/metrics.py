"""OOD detection metrics from two score arrays in OOD-ness orientation (higher = more OOD).

- ``auroc``: P(s_ood > s_id) + 1/2 P(s_ood = s_id), the Mann-Whitney U statistic over
  ``n_id * n_ood``; the same under either choice of positive class.
- ``aupr_in``: ID positive, ranked by ``-s``; ``aupr_out``: OOD positive, ranked by ``s``. Both are
  sklearn's step-wise average precision ``sum_n (R_n - R_{n-1}) P_n``, not the trapezoidal area
  OpenOOD's ``auc(recall, precision)`` computes (the two differ slightly on small sets).
- Two FPR@95 conventions, both taken at the first ROC point (``drop_intermediate=False``, so no
  point is skipped) whose TPR reaches 0.95:

  * ``fpr95_id_pos`` (MCM, Hendrycks & Gimpel, ODIN, Energy; the one Mysteries of the Deep reports):
    ID is positive with ID-ness ``-s``; the threshold keeps 95 % of ID as ID and the value is the
    share of OOD samples accepted as ID.
  * ``fpr95_ood_pos`` (OpenOOD v1.5, pytorch-ood ``FPR95TPR``): OOD is positive; the threshold
    catches 95 % of OOD and the value is the share of ID samples flagged as OOD.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

TPR_TARGET = 0.95


def _side(scores, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError(f"{name} is empty: OOD metrics need at least one score on each side")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} has {int((~np.isfinite(s)).sum())} non-finite score(s)")
    return s


def _fpr_at_tpr(positive: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= TPR_TARGET)])  # tpr ends at 1, so some point qualifies


def ood_metrics(score_id, score_ood) -> dict[str, float]:
    """AUROC, AUPR-In/-Out and both FPR@95 conventions (module docstring) of ID vs OOD scores."""
    s_id, s_ood = _side(score_id, "score_id"), _side(score_ood, "score_ood")
    s = np.concatenate([s_id, s_ood])
    is_ood = np.concatenate([np.zeros(s_id.size, bool), np.ones(s_ood.size, bool)])
    return {
        "auroc": float(roc_auc_score(is_ood, s)),
        "aupr_in": float(average_precision_score(~is_ood, -s)),
        "aupr_out": float(average_precision_score(is_ood, s)),
        "fpr95_id_pos": _fpr_at_tpr(~is_ood, -s),
        "fpr95_ood_pos": _fpr_at_tpr(is_ood, s),
    }
