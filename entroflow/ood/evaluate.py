"""One model's OOD evaluation, from its features file (entroflow/ood/features.py): every detector
on every layer, the paper's layer fusion with the set chosen on ID data only, and the oracle.

A *series* is a detector read one way: a feature detector on one pooling (``mahalanobis/mean``),
a logit-based score through the logit lens at the last prompt position (``msp/lens``), or the
text's mean NLL (``nll/seq``, final layer only). Each has one score per layer (higher = more OOD).

Per series (``selector`` column of the metrics):

* ``layer``: each layer alone (0 = the token embeddings, L = the last layer);
* ``last`` and ``all``: the last layer; every layer fused;
* ``mean_softmax_entropy`` / ``score_entropy``: the fused set chosen by one reading of the
  paper's criterion (entroflow/ood/fusion.py), from ID ``val`` rows only. The first reading is
  one set for every series (it reads the logit-lens distributions, not a score);
* ``oracle/<shift>``: the fused set with the best mean AUROC over that shift's suites, chosen
  with the OOD test labels: an upper bound, never the method's result.

Feature detectors are fitted on the ``fit`` rows with the ID domains as classes
(class-conditional Mahalanobis, as Lee et al. 2018 fit one mean per class); metrics compare
each OOD suite with its ID pool (entroflow/ood/suites.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from entroflow.ood import fusion
from entroflow.ood.detectors import FEATURE_DETECTORS, LOGIT_DETECTORS, make_detector
from entroflow.ood.features import feature_column, file_layers, logit_column, read_matrix, read_rows
from entroflow.ood.metrics import ood_metrics
from entroflow.ood.suites import id_domains, id_pool, ood_suites

SHIFTS = {1: "near", 2: "mid", 3: "far", 0: "other-domain"}  # shift level -> name (0: a pretrained model's synthetic ID suites)


def series_name(detector: str, pooling: str) -> str:
    return f"{detector}/{pooling}"


def layer_scores(path: Path, detectors: Sequence[str], poolings: Sequence[str],
                 params: dict[str, dict] | None = None) -> tuple[list[dict], dict[str, dict[int, np.ndarray]], set[str]]:
    """(rows, {series: {layer: scores}}, ID domains) for one features file: the ``val`` and
    ``test`` rows and their scores (a detector is never scored on its own ``fit`` rows)."""
    params = params or {}
    all_rows = read_rows(path).to_pylist()
    L, file_poolings = file_layers(path)
    fit = np.array([r["split"] == "fit" for r in all_rows])
    rows = [r for r, f in zip(all_rows, fit) if not f]
    domains = sorted(id_domains(all_rows))
    y = np.array([domains.index(r["domain"]) for r, f in zip(all_rows, fit) if f])
    out: dict[str, dict[int, np.ndarray]] = {}
    for p in poolings:
        if p not in file_poolings:
            raise ValueError(f"ood.pooling: '{p}' was not extracted (features have {', '.join(file_poolings)})")
        for layer in range(L + 1):
            x = read_matrix(path, feature_column(p, layer))
            for det in (d for d in detectors if d in FEATURE_DETECTORS):
                s = make_detector(det, **params.get(det, {})).fit(x[fit], y).score(x[~fit])
                out.setdefault(series_name(det, p), {})[layer] = s
    for det in (d for d in detectors if d in LOGIT_DETECTORS):
        out[series_name(det, "lens")] = {layer: read_matrix(path, logit_column(det, layer))[~fit].astype(float)
                                         for layer in range(L + 1)}
    if "nll" in detectors:
        out[series_name("nll", "seq")] = {L: np.array([r["nll"] for r in rows], dtype=float)}
    return rows, out, set(domains)


def evaluate(rows: list[dict], scores: dict[str, dict[int, np.ndarray]], domains: set[str],
             val_probs: np.ndarray | None, exhaustive_max: int = 12) -> tuple[list[dict], list[dict]]:
    """(metrics rows, selection rows) from :func:`layer_scores`' output. ``val_probs``:
    [n_val, L+1, M+1] logit-lens distributions of the ``val`` rows (None: the
    mean_softmax_entropy reading is skipped). Only ``val`` rows enter the selection."""
    val = np.array([r["split"] == "val" for r in rows])
    suites = ood_suites(rows, domains)
    pools = {s: id_pool(rows, s, domains) for s in suites}
    members = {s: [i for i, r in enumerate(rows) if r["suite"] == s] for s in suites}
    shift_of = {s: rows[members[s][0]]["shift"] for s in suites}
    by_shift: dict[int, list[str]] = {}
    for s in suites:
        by_shift.setdefault(shift_of[s], []).append(s)
    metrics, selections = [], []

    def measure(series: str, s: np.ndarray, layer: int, layer_set: Sequence[int], selector: str) -> None:
        det, pooling = series.split("/")
        for suite in suites:
            a, b = s[pools[suite]], s[members[suite]]
            metrics.append({"series": series, "detector": det, "pooling": pooling, "selector": selector,
                            "layer": layer, "layer_set": _set_name(layer_set), "n_layers": len(layer_set),
                            "suite": suite, "shift": shift_of[suite], "n_id": len(a), "n_ood": len(b),
                            **ood_metrics(a, b)})

    soft_set = None
    if val_probs is not None:
        n_layers = val_probs.shape[1]
        probs = {layer: val_probs[:, layer, :] for layer in range(n_layers)}
        soft_set, values = fusion.select_layers(lambda S: fusion.mean_softmax_entropy(probs, S),
                                                list(range(n_layers)), n_layers - 1, exhaustive_max)
        selections += [{"series": "*", "criterion": "mean_softmax_entropy", "layer_set": _set_name(S), "value": v,
                        "chosen": S == soft_set} for S, v in values.items()]
    for series, by_layer in scores.items():
        for layer, s in by_layer.items():
            measure(series, s, layer, (layer,), "layer")
        if len(by_layer) == 1:
            continue
        layers = sorted(by_layer)
        final = layers[-1]
        stats = fusion.layer_stats({layer: s[val] for layer, s in by_layer.items()})
        val_scores = {layer: s[val] for layer, s in by_layer.items()}
        chosen, values = fusion.select_layers(lambda S: fusion.score_entropy(val_scores, stats, S), layers, final,
                                              exhaustive_max)
        selections += [{"series": series, "criterion": "score_entropy", "layer_set": _set_name(S), "value": v,
                        "chosen": S == chosen} for S, v in values.items()]
        sets = {"last": (final,), "all": tuple(layers), "score_entropy": chosen}
        if soft_set is not None:
            sets["mean_softmax_entropy"] = soft_set
        for shift, names in sorted(by_shift.items()):
            def auroc(S, names=names):
                f = fusion.fuse(by_layer, S, stats)
                return float(np.mean([_auroc(f[pools[n]], f[members[n]]) for n in names]))
            sets[f"oracle/{SHIFTS.get(shift, shift)}"], _ = fusion.oracle_layers(auroc, layers, final, exhaustive_max)
        for name, S in sets.items():
            measure(series, fusion.fuse(by_layer, S, stats), -1, S, name)
    return metrics, selections


def _auroc(score_id: np.ndarray, score_ood: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic over mid-ranks (ties count half): the value of
    sklearn's roc_auc_score without its input checks, which dominate the oracle search's
    thousands of calls on a 30-layer model."""
    ranks = rankdata(np.r_[score_id, score_ood])
    n_id, n_ood = len(score_id), len(score_ood)
    return float((ranks[n_id:].sum() - n_ood * (n_ood + 1) / 2) / (n_id * n_ood))


def _set_name(layers: Sequence[int]) -> str:
    return "+".join(str(x) for x in sorted(layers))
