"""Every model's OOD results side by side: the shift-level summary, the claims of "Mysteries of
the Deep" at this scale, how RL training moved OOD separability, and the Markdown page.

Inputs are the per-model metrics rows of entroflow/ood/evaluate.py with ``model``, ``kind``
(``base``, an RL method, ``oracle``) and ``seed`` added, so everything here is a plain function of
numbers. An AUROC "at a shift" is the mean over that shift's suites (near = 1, far = 3).

Claims (Meza De la Jara et al., NeurIPS 2025), tested on the base models (one per pretraining
seed), per claim series and for near and far shift separately:

* intermediate layers carry OOD signal the last layer misses: the best single intermediate layer
  (chosen on the mean over seeds, with OOD labels) beats the last layer;
* the training-free, ID-only fused choice beats the last layer, once per reading of the entropy
  criterion (``mean_softmax_entropy``, ``score_entropy``).

A claim holds when the mean per-seed AUROC gain is positive and larger than both
``MARGIN`` and the standard deviation of the per-seed gains (one seed: larger than MARGIN).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from entroflow.claims import FAILS, HOLDS, UNTESTABLE
from entroflow.ood.evaluate import SHIFTS
from entroflow.watermark.metrics import mean_and_spread

PAPER = "Mysteries of the Deep (NeurIPS 2025)"
MARGIN = 0.01  # AUROC points: a gain below this is noise at a few hundred prompts per suite
READINGS = ("mean_softmax_entropy", "score_entropy")
CLAIM_SHIFTS = ("near", "far")


def shift_table(rows: Sequence[dict]) -> dict[tuple, float]:
    """``{(model, series, selector key, shift name): mean AUROC over the shift's suites}``;
    the selector key is ``layer:<l>`` for a single layer, else the selector (``last``,
    ``mean_softmax_entropy``, ``oracle/near``, ...)."""
    acc: dict[tuple, list[float]] = {}
    for m in rows:
        key = f"layer:{m['layer']}" if m["selector"] == "layer" else m["selector"]
        acc.setdefault((m["model"], m["series"], key, SHIFTS.get(m["shift"], str(m["shift"]))), []).append(m["auroc"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def chosen_sets(rows: Sequence[dict]) -> dict[tuple, str]:
    """``{(model, series, selector): layer set}`` of the fused selectors."""
    return {(m["model"], m["series"], m["selector"]): m["layer_set"] for m in rows if m["selector"] != "layer"}


def _fmt(m: tuple[float, float, int]) -> str:
    mean, sd, n = m
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if n > 1 else "")


def _verdict(gains: list[float]) -> str:
    g = [x for x in gains if not math.isnan(x)]
    if not g:
        return UNTESTABLE
    mean, sd, n = mean_and_spread(g)
    return HOLDS if mean > MARGIN and (n == 1 or mean > sd) else FAILS


def claims(table: dict[tuple, float], models: Sequence[dict], n_layers: dict[str, int],
           claim_series: Sequence[str]) -> list[dict]:
    """Claim rows (``paper, claim, verdict, evidence``) over the base models."""
    bases = [m for m in models if m["kind"] == "base"]
    out = []
    for series in claim_series:
        for shift in CLAIM_SHIFTS:
            last = [table.get((m["name"], series, "last", shift), math.nan) for m in bases]
            seeds = (f"{len(bases)} base models (pretraining seeds)" if len(bases) > 1
                     else "1 base model (no seed spread)")
            if all(math.isnan(x) for x in last):
                out.append({"paper": PAPER, "claim": f"{series}, {shift} shift: intermediate layers beat the last",
                            "verdict": UNTESTABLE, "evidence": f"no {shift}-shift suite or no such series in this run"})
                continue
            L = n_layers[bases[0]["name"]]
            inter = {layer: [table.get((m["name"], series, f"layer:{layer}", shift), math.nan) for m in bases]
                     for layer in range(L)}
            best = max(inter, key=lambda layer: np.nanmean(inter[layer]))
            gains = [a - b for a, b in zip(inter[best], last)]
            out.append({"paper": PAPER, "claim": f"{series}, {shift} shift: an intermediate layer separates ID "
                                                 f"from OOD better than the last layer (AUROC)",
                        "verdict": _verdict(gains),
                        "evidence": f"last layer {L}: {_fmt(mean_and_spread(last))}; best intermediate layer "
                                    f"{best}{' (the token embeddings)' if best == 0 else ''} (picked with OOD "
                                    f"labels): {_fmt(mean_and_spread(inter[best]))}; "
                                    f"gain {_fmt(mean_and_spread(gains))}; {seeds}"})
            for reading in READINGS:
                fused = [table.get((m["name"], series, reading, shift), math.nan) for m in bases]
                gains = [a - b for a, b in zip(fused, last)]
                out.append({"paper": PAPER, "claim": f"{series}, {shift} shift: fusing the layers chosen on ID "
                                                     f"data alone ({reading}) beats the last layer (AUROC)",
                            "verdict": _verdict(gains),
                            "evidence": f"last {_fmt(mean_and_spread(last))}; fused {_fmt(mean_and_spread(fused))}; "
                                        f"gain {_fmt(mean_and_spread(gains))}; oracle set "
                                        f"{_fmt(mean_and_spread([table.get((m['name'], series, f'oracle/{shift}', shift), math.nan) for m in bases]))} "
                                        f"(upper bound, OOD labels); {seeds}"})
    return out


def rl_effect(table: dict[tuple, float], models: Sequence[dict], base_name: str, n_layers: int,
              series: Sequence[str]) -> list[dict]:
    """Per RL method, series, layer (each layer, and the fused ID-selected set) and shift: the
    policy's AUROC minus its base model's, mean and spread over the RL seeds."""
    kinds = list(dict.fromkeys(m["kind"] for m in models if m["kind"] not in ("base", "oracle")))
    out = []
    for kind in kinds:
        policies = [m["name"] for m in models if m["kind"] == kind]
        for s in series:
            for key in [f"layer:{layer}" for layer in range(n_layers + 1)] + ["score_entropy"]:
                for shift in ("near", "mid", "far"):
                    b = table.get((base_name, s, key, shift))
                    vals = [table.get((p, s, key, shift)) for p in policies]
                    if b is None or any(v is None for v in vals):
                        continue
                    mean, sd, n = mean_and_spread([v - b for v in vals])
                    out.append({"method": kind, "series": s, "layer": key.removeprefix("layer:"), "shift": shift,
                                "base_auroc": b, "policy_auroc": float(np.mean(vals)), "delta": mean, "delta_sd": sd,
                                "n_seeds": n})
    return out


def render(models: Sequence[dict], table: dict[tuple, float], sets: dict[tuple, str], claim_rows: list[dict],
           effect: list[dict], info: dict, figures: list[str]) -> str:
    """The OOD page (``ood.md``)."""
    bases = [m for m in models if m["kind"] == "base"]
    series = list(dict.fromkeys(k[1] for k in table))
    shifts = [s for s in ("near", "mid", "far", "other-domain") if any(k[3] == s for k in table)]
    selectors = ["last", "all", *READINGS]
    lines = [f"# OOD detection from intermediate representations: {info['title']}", "",
             f"Models: {', '.join(m['name'] for m in models)}. ID domains: {', '.join(info['domains'])}; "
             f"detectors fitted on {info['n_fit']} ID training prompts, normalised and layer-selected on "
             f"{info['n_val']} more (never on OOD data); tested on {info['n_test_id']} held-out ID prompts and "
             f"{info['n_test_ood']} OOD prompts in {len(info['suites'])} suites ({', '.join(info['suites'])}).",
             "", "AUROC at a shift = mean over that shift's suites, each compared with the ID prompts of its "
             "domain. Scores: higher = more OOD; `/lens` = the next-token distribution at the last prompt "
             "position read through the logit lens of each layer; `nll/seq` = mean token NLL (final layer). "
             "FPR@95 is in `metrics.parquet` under both conventions (`fpr95_id_pos`: OOD accepted when 95% of "
             "ID is kept, MCM/Mysteries; `fpr95_ood_pos`: ID flagged when 95% of OOD is caught, OpenOOD v1.5); "
             "AUPR is step-wise average precision.", ""]
    lines += ["## Base model" + ("s" if len(bases) > 1 else "") + ": AUROC by layer and fused set "
              f"(mean ± sd over {len(bases)} pretraining seed{'s' if len(bases) > 1 else ''})", ""]
    L = info["layers"]
    cols = [f"layer {x}" for x in range(L + 1)] + selectors + [f"oracle/{s}" for s in shifts]
    for shift in shifts:
        lines += [f"### {shift} shift", "", "| series | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for s in series:
            cells = []
            for c in cols:
                key = f"layer:{c.split()[1]}" if c.startswith("layer ") else c
                vals = [table.get((m["name"], s, key, shift), math.nan) for m in bases]
                cells.append(_fmt(mean_and_spread(vals)))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    if bases:
        lines += ["Fused sets chosen on ID data (first base model): " + "; ".join(
            f"{s}: {sel} {{{sets[(bases[0]['name'], s, sel)]}}}" for s in series for sel in READINGS
            if (bases[0]["name"], s, sel) in sets), ""]
    lines += ["## How RL training changed OOD separability", ""]
    if effect:
        shifts_e = [s for s in ("near", "mid", "far") if any(e["shift"] == s for e in effect)]
        lines += ["AUROC of each RL policy minus its base model's, same detector, layer and data "
                  "(mean ± sd over the RL seeds; the base's AUROC in brackets); `score_entropy` = that "
                  "reading's fused set.", "",
                  "| method | series | layer | " + " | ".join(f"Δ {s} (base)" for s in shifts_e) + " |",
                  "|---|---|---|" + "---|" * len(shifts_e)]
        cells: dict[tuple, dict[str, str]] = {}
        for e in effect:
            d = f"{e['delta']:+.3f}" + (f" ± {e['delta_sd']:.3f}" if e["n_seeds"] > 1 else "")
            cells.setdefault((e["method"], e["series"], e["layer"]), {})[e["shift"]] = f"{d} ({e['base_auroc']:.3f})"
        lines += [f"| {m} | {s} | {layer} | " + " | ".join(v.get(sh, "") for sh in shifts_e) + " |"
                  for (m, s, layer), v in cells.items()]
    else:
        lines.append("No RL policies in this run.")
    lines += ["", "## Claims", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['evidence']} |" for c in claim_rows]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
