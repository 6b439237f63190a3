"""Figures of the watermark evaluation: each function writes one PNG and returns its path.

Inputs are plain dicts and lists (scores, metric values, spreads), so the flow calls these with
what it already has; nothing here imports the pipeline. Style follows entroflow/rl/compare.py:
Agg backend, one colour per scheme (``C0``, ``C1``, ... in the order given) kept across panels,
light grids, ``tight_layout`` and the figure closed after saving.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(names))}


def _finite(xs: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(xs), dtype=np.float64)
    return a[np.isfinite(a)]


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], out: Path | str,
             log_fpr: bool = False, title: str = "ROC: watermarked vs unwatermarked") -> Path:
    """One ROC line per scheme from ``{scheme: (positive scores, negative scores)}``.

    NaN scores are set below every finite score (never flagged), as in
    :func:`entroflow.watermark.metrics.detection_metrics`. ``log_fpr``: log-scale FPR axis from
    ``1/N_neg`` (the resolution), to show the low-FPR regime that matters for watermarks.
    """
    from entroflow.watermark.metrics import _clean

    out = Path(out)
    color = _colors(list(curves))
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    min_fpr = 1.0
    for name, (pos, neg) in curves.items():
        p, n, _, _ = _clean(pos, neg)
        if p.size == 0 or n.size == 0:
            continue
        fpr, tpr, _ = roc_curve(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n])
        min_fpr = min(min_fpr, 1.0 / n.size)
        if log_fpr:  # FPR 0 has no place on a log axis: start the curve at the resolution
            fpr = np.maximum(fpr, 1.0 / n.size)
        ax.plot(fpr, tpr, lw=1.5, color=color[name], label=name, drawstyle="steps-post")
    if log_fpr:
        ax.set_xscale("log"), ax.set_xlim(min_fpr, 1.0)
        ax.plot([min_fpr, 1], [min_fpr, 1], ls=":", color="grey", lw=1)
    else:
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("false positive rate" + (" (log)" if log_fpr else "")), ax.set_ylabel("true positive rate")
    ax.set_ylim(0, 1.02), ax.grid(alpha=0.3), ax.legend(fontsize=8, loc="lower right"), ax.set_title(title, fontsize=10)
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def plot_z_histograms(pos: Sequence[float], negatives: Mapping[str, Sequence[float]], out: Path | str,
                      z_threshold: float | None = 4.0, title: str = "Detector z-scores",
                      pos_label: str = "watermarked") -> Path:
    """Histogram of the positives' z against each negative pool (``{pool: z-scores}``), on shared
    bins, with the fixed threshold as a vertical line. NaN scores are left out (and counted in the
    legend)."""
    out = Path(out)
    pools = {pos_label: pos, **negatives}
    arrays = {k: _finite(v) for k, v in pools.items()}
    allv = np.concatenate([a for a in arrays.values() if a.size] or [np.zeros(1)])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 41)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (k, a) in enumerate(arrays.items()):
        dropped = len(list(pools[k])) - a.size
        label = f"{k} (n={a.size}" + (f", {dropped} unscored)" if dropped else ")")
        ax.hist(a, bins=bins, alpha=0.45 if i else 0.6, color=f"C{i % 10}", label=label, density=True)
    if z_threshold is not None:
        ax.axvline(z_threshold, color="k", ls="--", lw=1, label=f"z = {z_threshold:g}")
    ax.set_xlabel("z-score"), ax.set_ylabel("density"), ax.grid(alpha=0.3)
    ax.legend(fontsize=8), ax.set_title(title, fontsize=10)
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (ppl, tpr) points: no other point has lower-or-equal ppl and higher-or-equal
    tpr with one of them strict. Sorted by ppl."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda t: (t[0], -t[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_quality_tradeoff(schemes: Mapping[str, Sequence[Mapping[str, float]]], out: Path | str,
                          reference_ppl: float | None = None, metric_label: str = "TPR @ 1% FPR",
                          title: str = "Detectability vs quality") -> Path:
    """Perplexity (x, lower is better) against detection (y, higher is better), one line per scheme.

    ``schemes[name]`` is a list of points (e.g. one per δ), each a dict with ``ppl`` and ``tpr``
    and optionally ``ppl_err``, ``tpr_err`` (spreads across seeds: drawn as error bars) and
    ``label`` (annotated next to the point). ``reference_ppl``: the unwatermarked model's
    perplexity, a vertical line. The dashed black step line is the Pareto front over all schemes.
    """
    out = Path(out)
    color = _colors(list(schemes))
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    everything = []
    for name, pts in schemes.items():
        pts = [p for p in pts if np.isfinite(p.get("ppl", np.nan)) and np.isfinite(p.get("tpr", np.nan))]
        if not pts:
            continue
        pts = sorted(pts, key=lambda p: p["ppl"])
        x, y = [p["ppl"] for p in pts], [p["tpr"] for p in pts]
        xerr = [p.get("ppl_err", 0.0) for p in pts] if any("ppl_err" in p for p in pts) else None
        yerr = [p.get("tpr_err", 0.0) for p in pts] if any("tpr_err" in p for p in pts) else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=4, lw=1.2, capsize=3, color=color[name], label=name)
        for p in pts:
            if "label" in p:
                ax.annotate(str(p["label"]), (p["ppl"], p["tpr"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        everything += list(zip(x, y))
    front = _pareto(everything)
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.plot(fx, fy, ls="--", color="k", lw=0.8, drawstyle="steps-post", label="Pareto front")
    if reference_ppl is not None and np.isfinite(reference_ppl):
        ax.axvline(reference_ppl, color="grey", ls=":", lw=1.2, label=f"unwatermarked ppl {reference_ppl:.3g}")
    ax.set_xlabel("oracle perplexity (lower is better)"), ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3), ax.legend(fontsize=8), ax.set_title(title, fontsize=10)
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def plot_attack_strength(results: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], out: Path | str,
                         metric_label: str = "TPR @ 1% FPR", title: str = "Detection under attack") -> Path:
    """One panel per attack, detection against attack strength, one line per scheme.

    ``results[attack][scheme]`` is a list of ``{"strength": s, "value": v}`` (optional ``err``:
    spread across seeds, drawn as error bars). Strength 0 is the clean text.
    """
    out = Path(out)
    attacks = list(results)
    color = _colors([s for a in attacks for s in results[a]])
    ncols = min(4, max(1, len(attacks)))
    nrows = -(-max(1, len(attacks)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.1 * nrows), squeeze=False)
    for ax, attack in zip(axes.flat, attacks):
        for scheme, pts in results[attack].items():
            pts = sorted(pts, key=lambda p: p["strength"])
            if not pts:
                continue
            yerr = [p.get("err", 0.0) for p in pts] if any("err" in p for p in pts) else None
            ax.errorbar([p["strength"] for p in pts], [p["value"] for p in pts], yerr=yerr, marker="o", ms=3,
                        lw=1.2, capsize=2, color=color[scheme])
        ax.set_title(attack, fontsize=9), ax.set_xlabel("attack strength"), ax.set_ylabel(metric_label, fontsize=8)
        ax.set_xlim(-0.03, 1.03), ax.set_ylim(-0.02, 1.02), ax.grid(alpha=0.3)
    for ax in axes.flat[len(attacks):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, lw=2) for c in color.values()]
    axes.flat[0].legend(handles, list(color), fontsize=7, loc="lower left")  # same colours in every panel
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100), plt.close(fig)
    return out


def plot_detection_vs_length(curves: Mapping[str, Mapping[str, Sequence[float]]], out: Path | str,
                             metric_label: str = "TPR at fixed z threshold",
                             title: str = "Detection vs number of scored tokens") -> Path:
    """Detection against text length, one line per scheme: ``curves[scheme] = {"T": [...],
    "rate": [...]}`` (the output of :func:`entroflow.watermark.metrics.detection_vs_length`;
    an optional ``err`` list gives error bars)."""
    out = Path(out)
    color = _colors(list(curves))
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, c in curves.items():
        ax.errorbar(list(c["T"]), list(c["rate"]), yerr=list(c["err"]) if "err" in c else None, marker="o", ms=3,
                    lw=1.2, capsize=2, color=color[name], label=name)
    ax.set_xlabel("tokens T"), ax.set_ylabel(metric_label), ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3), ax.legend(fontsize=8), ax.set_title(title, fontsize=10)
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out
