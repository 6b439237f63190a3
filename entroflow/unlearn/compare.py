"""The unlearning comparison: every evaluated model of every seed in one table, its mean and spread
per method setting, the per-relation breakdown, the claims rows and the Markdown page.

The headline quantity is Wei et al.'s overestimation gap (NeurIPS 2025, "Do LLMs Really
Forget?"): ``gap = FSR_s - FSR_k`` on the forget *targets* (the triples that stay derivable from
the retained graph; on an entity forget set, all forget triples), where ``FSR_s`` counts a target
as forgotten once the model no longer recalls it directly and ``FSR_k`` only if, in addition, the
rule judge cannot infer it from what the model still believes. The gap is always shown next to
retained recall and support survival: a method that destroys the model also destroys the premises,
and its gap shrinks for the wrong reason (collapse masks leakage).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from entroflow.claims import FAILS, HOLDS

PAPER = "Wei et al. 2025 (Do LLMs Really Forget?)"
MARGIN = 0.05  # a gap counts when its seed mean exceeds this and its spread
# Columns of the per-model table, read from each evaluation's metrics (``{role}`` = target or all).
COLUMNS = {
    "forget_recall": "forget/recall", "forget_recall_any": "forget/recall_any",
    "fsr_s": "{role}/fsr_s", "fsr_k": "{role}/fsr_k", "gap": "{role}/gap", "inferable": "{role}/inferable",
    "support_survival": "{role}/support_survival", "control_gap": "forget_control/gap",
    "retain_recall": "retain/recall", "local_recall": "retain_local/recall", "world_recall": "world/recall",
    "holdout_recall": "holdout/recall", "model_utility": "model_utility", "forget_quality": "forget_quality",
    "privleak": "privleak", "relative_leak": "forget/relative_leak", "mia_loss_auc": "mia/loss_auc",
    "mia_minkpp_auc": "mia/minkpp_auc", "forget_truth_ratio": "forget/truth_ratio",
    "forget_es": "forget/es", "forget_p_max": "forget/p_max", "forget_yn_believed": "forget/yn_believed",
    "retain_yn_believed": "retain_local/yn_believed",
}


def headline_role(metrics: dict) -> str:
    """``forget_target`` when the forget set has targets (triples kind), else ``forget``."""
    return "forget_target" if "forget_target/gap" in metrics else "forget"


def model_row(name: str, method: str, seed: int, metrics: dict, setting: dict | None = None,
              seconds: float | None = None) -> dict:
    role = headline_role(metrics)
    row = {"model": name, "method": method, "seed": seed}
    for col, key in COLUMNS.items():
        v = metrics.get(key.format(role=role))
        row[col] = float(v) if v is not None else float("nan")
    row["lr"] = setting["lr"] if setting else float("nan")
    row["steps"] = setting["steps"] if setting else 0
    row["unlearn_seconds"] = seconds if seconds is not None else float("nan")
    row["evaluate_seconds"] = float(metrics.get("evaluate_seconds", float("nan")))
    return row


def _ms(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summary(rows: list[dict]) -> list[dict]:
    """Mean and sample sd over seeds per model (in order of first appearance)."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for n in names:
        rs = [r for r in rows if r["model"] == n]
        s = {"model": n, "method": rs[0]["method"], "seeds": len(rs)}
        for col in (*COLUMNS, "unlearn_seconds", "evaluate_seconds"):
            s[col], s[f"{col}_sd"] = _ms([r[col] for r in rs])
        out.append(s)
    return out


def claims(summ: list[dict]) -> list[dict]:
    """One row per unlearning setting: does instance-level evaluation overestimate forgetting?"""
    gold = next((s for s in summ if s["model"] == "retrain"), None)
    gold_txt = f"; the gold retain model's own gap {gold['gap']:.2f} (derivable without the fact)" if gold else ""
    out = []
    for s in summ:
        if s["model"] in ("noop", "retrain"):
            continue
        gap, sd = s["gap"], s["gap_sd"]
        holds = not math.isnan(gap) and gap > MARGIN and gap > sd
        out.append({
            "paper": PAPER,
            "claim": f"instance-level evaluation overestimates forgetting ({s['model']})",
            "verdict": HOLDS if holds else FAILS,
            "evidence": (f"gap FSR_s-FSR_k {gap:.2f} ± {sd:.2f} (FSR_s {s['fsr_s']:.2f}, FSR_k {s['fsr_k']:.2f}; "
                         f"{s['seeds']} seed(s)); retained recall {s['retain_recall']:.2f}, support survival "
                         f"{s['support_survival']:.2f}, utility {s['model_utility']:.2f}{gold_txt}; margin {MARGIN}"),
        })
    return out


