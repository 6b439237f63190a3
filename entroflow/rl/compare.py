"""Side-by-side comparison of RL methods: a table, the seed papers' claims checked, and plots.

Inputs are the ``evaluate`` metrics of every (model, seed) and the training history of every
(method, seed). A claim is judged on the mean over seeds, with the spread (sample standard
deviation over seeds, 0 with one seed) printed beside it; a claim that does not hold is reported
as not holding, with its numbers. The main metric is sampled (T=1) accuracy averaged over k
samples, ``avg@k``, as in DAPO's AIME protocol.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from entroflow.rl.settings import LABEL_FREE, METHOD_PRESETS, TrainConfig  # noqa: E402

BASE, BASE_EM_INF = "base", "base+em_inf"
METRICS = ("greedy_acc", "sampled_acc", "maj_acc", "pass_acc", "mean_token_entropy", "mean_length",
           "self_consistency_gain")
TARGET_GAIN = 0.05  # issue target: DAPO and EMPO at least +5 points over the base (sampled avg@k)
MATCH_TOL = 0.03  # "about matches": within 3 points (or two seed spreads, whichever is larger)


def rows_from_metrics(evals: dict[tuple[str, int], dict], kmax: int) -> list[dict]:
    """One row per (model, seed) from evaluate-stage metrics."""
    out = []
    for (model, seed), m in sorted(evals.items()):
        out.append({
            "model": model, "seed": seed, "greedy_acc": m["greedy_acc"], "sampled_acc": m[f"avg@{kmax}"],
            "maj_acc": m.get(f"maj@{kmax}", float("nan")), "pass_acc": m.get(f"pass@{kmax}", float("nan")),
            "mean_token_entropy": m["mean_token_entropy"], "mean_length": m["mean_length"],
            "self_consistency_gain": m.get(f"maj@{kmax}", float("nan")) - m["greedy_acc"],
        })
    return out


def summarise(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """model -> metric -> (mean over seeds, sample std over seeds, number of seeds)."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for k in METRICS:
            by[r["model"]][k].append(r[k])
    out = {}
    for model, ms in by.items():
        out[model] = {}
        for k, v in ms.items():
            a = np.asarray(v, dtype=float)
            out[model][k] = (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a))
    return out


def training_summary(histories: dict[tuple[str, int], pa.Table], last: int = 10) -> dict[str, dict[str, float]]:
    """Per method, averaged over seeds: token entropy at the start and end of training, the share
    of generated samples that carried no learning signal, and samples generated per step."""
    acc = defaultdict(lambda: defaultdict(list))
    for (method, _seed), t in histories.items():
        h = t.to_pydict()
        n = len(h["step"])
        tail = slice(max(0, n - last), n)
        col = lambda k: [x for x in h.get(k, [])]  # noqa: E731
        ent = col("token_entropy_mean")
        if ent:
            acc[method]["entropy_start"].append(float(np.mean(ent[: min(last, n)])))
            acc[method]["entropy_end"].append(float(np.mean(ent[tail])))
        gen = sum(x or 0 for x in col("sequences_generated"))
        kept = sum(x or 0 for x in col("kept_sequences"))
        zero = col("frac_zero_std_groups")
        # Wasted samples: generated but dropped by a filter, or trained on with zero advantage
        # (a group whose rewards are all equal contributes no policy gradient).
        if gen:
            acc[method]["samples_per_step"].append(gen / n)
        if gen and method != "em_ft":  # EM-FT has no reward or advantage: every sample is trained on
            dropped = 1 - kept / gen
            trained_zero = (kept / gen) * (float(np.mean([z or 0 for z in zero])) if not _filters(h) else 0.0)
            acc[method]["wasted_sample_fraction"].append(dropped + trained_zero)
    out = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in acc.items()}
    for m, d in acc.items():
        if len(d.get("entropy_end", [])) > 1:
            out[m]["entropy_end_sd"] = float(np.std(d["entropy_end"], ddof=1))
    return out


