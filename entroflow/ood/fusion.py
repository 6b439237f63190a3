"""Layer fusion of per-layer OOD scores and training-free layer selection (Mysteries of the Deep).

Meza De la Jara et al., "Mysteries of the Deep: Role of Intermediate Representations in OOD
Detection", NeurIPS 2025 (method diagram, Fig. 5): per-layer scores are added over a layer set S
that always holds the final layer, and S is the candidate with the lowest entropy of its ID score
distribution; no OOD sample is seen. Layers are ints (0 = embedding output, 1..L = block outputs).
Per-layer scores are z-normalised on ID-val data so layers of different scale add up fairly::

    z_l(x) = (s_l(x) - mean_l) / std_l,     F_S(x) = sum_{l in S} z_l(x)

The paper does not pin down "entropy of the score distribution"; both readings are here:

a. :func:`mean_softmax_entropy` (detector-independent): the mean over ID-val x of
   ``H( (1/|S|) sum_{l in S} p_l(.|x) )``, the Shannon entropy (nats) of the layer-averaged
   next-token distribution read through the logit lens (the paper averages per-layer MCM softmaxes).
b. :func:`score_entropy` (per detector): the differential entropy of ``F_S(x) / |S|`` over ID-val,
   estimated from a histogram of fixed bin width ``SCORE_BIN`` (z units); dividing by |S| puts
   sets of different size on one scale.

:func:`select_layers` returns ``argmin_S criterion(S)`` over every S = (subset of the non-final
layers) + {final} when there are at most ``exhaustive_max`` non-final candidates (2^11 = 2048 sets
for a 12-block model, cheap since fusion is a sum), else greedy forward selection from {final}.
:func:`oracle_layers` maximises an AUROC computed with OOD labels: an upper bound for reporting only.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

STD_FLOOR = 1e-12  # a constant layer gets z = 0 instead of a division by zero

LayerSet = tuple[int, ...]


def _scores(scores: dict[int, np.ndarray], layer: int) -> np.ndarray:
    if layer not in scores:
        raise ValueError(f"no scores for layer {layer}; have layers {sorted(scores)}")
    s = np.asarray(scores[layer], dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"layer {layer}: scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"layer {layer}: {int((~np.isfinite(s)).sum())} non-finite score(s)")
    return s


def layer_stats(val_scores: dict[int, np.ndarray]) -> dict[int, tuple[float, float]]:
    """ID-val ``(mean, std)`` per layer (std with ddof=0, floored at STD_FLOOR)."""
    out = {}
    for layer in val_scores:
        s = _scores(val_scores, layer)
        out[layer] = (float(s.mean()), max(float(s.std()), STD_FLOOR))
    return out


def fuse(scores: dict[int, np.ndarray], layers: Sequence[int], stats: dict[int, tuple[float, float]]) -> np.ndarray:
    """``F_S = sum_{l in S} (s_l - mean_l) / std_l``; for one layer an increasing affine map of it."""
    if len(layers) == 0:
        raise ValueError("fuse() needs at least one layer")
    total = None
    for layer in layers:
        if layer not in stats:
            raise ValueError(f"no ID-val stats for layer {layer}; have layers {sorted(stats)}")
        s = _scores(scores, layer)
        if total is not None and s.shape != total.shape:
            raise ValueError(f"layer {layer} has {s.size} scores, earlier layers {total.size}")
        mean, std = stats[layer]
        total = (s - mean) / std if total is None else total + (s - mean) / std
    return total


def candidate_sets(layers: Sequence[int], final: int) -> list[LayerSet]:
    """Every subset of the non-final layers plus ``final``, as sorted tuples, smallest sets first."""
    others = sorted(set(layers) - {final})
    return [
        tuple(sorted(subset + (final,)))
        for size in range(len(others) + 1)
        for subset in itertools.combinations(others, size)
    ]


def mean_softmax_entropy(val_probs: dict[int, np.ndarray], layers: Sequence[int]) -> float:
    """Reading (a): mean over ID-val rows of the entropy (nats) of the layer-averaged distribution.

    ``val_probs[l]``: ``[n, M]`` rows summing to 1 (a last "rest of the vocabulary" column counts as
    one outcome).
    """
    if len(layers) == 0:
        raise ValueError("mean_softmax_entropy() needs at least one layer")
    probs = []
    for layer in layers:
        if layer not in val_probs:
            raise ValueError(f"no probabilities for layer {layer}; have layers {sorted(val_probs)}")
        p = np.asarray(val_probs[layer], dtype=np.float64)
        if p.ndim != 2 or p.size == 0 or (probs and p.shape != probs[0].shape):
            raise ValueError(f"layer {layer}: probabilities must be one non-empty [n, M] shape, got {p.shape}")
        probs.append(p)
    return float(sps.entropy(np.mean(probs, axis=0), axis=1).mean())


SCORE_BIN = 0.1  # histogram bin width of score_entropy, in z units of the mean per-layer z-score


def score_entropy(
    val_scores: dict[int, np.ndarray], stats: dict[int, tuple[float, float]], layers: Sequence[int]
) -> float:
    """Reading (b): differential entropy of the mean per-layer z-score ``F_S / |S|`` on ID-val,
    ``-sum_i p_i log(p_i / w)`` over bins of width w = SCORE_BIN.

    Written out rather than scipy's ``differential_entropy``: its spacing estimators return -inf
    as soon as a few ID scores tie (measured: a last-token feature of prompts that end in the same
    token), and a tie is then "the lowest entropy" whatever the rest of the distribution. With a
    fixed width, tied scores share a bin and the estimate stays finite and comparable across sets.
    """
    x = fuse(val_scores, layers, stats) / len(layers)
    lo = np.floor(x.min() / SCORE_BIN) * SCORE_BIN
    counts, _ = np.histogram(x, bins=np.arange(lo, x.max() + 2 * SCORE_BIN, SCORE_BIN))
    p = counts[counts > 0] / x.size
    return float(-(p * np.log(p / SCORE_BIN)).sum())


def select_layers(
    criterion: Callable[[LayerSet], float],
    layers: Sequence[int],
    final: int,
    exhaustive_max: int = 12,
) -> tuple[LayerSet, dict[LayerSet, float]]:
    """The layer set (final layer always in) with the lowest ``criterion``, and every evaluated value.

    Exhaustive over :func:`candidate_sets` when at most ``exhaustive_max`` non-final layers, else
    greedy: from ``(final,)`` add the layer that lowers the criterion most, stop when none lowers it.
    Ties go to the smaller set, then the lexicographically smaller one.
    """
    values: dict[LayerSet, float] = {}

    def value(s: LayerSet) -> float:
        if s not in values:
            v = float(criterion(s))
            if math.isnan(v):
                raise ValueError(f"layer-set criterion is NaN for {s}")
            values[s] = v
        return values[s]

    def rank(s: LayerSet):
        return (value(s), len(s), s)

    others = sorted(set(layers) - {final})
    if len(others) <= exhaustive_max:
        return min(candidate_sets(layers, final), key=rank), values
    best = (final,)
    while True:
        grown = [tuple(sorted(best + (layer,))) for layer in others if layer not in best]
        if not grown:
            return best, values
        step = min(grown, key=rank)
        if value(step) >= value(best):
            return best, values
        best = step


def oracle_layers(
    auroc: Callable[[LayerSet], float],
    layers: Sequence[int],
    final: int,
    exhaustive_max: int = 12,
) -> tuple[LayerSet, dict[LayerSet, float]]:
    """The set with the highest AUROC computed WITH OOD labels, and every evaluated AUROC.

    An upper bound reported next to the selected set to show the selection gap; never the method's
    result (the method sees no OOD data).
    """
    best, negated = select_layers(lambda s: -auroc(s), layers, final, exhaustive_max)
    return best, {s: -v for s, v in negated.items()}
