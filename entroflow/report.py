"""Run report: a Markdown summary and PNG plots (matplotlib, Agg backend).

Everything in the report is read from stage outputs (manifests, metrics, Parquet); nothing is
computed here that a stage did not measure, so the report cannot disagree with MLflow.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

TARGET_WINDOW = (0.25, 0.70)  # greedy accuracy window the base model should land in (room for RL)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def plot_loss(history: Path, out: Path) -> Path | None:
    if not history.exists():
        return None
    h = pq.read_table(history).to_pydict()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(h["step"], h["loss"], lw=1.2)
    ax.set_xlabel("step"), ax.set_ylabel("training loss (nats/token)"), ax.set_yscale("log")
    ax.set_title("Base model pretraining")
    ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def per_level_accuracy(metrics: dict[str, float], kmax: int) -> dict[int, dict[str, float]]:
    """Greedy, sampled and majority-of-kmax accuracy per difficulty level, as the evaluate stage
    measured them (``entroflow.metrics.summarise``'s ``<metric>/level_<L>`` entries)."""
    levels = sorted({int(k.rsplit("_", 1)[1]) for k in metrics if k.startswith("prompts/level_")})
    return {lv: {"n": int(metrics[f"prompts/level_{lv}"]), "greedy": metrics[f"greedy_acc/level_{lv}"],
                 "sampled": metrics[f"sampled_acc/level_{lv}"],
                 f"maj@{kmax}": metrics.get(f"maj@{kmax}/level_{lv}", float("nan"))} for lv in levels}


def plot_levels(levels: dict[int, dict[str, float]], labels: dict[int, str], out: Path) -> Path:
    keys = [k for k in next(iter(levels.values())) if k != "n"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(keys)
    xs = list(levels)
    for i, k in enumerate(keys):
        ax.bar([x + i * width for x in range(len(xs))], [100 * levels[x][k] for x in xs], width, label=k)
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(xs))], [labels.get(x, str(x)) for x in xs])
    ax.set_ylabel("accuracy (%)"), ax.set_ylim(0, 100), ax.legend(), ax.grid(axis="y", alpha=0.3)
    ax.set_title("Accuracy by difficulty level")
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def plot_entropy(rollouts: pa.Table, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for dec in ("greedy", "sampled"):
        t = rollouts.filter(pa.compute.equal(rollouts["decoding"], dec))
        vals = pa.compute.list_flatten(t["entropies"]).to_numpy(zero_copy_only=False)
        if len(vals):
            ax.hist(vals, bins=50, alpha=0.55, density=True, label=f"{dec} ({len(vals)} tokens)")
    ax.set_xlabel("token entropy of the sampling distribution (nats)"), ax.set_ylabel("density")
    ax.set_yscale("log"), ax.legend(), ax.set_title("Per-token entropy")
    fig.tight_layout(), fig.savefig(out, dpi=110), plt.close(fig)
    return out


def render(ctx: dict) -> str:
    """Markdown for one run. ``ctx`` holds the parents' manifests and the derived tables."""
    ev = ctx["evaluate"]["metrics"]
    kmax = ctx["kmax"]
    greedy, maj, sampled = ev.get("greedy_acc"), ev.get(f"maj@{kmax}"), ev.get("sampled_acc")
    lo, hi = TARGET_WINDOW
    lines = [f"# {ctx['title']}: `{ctx['name']}`", ""]
    lines += [f"- config hash `{ctx['config_hash'][:12]}`, git `{ctx['git_commit'][:12]}`, "
              f"created {ctx['created']}", ""]
    lines += ["## Stages", "", "| stage | key | rows | duration (s) |", "|---|---|---|---|"]
    for s in ctx["stages"]:
        lines.append(f"| {s['stage']} | `{s['key'][:12]}` | {s.get('rows') or ''} | {s['duration_s']:.1f} |")
    pm = ctx["model"]["metrics"]
    src = ctx.get("model_source")
    if src:
        origin = (f"the PyPI package `{src['package']}` {src['package_version']}" if src["source"] == "package"
                  else f"`{src['path']}`")
        lines += ["", "## Base model", "",
                  f"{src['name'] or src['file']} ({src['architecture']}, {int(src['parameters']):,} parameters, "
                  f"{src['layers']} layers, hidden {src['hidden_size']}, vocabulary {src['vocab_size']:,}), imported "
                  f"from {origin} (`{src['file']}`" + (f", sha256 `{src['sha256'][:16]}`" if src.get("sha256") else "")
                  + ") and saved as fp32 safetensors."]
        p = ctx.get("prompt") or {}
        chat = p.get("chat_template", "auto")
        chat_on = chat == "on" or (chat == "auto" and src["chat_template"])
        lines += ["", "Prompts: " + (f"the tokenizer's chat template (system prompt: "
                                     f"{'the template default' if p.get('system') is None else repr(p['system'])})"
                                     if chat_on else "plain text, no chat template")
                  + (f", user message `{p['template']}`" if p.get("template", "{prompt}") != "{prompt}" else "") + "."]
    elif pm.get("parameters"):
        lines += ["", "## Base model", "",
                  f"Qwen2, {int(pm['parameters']):,} parameters (unique weights: the input embedding and the "
                  f"output head are tied and counted once), trained from scratch: final loss "
                  f"{pm['final_loss']:.4f}, {pm['train_seconds']:.0f} s at {pm['tokens_per_s']:,.0f} tokens/s.",
                  "", "![loss](loss.png)"]
    data = {"reasoning": "the arithmetic problems", "word_problems": "the generated GSM8K-style word problems",
            "external": "the external dataset"}.get(ctx.get("eval_table", "reasoning"), "")
    lines += ["", f"## Evaluation (held-out test split of {data})", "",
              "| metric | value |", "|---|---|"]
    for k in ("greedy_acc", "sampled_acc", *[f"avg@{k}" for k in ctx["ks"]], *[f"pass@{k}" for k in ctx["ks"]],
              *[f"maj@{k}" for k in ctx["ks"]], "parse_rate", "mean_token_entropy", "mean_length",
              "greedy_direct_fraction", "sampled_direct_fraction"):
        if k.endswith("direct_fraction") and ctx.get("eval_table", "reasoning") != "reasoning":
            continue  # the arithmetic world's worked-vs-direct split; no meaning on other text
        if k in ev:
            v = ev[k]
            lines.append(f"| {k} | {_pct(v) if 'entropy' not in k and 'length' not in k else f'{v:.3f}'} |")
    lines += ["", f"Sampling: T={ctx['temperature']}, top_p={ctx['top_p']}, top_k={ctx['top_k']}, "
              f"{ctx['n_samples']} samples per prompt; greedy is argmax decoding. pass@k is the unbiased estimator "
              f"over all {ctx['n_samples']} samples of a prompt (Chen et al. 2021), so pass@1 is the accuracy of all "
              f"of them (= sampled_acc = avg@{ctx['n_samples']}); avg@k and maj@k use the first k samples only, so "
              f"avg@1 and maj@1 score the first sample alone and differ from pass@1 by sampling noise.", ""]
    lines += ["### Per difficulty level", "", "| level | n | greedy | sampled | maj@%d |" % kmax, "|---|---|---|---|---|"]
    for level, v in ctx["levels"].items():
        lines.append(f"| {ctx['level_labels'].get(level, level)} | {v['n']} | {_pct(v['greedy'])} | "
                     f"{_pct(v['sampled'])} | {_pct(v[f'maj@{kmax}'])} |")
    lines += ["", "![levels](levels.png)", "", "![entropy](entropy.png)", "", "## Targets", ""]
    if greedy is not None and not src:  # the window is the tiny world's design target
        inside = lo <= greedy <= hi
        lines.append(f"- Greedy accuracy {_pct(greedy)} is {'inside' if inside else 'OUTSIDE'} the "
                     f"{_pct(lo)}-{_pct(hi)} window that leaves room for RL.")
    if greedy is not None and maj is not None:
        gain = maj - greedy
        lines.append(f"- Self-consistency: maj@{kmax} {_pct(maj)} vs greedy {_pct(greedy)}: "
                     f"{'+' if gain >= 0 else ''}{100 * gain:.1f} points "
                     f"({'a gain, as real LLMs show' if gain > 0 else 'NO gain'}).")
    if sampled is not None:
        lines.append(f"- Sampled (T={ctx['temperature']}) accuracy {_pct(sampled)}.")
    return "\n".join(lines) + "\n"