def _f(x: float, sd: float | None = None) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:.2f}" if sd is None or math.isnan(sd) or sd == 0 else f"{x:.2f} ± {sd:.2f}"


def render(summ: list[dict], per_relation: list[dict], info: dict, claim_rows: list[dict]) -> str:
    """The Markdown page ``unlearning.md``."""
    lines = [f"# {info['title']}: knowledge-graph unlearning", "",
             f"Graph: {info['triples']} triples of fictitious entities; forget set **{info['forget']}** "
             f"(closure {info['closure']}), {info['forget_triples']} forget triples per seed on average; "
             f"seeds {info['seeds']}. Fine-tuning reached fact accuracy {info['fact_accuracy']} "
             f"(base) and the gold retain model recalls {info['retain_forget_recall']} of the forget set "
             f"(chance-level guesses among {info['candidates']} candidates).", "",
             "Direct recall: the true object is the top candidate in most training phrasings. FSR_s: share "
             "of forget targets no longer recalled directly; FSR_k: no longer recalled **and** not "
             "inferable by the rule judge from the facts the model still recalls; gap = FSR_s − FSR_k "
             "(Wei et al.'s overestimation). Read the gap with retained recall and support survival: "
             "a collapsed model forgets the premises too.", "",
             "| model | forget recall | any phrasing | FSR_s | FSR_k | gap | inferable | support survival | "
             "retain recall | local | world | utility | forget quality | PrivLeak | MIA AUC | rel. leak | s |",
             "|---|" + "---|" * 16]
    for s in summ:
        lines.append("| " + " | ".join([
            s["model"], _f(s["forget_recall"], s["forget_recall_sd"]), _f(s["forget_recall_any"]),
            _f(s["fsr_s"], s["fsr_s_sd"]), _f(s["fsr_k"], s["fsr_k_sd"]), f"**{_f(s['gap'], s['gap_sd'])}**",
            _f(s["inferable"]), _f(s["support_survival"]), _f(s["retain_recall"], s["retain_recall_sd"]),
            _f(s["local_recall"]), _f(s["world_recall"]), _f(s["model_utility"], s["model_utility_sd"]),
            "–" if math.isnan(s["forget_quality"]) else f"{s['forget_quality']:.2g}",
            _f(s["privleak"]), _f(s["mia_loss_auc"]), _f(s["relative_leak"]), _f(s["unlearn_seconds"])]) + " |")
    lines += ["", "Controls (forget triples with no support path in the retained graph): their gap "
              "should stay near 0 whatever the method: "
              + ", ".join(f"{s['model']} {_f(s['control_gap'])}" for s in summ if not math.isnan(s["control_gap"]))
              + ".", "",
              "Yes/No/Unknown belief (Wei et al.'s query; trained with the verification lines): share of "
              "forget / local-retain triples believed (P(yes) the strict argmax, entropy ≤ 1 bit): "
              + ", ".join(f"{s['model']} {_f(s['forget_yn_believed'])}/{_f(s['retain_yn_believed'])}" for s in summ)
              + ".", "", "## Per relation (forget triples, mean over seeds)", "",
              "| model | relation | n per seed | direct recall | inferable |", "|---|---|---|---|---|"]
    for r in per_relation:
        lines.append(f"| {r['model']} | {r['relation']} | {r['n']:.1f} | {_f(r['recall'])} | {_f(r['inferable'])} |")
    lines += ["", "## Claims", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['evidence']} |" for c in claim_rows]
    lines += ["", "![forget vs utility](pareto.png)", "", "![direct vs implicit](gap.png)", "",
              "![per relation](per_relation.png)", ""]
    return "\n".join(lines)