def _filters(h: dict) -> bool:
    """Whether a run dropped groups (then every group it trained on had signal)."""
    return any((k or 0) < (g or 0) for k, g in zip(h.get("kept_sequences", []), h.get("sequences_generated", [])))


def _fmt(mean: float, std: float, n: int, pct: bool = True) -> str:
    if math.isnan(mean):
        return "n/a"
    s = f"{100 * mean:.1f}" if pct else f"{mean:.3f}"
    if n > 1:
        s += f" ± {100 * std:.1f}" if pct else f" ± {std:.3f}"
    return s


PAPERS = {"EMPO": "EMPO (Zhang et al. 2025)", "DAPO": "DAPO (Yu et al. 2025)",
          "GRPO": "GRPO (Shao et al. 2024)", "EM-": "EM (Agarwal et al. 2025)"}


def _paper(claim: str) -> str:
    """The seed paper a claim comes from: the first method its text names."""
    hits = [(claim.find(k), v) for k, v in PAPERS.items() if k in claim]
    return min(hits)[1] if hits else ""


def claims(summary: dict, training: dict, methods: list[str]) -> list[dict]:
    """Each seed-paper claim with whether it holds here and the numbers behind the verdict."""
    S = lambda m, k="sampled_acc": summary[m][k] if m in summary else (float("nan"), 0.0, 0)  # noqa: E731
    base, base_sd, _ = S(BASE)
    out = []

    def add(claim, holds, evidence):
        out.append({"paper": _paper(claim), "claim": claim, "holds": holds, "evidence": evidence})

    def beats(m):
        mean, sd, n = S(m)
        return mean > base, f"{m} {_fmt(mean, sd, n)} vs base {_fmt(base, base_sd, n)} (sampled avg@k, %)"

    sup = [m for m in ("grpo", "dapo") if m in summary]
    if "empo" in summary and sup:
        ref = float(np.mean([S(m)[0] for m in sup]))
        e, e_sd, n = S("empo")
        tol = max(MATCH_TOL, 2 * max([e_sd] + [S(m)[1] for m in sup]))
        add("EMPO, with no labels, about matches supervised GRPO/DAPO", abs(e - ref) <= tol,
            f"EMPO {_fmt(e, e_sd, n)} vs mean of {'/'.join(sup)} {100 * ref:.1f} (tolerance ±{100 * tol:.1f} points)")
    for m in [x for x in ("grpo", "dapo", "empo") if x in summary]:
        h, ev = beats(m)
        add(f"{m.upper()} beats the base model", h, ev)
    for m in [x for x in ("em_ft", "em_rl") if x in summary]:
        h, ev = beats(m)
        add(f"{m.upper().replace('_', '-')} improves over the base without labels", h, ev)
    if BASE_EM_INF in summary:
        mean, sd, n = S(BASE_EM_INF)
        g, g_sd, _ = S(BASE_EM_INF, "greedy_acc")
        bg, bg_sd, _ = S(BASE, "greedy_acc")
        add("EM-INF improves a model at inference time", mean > base,
            f"base+EM-INF {_fmt(mean, sd, n)} vs base {_fmt(base, base_sd, n)} (sampled avg@k, %); "
            f"greedy {_fmt(g, g_sd, n)} vs {_fmt(bg, bg_sd, n)}")
    if "dapo" in training and "grpo" in training:
        d, g = training["dapo"], training["grpo"]
        diff = d.get("entropy_end", 0) - g.get("entropy_end", 0)
        spread = max(d.get("entropy_end_sd", 0.0), g.get("entropy_end_sd", 0.0))
        # A difference inside the seed-to-seed spread is not evidence either way.
        verdict = diff > 0 and (spread == 0.0 or diff > spread)
        note = (" (one seed: no spread estimate)" if spread == 0.0 else
                f" (difference {diff:+.3f} vs seed spread {spread:.3f})")
        add("DAPO keeps token entropy from collapsing compared with GRPO", verdict,
            f"token entropy start→end of training: DAPO {d.get('entropy_start', float('nan')):.3f}→"
            f"{d.get('entropy_end', float('nan')):.3f}, GRPO {g.get('entropy_start', float('nan')):.3f}→"
            f"{g.get('entropy_end', float('nan')):.3f} nats; both collapse by a factor of "
            f"{g.get('entropy_start', 1) / max(g.get('entropy_end', 1e-9), 1e-9):.1f}-"
            f"{d.get('entropy_start', 1) / max(d.get('entropy_end', 1e-9), 1e-9):.1f}{note}")
        add("DAPO wastes fewer samples than GRPO",
            d.get("wasted_sample_fraction", 1) < g.get("wasted_sample_fraction", 1),
            f"samples without learning signal (dropped by a filter or zero advantage): DAPO "
            f"{100 * d.get('wasted_sample_fraction', float('nan')):.1f}% of {d.get('samples_per_step', 0):.0f}/step, "
            f"GRPO {100 * g.get('wasted_sample_fraction', float('nan')):.1f}% of {g.get('samples_per_step', 0):.0f}/step")
    for m in [x for x in ("dapo", "empo") if x in summary]:
        mean, sd, n = S(m)
        gm, _, _ = S(m, "greedy_acc")
        bg, _, _ = S(BASE, "greedy_acc")
        add(f"Target: {m.upper()} at least +5 points over the base (sampled avg@k), greedy not below the base's",
            mean - base >= TARGET_GAIN and gm >= bg,
            f"{m} {100 * (mean - base):+.1f} points sampled, greedy {100 * gm:.1f} vs base {100 * bg:.1f}")
    return out


