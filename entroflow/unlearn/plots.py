"""Figures of the unlearning comparison; each function writes one PNG and returns its path (Agg
backend, the style of entroflow/ood/plots.py). Inputs are the rows of
:func:`entroflow.unlearn.compare.summary` (means and sds over seeds)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BOUNDS = ("noop", "retrain")


def _colour(methods: list[str], m: str) -> str:
    return "black" if m in BOUNDS else f"C{methods.index(m) % 10}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated in (forgetting, utility), both higher-better, sorted by forgetting."""
    pts = sorted(set(points), key=lambda p: (-p[0], -p[1]))
    front, best = [], -math.inf
    for x, y in pts:
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def plot_pareto(summ: list[dict], out: Path | str, title: str) -> Path:
    """Knowledge-level forgetting (FSR_k) against model utility, one marker per setting (seed mean,
    seed sd as error bars), the Pareto front per method as a line; no-op and retrain as bounds."""
    out = Path(out)
    methods = list(dict.fromkeys(s["method"] for s in summ))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (xkey, xlabel) in zip(axes, (("fsr_s", "superficial forgetting FSR_s"),
                                         ("fsr_k", "knowledge-level forgetting FSR_k"))):
        for m in methods:
            rs = [s for s in summ if s["method"] == m]
            xs, ys = [s[xkey] for s in rs], [s["model_utility"] for s in rs]
            ax.errorbar(xs, ys, xerr=[s[f"{xkey}_sd"] for s in rs], yerr=[s["model_utility_sd"] for s in rs],
                        fmt={"noop": "s", "retrain": "D"}.get(m, "o"), color=_colour(methods, m), label=m,
                        capsize=2, alpha=0.85)
            front = pareto_front([(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))])
            if len(front) > 1:
                ax.plot(*zip(*front), color=_colour(methods, m), lw=1, alpha=0.6)
        ax.set_xlabel(xlabel), ax.set_ylabel("model utility (retain + world)")
        ax.set_xlim(-0.05, 1.05), ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight"), plt.close(fig)
    return out


def plot_gap(summ: list[dict], out: Path | str, title: str) -> Path:
    """Per setting: FSR_s and FSR_k bars (seed sd as error bars), with retained recall and support
    survival as markers: the gap and what it rests on, side by side."""
    out = Path(out)
    names = [s["model"] for s in summ]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(names) + 2), 3.8))
    ax.bar(x - 0.2, [s["fsr_s"] for s in summ], 0.4, yerr=[s["fsr_s_sd"] for s in summ], label="FSR_s (direct)",
           color="C0", capsize=2)
    ax.bar(x + 0.2, [s["fsr_k"] for s in summ], 0.4, yerr=[s["fsr_k_sd"] for s in summ],
           label="FSR_k (direct and not inferable)", color="C1", capsize=2)
    ax.plot(x, [s["retain_recall"] for s in summ], "kD", ms=5, label="retained recall")
    ax.plot(x, [s["support_survival"] for s in summ], "g^", ms=6, label="support survival")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05), ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title, fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight"), plt.close(fig)
    return out


def plot_per_relation(per_relation: list[dict], out: Path | str, title: str) -> Path:
    """Heatmaps of forget-set direct recall and inferability per (model, relation)."""
    out = Path(out)
    models = list(dict.fromkeys(r["model"] for r in per_relation))
    rels = sorted({r["relation"] for r in per_relation})
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.1 * len(rels), 0.9 + 0.35 * len(models)), squeeze=False)
    for ax, key in zip(axes[0], ("recall", "inferable")):
        grid = np.full((len(models), len(rels)), np.nan)
        for r in per_relation:
            grid[models.index(r["model"]), rels.index(r["relation"])] = r[key]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
        for i in range(len(models)):
            for j in range(len(rels)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 0.5 else "black")
        ax.set_xticks(range(len(rels)), rels, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(models)), models if ax is axes[0][0] else [""] * len(models), fontsize=7)
        ax.set_title(f"forget set: {'direct recall' if key == 'recall' else 'inferable (rule judge)'}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight"), plt.close(fig)
    return out
