"""Per-layer OOD detectors in pytorch-ood's shape: fit on ID features, then score (higher = more OOD).

Feature detectors (numpy, float64) take ``fit(x [n, d], y=None)`` with optional integer class
labels (None = one class) and ``score(x [m, d]) -> [m]``:

- :class:`Mahalanobis` (Lee et al. 2018): class means ``mu_k`` and one covariance ``Sigma`` shared by
  all classes, estimated on the class-centred features::

      M(x) = min_k (x - mu_k)^T Sigma^-1 (x - mu_k)

  pytorch-ood multiplies by 1/2; that factor is dropped here since it changes no ranking. The
  covariance is sklearn's ``LedoitWolf`` (shrinkage; stays invertible when d > n) or
  ``EmpiricalCovariance``, and ``Sigma^-1`` is the estimator's ``precision_``.
- :class:`RelativeMahalanobis` (RMD, Ren et al. 2021): ``min_k d_k(x) - d_0(x)``, where ``d_0`` is the
  Mahalanobis distance under one background Gaussian fitted to all features (overall mean, not
  class-centred covariance); it cancels the directions in which everything, ID or not, varies.
- :class:`CosineKNN` (Sun et al. 2022): the Euclidean distance from the L2-normalised query to its
  k-th nearest L2-normalised fit feature; on the unit sphere ``|a - b|^2 = 2 (1 - cos(a, b))``, so
  it ranks as the k-th cosine distance.

Logit scores (:func:`logit_scores`, torch, no fitting) are defined on the next-token distribution at
the last prompt position; applied to an intermediate layer through the logit lens (the final norm
and the LM head applied to that layer's hidden state), they give one score per layer.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

FEATURE_DETECTORS = ("mahalanobis", "rmd", "knn")
LOGIT_DETECTORS = ("msp", "max_logit", "energy", "entropy")
COVARIANCES = {"ledoit_wolf": LedoitWolf, "empirical": EmpiricalCovariance}


class DetectorError(ValueError):
    """A detector was misused: bad input, wrong shape, or scored before fitting."""


class _FeatureDetector:
    """Input checks shared by the feature detectors; subclasses implement ``_fit`` and ``_score``."""

    min_fit = 2  # a covariance or a neighbour set needs at least two samples

    def _fail(self, msg: str):
        raise DetectorError(f"{type(self).__name__}: {msg}")

    def _matrix(self, x, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            self._fail(f"{what} expects a 2-D [n, d] feature array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            self._fail(f"{what} got {int((~np.isfinite(x)).sum())} non-finite feature value(s)")
        return x

    def fit(self, x: np.ndarray, y: np.ndarray | None = None):
        x = self._matrix(x, "fit()")
        if len(x) < self.min_fit:
            self._fail(f"fit() needs at least {self.min_fit} samples, got {len(x)}")
        if y is None:
            y = np.zeros(len(x), dtype=np.int64)
        y = np.asarray(y)
        if y.shape != (len(x),):
            self._fail(f"fit() got {y.shape} labels for {len(x)} samples")
        self._fit(x, y)
        self.dim_ = x.shape[1]  # set last: a failed fit leaves the detector unfitted
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "dim_"):
            self._fail("score() called before fit()")
        x = self._matrix(x, "score()")
        if x.shape[1] != self.dim_:
            self._fail(f"score() got {x.shape[1]}-dimensional features, fit() had {self.dim_}")
        return self._score(x)


def _precision(centred: np.ndarray, covariance: str) -> np.ndarray:
    return COVARIANCES[covariance](assume_centered=True).fit(centred).precision_


class Mahalanobis(_FeatureDetector):
    """Min over classes of the squared Mahalanobis distance under a shared covariance."""

    def __init__(self, covariance: str = "ledoit_wolf"):
        if covariance not in COVARIANCES:
            self._fail(f"unknown covariance {covariance!r}; choose from {sorted(COVARIANCES)}")
        self.covariance = covariance

    def _fit(self, x, y):
        classes, index = np.unique(y, return_inverse=True)
        self.means_ = np.stack([x[index == k].mean(axis=0) for k in range(len(classes))])
        self.precision_ = _precision(x - self.means_[index], self.covariance)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """``[m, K]`` squared distances to each class mean (after the checks of :meth:`score`)."""
        out = np.empty((len(x), len(self.means_)))
        for k, mu in enumerate(self.means_):  # K is small; a loop keeps memory at [m, d]
            diff = x - mu
            out[:, k] = ((diff @ self.precision_) * diff).sum(axis=1)  # BLAS matmul, not an O(d^2) einsum loop
        return out

    def _score(self, x):
        return self.distances(x).min(axis=1)


class RelativeMahalanobis(Mahalanobis):
    """RMD: class-conditional Mahalanobis minus the distance under one background Gaussian."""

    def _fit(self, x, y):
        super()._fit(x, y)
        # One class = the overall mean and the covariance of all features around it.
        self.background_ = Mahalanobis(self.covariance).fit(x)

    def _score(self, x):
        return super()._score(x) - self.background_.distances(x)[:, 0]


class CosineKNN(_FeatureDetector):
    """Distance to the k-th nearest L2-normalised fit feature (Sun et al. 2022 KNN)."""

    def __init__(self, k: int = 10):
        if int(k) != k or k < 1:
            self._fail(f"k must be a positive integer, got {k!r}")
        self.k = int(k)

    def _fit(self, x, y):
        if len(x) < self.k:
            self._fail(f"k={self.k} neighbours need at least {self.k} fit samples, got n={len(x)}")
        self.index_ = NearestNeighbors(n_neighbors=self.k).fit(normalize(x))

    def _score(self, x):
        dist, _ = self.index_.kneighbors(normalize(x))
        return dist[:, -1]


def make_detector(name: str, **params) -> _FeatureDetector:
    """A feature detector by name (one of FEATURE_DETECTORS) built with ``params``."""
    classes = {"mahalanobis": Mahalanobis, "rmd": RelativeMahalanobis, "knn": CosineKNN}
    if name not in classes:
        raise DetectorError(f"unknown feature detector {name!r}; choose from {', '.join(FEATURE_DETECTORS)}")
    return classes[name](**params)


def logit_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """OOD-ness scores of next-token logits ``[n, V]`` -> ``{name: [n]}`` (float32 whatever the input).

    ``msp = -max softmax``, ``max_logit = -max logit``, ``energy = -logsumexp(logits)`` (T = 1),
    ``entropy`` = Shannon entropy of the softmax in nats (already higher = more OOD).
    """
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise DetectorError(f"logit_scores: expects [n, V] logits with V >= 1, got shape {tuple(logits.shape)}")
    z = logits.float()  # bf16 softmax/logsumexp lose too many digits for ranking
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return {
        "msp": -p.max(dim=-1).values,
        "max_logit": -z.max(dim=-1).values,
        "energy": -torch.logsumexp(z, dim=-1),
        "entropy": torch.special.entr(p).sum(dim=-1),  # entr(0) = 0: masked (-inf) logits are fine
    }