_AGG_NAMES = {"token-mean": "token mean over the mini-batch", "seq-mean-token-mean": "per-sequence token mean",
              "seq-mean-token-sum": "per-sequence token sum", "seq-mean-token-sum-norm": "token sum / (B * L_max)"}


def method_settings(methods: list[str], shared: dict | None = None,
                    per_method: dict[str, dict] | None = None) -> dict[str, dict]:
    """The settings that define each method as it was trained: shared config, then the method's
    preset, then its overrides (:meth:`TrainConfig.for_method`); with no config, the presets
    over the defaults."""
    return {m: TrainConfig.for_method(m, dict(shared or {}), (per_method or {}).get(m)).to_dict()
            for m in methods if m in METHOD_PRESETS}


def method_table(settings: dict[str, dict]) -> list[str]:
    """Markdown lines of the "What each method is" table: what makes GRPO GRPO and DAPO DAPO."""
    lines = ["## What each method is", "",
             "| method | reward | labels | advantage | clip ε low / high | dual clip c | loss aggregation | KL coef "
             "| dynamic sampling | overlong penalty |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, c in settings.items():
        if c.get("objective") == "entropy":
            lines.append(f"| {m} | none: minimises its own token entropy | no | – | – | – | token mean | – | no "
                         f"| no |")
            continue
        dyn = f"yes, up to {c['max_gen_rounds']} rounds" if c["dynamic_sampling"] else "no"
        if c.get("empo_filter"):
            dyn += f"; EMPO band p_max >= {c['empo_low']:g}"
        over = f"yes (last {c['overlong_cache']} tokens)" if c["overlong"] else "no"
        dual = f"{c['clip_ratio_c']:g}" if c.get("clip_ratio_c") else "off"
        adv = ("RLOO" if c["advantage"] == "rloo" else
               "group-normalised" if c["scale_by_std"] else "group mean-centred")
        lines.append(f"| {m} | {c['reward']} | {'no' if c['reward'] in LABEL_FREE else 'yes'} | {adv} | "
                     f"{c['eps_low']:g} / {c['eps_high']:g} | {dual} | {_AGG_NAMES[c['loss_agg']]} | "
                     f"{c['kl_coef']:g} | {dyn} | {over} |")
    lines += ["", "The settings each method was trained with. As published, GRPO (DeepSeekMath) has a symmetric "
                  "clip, a per-sequence token mean and a k3 KL to the frozen base model with β = 0.04; DAPO drops "
                  "the KL and changes three things: Clip-Higher (ε_high 0.28), a token-level loss over the whole "
                  "mini-batch, and dynamic sampling (groups whose rewards are all equal are dropped and refilled), "
                  "plus the soft overlong penalty. The dual clip (verl's clip_ratio_c) caps the loss of a "
                  "negative-advantage token at c·|A|.", ""]
    return lines


def render(summary: dict, training: dict, claim_rows: list[dict], models: list[str], kmax: int, n_seeds: int,
           base_sc_gain: tuple[float, float, int] | None, settings: dict[str, dict] | None = None,
           temperature: float = 1.0) -> str:
    """comparison.md. ``settings`` (:func:`method_settings` of the run's config) fills the "What
    each method is" table; without it the table shows the presets over the default settings."""
    methods = [m for m in models if m in METHOD_PRESETS]
    title = "# Reasoning RL: methods side by side" if methods else "# The base model with and without EM-INF decoding"
    lines = [title, "",
             f"Held-out test split; greedy pass@1, sampled (T={temperature:g}) accuracy as avg@{kmax}, majority-of-{kmax} "
             f"and pass@{kmax}. Mean ± standard deviation over {n_seeds} seed(s) of RL training and "
             f"evaluation sampling (the base model is shared).", "",
             f"| model | greedy (%) | sampled avg@{kmax} (%) | maj@{kmax} (%) | pass@{kmax} (%) | token entropy (nats) "
             f"| length (tokens) |",
             "|---|---|---|---|---|---|---|"]
    for m in models:
        if m not in summary:
            continue
        s = summary[m]
        lines.append(f"| {m} | {_fmt(*s['greedy_acc'])} | {_fmt(*s['sampled_acc'])} | {_fmt(*s['maj_acc'])} | "
                     f"{_fmt(*s['pass_acc'])} | {_fmt(*s['mean_token_entropy'], pct=False)} | "
                     f"{_fmt(*s['mean_length'], pct=False)} |")
    if methods:
        lines += [""] + method_table(settings if settings is not None else method_settings(methods))
    else:
        lines += ["", "No RL methods in this run (rl.methods is empty): the base model, decoded plainly and with "
                      "EM-INF (entropy-minimising logit optimisation at every step, arXiv 2505.15134 §4).", ""]
    held = sum(bool(c["holds"]) for c in claim_rows)
    lines += ["## Claims of the seed papers at this scale", "",
              f"{held} of {len(claim_rows)} reasoning claims hold here; the verdicts and their numbers are in the "
              "run's claims table (`claims.md`, next to this page), with the other flows' claims."]
    if base_sc_gain is not None:
        lines += ["", f"The base model's self-consistency gain (maj@{kmax} − greedy) is "
                      f"{_fmt(*base_sc_gain)} points: EMPO's majority-style reward can only beat the base's greedy "
                      "accuracy where the majority answer is right more often than the greedy one."]
    if training:
        lines += ["", "## Training", "", "| method | token entropy start → end | samples/step | wasted samples |",
                  "|---|---|---|---|"]
        for m, t in training.items():
            wasted = t.get("wasted_sample_fraction")
            lines.append(f"| {m} | {t.get('entropy_start', float('nan')):.3f} → {t.get('entropy_end', float('nan')):.3f} | "
                         f"{t.get('samples_per_step', float('nan')):.0f} | "
                         f"{'n/a (no reward)' if wasted is None else f'{100 * wasted:.1f}%'} |")
    lines += ["", "![accuracy](accuracy.png)", ""] + (["", "![curves](curves.png)", ""] if methods else [])
    return "\n".join(lines)


def plot_accuracy(summary: dict, models: list[str], kmax: int, out: Path) -> Path:
    models = [m for m in models if m in summary]
    keys = [("greedy_acc", "greedy"), ("sampled_acc", f"sampled avg@{kmax}"), ("maj_acc", f"maj@{kmax}")]
    n_seeds = max((summary[m][k][2] for m in models for k, _ in keys), default=1)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar([x + i * w for x in range(len(models))], [100 * summary[m][k][0] for m in models], w,
               yerr=[100 * summary[m][k][1] for m in models] if n_seeds > 1 else None, capsize=3, label=label)
    ax.set_xticks([x + w for x in range(len(models))], models)
    ax.set_ylabel("accuracy (%)"), ax.set_ylim(0, 100), ax.grid(axis="y", alpha=0.3), ax.legend(fontsize=8)
    spread = f"mean ± sd over {n_seeds} seeds" if n_seeds > 1 else "1 seed"  # one seed has no spread to show
    ax.set_title(f"Held-out accuracy per method ({spread})")
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def plot_curves(histories: dict[tuple[str, int], pa.Table], evals: dict[tuple[str, int], pa.Table], out: Path) -> Path:
    """Training curves in a grid: one axis per reward kind (from the method's preset; EM-FT has no
    reward), then batch accuracy, token entropy, response length and held-out accuracy. Each
    curve is the mean over seeds."""
    from matplotlib.ticker import MaxNLocator

    from entroflow.rl.settings import METHOD_PRESETS

    # What each reward measures: methods with different rewards get their own axes (the scales differ).
    titles = {"correct": "reward: correct answer ±1 (DAPO: minus overlong penalty)",
              "empo": "reward: EMPO, answer-cluster share of the group (0-1)",
              "em_sequence": "reward: EM-RL, mean token log-prob (nats)",
              "em_token": "reward: EM-RL (token), negative token entropy (nats)",
              "token_frequency": "reward: target-token frequency"}
    methods = list(dict.fromkeys(m for m, _ in [*histories, *evals]))  # in the config's order
    color = {m: f"C{i}" for i, m in enumerate(methods)}  # the same colour for a method in every panel
    reward = {m: METHOD_PRESETS.get(m, {}).get("reward", "other") for m in methods}
    panels = [("reward_mean", titles.get(r, f"reward: {r}"), [m for m in methods if reward[m] == r])
              for r in dict.fromkeys(reward.values()) if r != "none"]
    panels += [("accuracy", "batch accuracy (labels; diagnostic)", methods),
               ("token_entropy_mean", "token entropy (nats)", methods),
               ("response_length_mean", "response length (tokens)", methods),
               ("eval_sampled_acc", "held-out sampled accuracy (%)", methods)]
    ncols = min(4, -(-len(panels) // 2))  # two rows of at most four
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (key, title, members) in zip(axes.flat, panels):
        for m in members:
            if key == "eval_sampled_acc":  # evaluated every few steps: markers, no smoothing
                series = [t.to_pydict() for (mm, _), t in evals.items() if mm == m]
                if series:
                    n = min(len(s["step"]) for s in series)
                    ax.plot(series[0]["step"][:n], [100 * np.mean([s[key][i] for s in series]) for i in range(n)],
                            marker="o", ms=3, color=color[m])
                continue
            series = [t.to_pydict() for (mm, _), t in histories.items() if mm == m and key in t.column_names]
            if not series:
                continue
            n = min(len(s["step"]) for s in series)
            y = np.nanmean([[v if v is not None else np.nan for v in s[key][:n]] for s in series], axis=0)
            k = max(1, n // 20)  # moving average over ~5% of the run, for readability
            ys = np.convolve(np.nan_to_num(y), np.ones(k) / k, mode="valid")
            ax.plot(series[0]["step"][k - 1:n], ys, lw=1.2, color=color[m])
        ax.set_title(title, fontsize=9), ax.set_xlabel("step"), ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=color[m], lw=2) for m in methods]
    fig.legend(handles, methods, loc="upper center", ncol=len(methods), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(out, dpi=100), plt.close(fig)
    return out
