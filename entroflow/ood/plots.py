"""Figures of the OOD evaluation; each function writes one PNG and returns its path (Agg backend,
the style of entroflow/watermark/plots.py)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_layer_heatmaps(auroc: Mapping[str, Mapping[str, Mapping[int, float]]], out: Path | str, title: str) -> Path:
    """One panel per shift: rows = series (detector/pooling), columns = layers, colour = AUROC
    (``{shift: {series: {layer: AUROC}}}``; a series without a layer leaves the cell blank)."""
    out = Path(out)
    shifts = list(auroc)
    series = list(dict.fromkeys(s for sh in shifts for s in auroc[sh]))
    layers = sorted({layer for sh in shifts for s in auroc[sh].values() for layer in s})
    fig, axes = plt.subplots(1, len(shifts), figsize=(1.2 + 0.55 * len(layers) * len(shifts) + 2.2 * len(shifts),
                                                      0.9 + 0.32 * len(series)), squeeze=False)
    for ax, sh in zip(axes[0], shifts):
        grid = np.full((len(series), len(layers)), np.nan)
        for i, s in enumerate(series):
            for j, layer in enumerate(layers):
                grid[i, j] = auroc[sh].get(s, {}).get(layer, np.nan)
        im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        if len(layers) <= 16:
            for i in range(len(series)):
                for j in range(len(layers)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if grid[i, j] < 0.6 else "black")
        step = max(1, len(layers) // 12)
        ax.set_xticks(range(0, len(layers), step), [str(x) for x in layers[::step]], fontsize=7)
        ax.set_yticks(range(len(series)), series if ax is axes[0][0] else [""] * len(series), fontsize=7)
        ax.set_xlabel("layer (0 = embeddings)", fontsize=8), ax.set_title(f"{sh} shift", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="AUROC")
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight"), plt.close(fig)
    return out


def plot_selector_bars(values: Mapping[str, Mapping[str, Mapping[str, float]]], selectors: Sequence[str],
                       out: Path | str, title: str) -> Path:
    """One panel per shift: grouped bars per series, one bar per selector (last layer, the fused
    ID-selected sets, the oracle); ``{shift: {series: {selector: AUROC}}}``."""
    out = Path(out)
    shifts = list(values)
    series = list(dict.fromkeys(s for sh in shifts for s in values[sh]))
    width = 0.8 / max(1, len(selectors))
    fig, axes = plt.subplots(len(shifts), 1, figsize=(max(6.0, 0.9 * len(series) + 2), 2.6 * len(shifts)),
                             squeeze=False)
    for ax, sh in zip(axes[:, 0], shifts):
        for k, sel in enumerate(selectors):
            ys = [values[sh].get(s, {}).get(sel, np.nan) for s in series]
            ax.bar(np.arange(len(series)) + (k - (len(selectors) - 1) / 2) * width, ys, width, label=sel,
                   color=f"C{k % 10}", hatch="//" if sel.startswith("oracle") else None, alpha=0.9)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.0), ax.set_ylabel("AUROC"), ax.set_title(f"{sh} shift", fontsize=9)
        ax.set_xticks(range(len(series)), series, fontsize=7, rotation=20), ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=len(selectors), loc="lower center")  # below the panels, off the bars
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1)), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def plot_models(values: Mapping[str, Mapping[str, tuple[float, float]]], out: Path | str, title: str) -> Path:
    """AUROC per model (bars, with the seed spread as error bars) for a few series:
    ``{series: {model kind: (mean, sd)}}``."""
    out = Path(out)
    series = list(values)
    kinds = list(dict.fromkeys(k for s in series for k in values[s]))
    width = 0.8 / max(1, len(kinds))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(series) + 2), 3.4))
    for k, kind in enumerate(kinds):
        m = [values[s].get(kind, (np.nan, np.nan))[0] for s in series]
        e = [values[s].get(kind, (np.nan, np.nan))[1] for s in series]
        ax.bar(np.arange(len(series)) + (k - (len(kinds) - 1) / 2) * width, m, width, yerr=np.nan_to_num(e),
               label=kind, color=f"C{k % 10}", capsize=2)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0, 1.0), ax.set_ylabel("AUROC"), ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(range(len(series)), series, fontsize=7, rotation=15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)), ax.set_title(title, fontsize=10)  # off the bars
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out
