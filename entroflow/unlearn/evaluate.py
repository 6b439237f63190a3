"""Evaluate one model on the unlearning world: direct recall under every phrasing, truth ratio,
memorisation, membership inference, Yes/No/Unknown belief, and implicit recall through the rule
judge (reference §B6.5; Wei et al., "Do LLMs Really Forget?", NeurIPS 2025).

One batched, teacher-forced pass (:func:`score_pairs`) scores every (prompt, answer) pair the
evaluation needs: each triple under each of its seven phrasings (four training statements, the
held-out paraphrase statement, the training and the paraphrase question) with its true object and
its wrong objects. From it, per triple (:func:`per_triple`):

* ``p_mean`` / ``p_worst`` / ``p_max``: the candidate belief in the true object (softmax over the
  length-normalised log-probs of true and wrong objects, :func:`probes.candidate_softmax`),
  mean / min / max over the seven phrasings; ``p_train``, ``p_para`` over the training and the
  paraphrase phrasings;
* ``recall``: **direct recall**, the true object is the argmax in a majority of the five training
  phrasings; ``recall_any``: in at least one of the seven (the attacker's pick of phrasing);
  ``recall_para``: in the paraphrase statement;
* ``truth_ratio``: ``exp(mean_k lbar(wrong_k) - lbar(true))`` under the paraphrase statement
  (TOFU, :func:`metrics.truth_ratio`); ``prob``: ``exp(lbar(true))`` averaged over the training
  phrasings (TOFU's answer probability);
* ``es``, ``em``: extraction strength and exact memorisation of the answer, training phrasings;
* ``mia_loss``, ``mia_zlib``, ``mia_mink``, ``mia_minkpp``: membership scores (higher = member)
  of the answer tokens, mean over the training phrasings;
* ``p_yes``, ``p_no``, ``p_unknown``, ``yn_entropy``, ``yn_believed``: the Yes/No/Unknown query on
  the first training statement (:func:`probes.belief_from_logps`, base-2 entropy, threshold 1),
  read from each answer word's whole log-prob (the paper reads first tokens; see the code).

Implicit recall (:func:`implicit`): the model *believes* the triples it directly recalls. For each
forget triple the rule judge (:func:`judge.judge_inferable`) decides whether it is still derivable
from the believed triples (score >= 3 of 5 = still known), and reports its path and the believed
supporting subgraph (two hops). ``support_survival`` is the share of the triple's ground-truth
premises (every believed-or-not premise on a derivation from the retained graph) the model still
believes: a method that destroys the model passes the inference test by deleting them, so the two
are always reported together.

Summary (:func:`summarise`), Wei et al.'s quantities on the forget set::

    FSR_s = mean[not recall]                       (superficial forget-success rate)
    FSR_k = mean[not recall and not inferable]     (knowledge-level)
    gap   = FSR_s - FSR_k                          (how much the instance-level view overestimates)

plus recall / truth ratio per split, model utility (harmonic mean of answer probability, recall
and truth ratio ``true_better`` on retain and world), MIA AUCs (forget vs holdout) and, against
the gold retain model's evaluation, forget quality (KS p-value of truth ratios), PrivLeak and the
relative leak ``mean(I_model - I_retain)`` over targets (inferable as 0/1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from entroflow.unlearn import judge, metrics, probes, world

TRAIN_PHRASINGS = 5  # four training statements and the training question per triple
MINK = 0.4  # TOFU's k for MinK / MinK++


@torch.no_grad()
def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> list[dict]:
    """Per (prompt, answer) pair: ``logps`` (answer tokens' log-probs), ``correct`` (teacher-forced
    argmax equals the token), ``mu``/``var`` (mean and variance of log pi over the vocabulary at
    each answer position, for MinK++). Pairs are batched by length; one forward per batch."""
    spans = probes.answer_spans(tokenizer, pairs)
    order = sorted(range(len(spans)), key=lambda i: len(spans[i][0]))
    pad = probes._pad_id(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    out: list[dict] = [{}] * len(spans)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        ids, attn = probes.pad_rows([spans[i][0] for i in idx], pad)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        tgt = ids[:, 1:].to(device)
        tok = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        correct = logp.argmax(-1) == tgt
        p = logp.exp()
        mu = (p * logp).sum(-1)
        var = (p * logp.square()).sum(-1) - mu.square()
        tok, correct, mu, var = tok.cpu(), correct.cpu(), mu.cpu(), var.cpu()
        for j, i in enumerate(idx):
            row, start = spans[i]
            sl = slice(start - 1, len(row) - 1)
            out[i] = {"logps": tok[j, sl].tolist(), "correct": correct[j, sl].tolist(),
                      "mu": mu[j, sl].tolist(), "var": var[j, sl].clamp_min(0).tolist()}
    return out


def _mean(x: Sequence[float]) -> float:
    return math.fsum(x) / len(x)


def per_triple(model, tokenizer, facts: pa.Table, split_rows: list[dict], batch_size: int = 256) -> pa.Table:
    """The per-triple table (module docstring) for every triple of ``split_rows``."""
    info = {r["triple_id"]: r for r in split_rows}
    phr: dict[str, list[dict]] = {}
    for f in facts.to_pylist():
        if f["triple_id"] in info:
            phr.setdefault(f["triple_id"], []).append(f)
    pairs: list[tuple[str, str]] = []
    where: dict[tuple[str, str], tuple[int, int]] = {}  # (triple, template) -> slice into pairs
    for tid in sorted(phr):
        cands = [info[tid]["tail"], *info[tid]["wrong"]]
        for f in phr[tid]:
            where[(tid, f["template_id"])] = (len(pairs), len(pairs) + len(cands))
            pairs += [(f["prompt"], c) for c in cands]
    yn_prompts = {tid: probes.DEFAULT_YES_NO_TEMPLATE.format(
        statement=world.statement(info[tid]["relation"], info[tid]["head"], info[tid]["tail"])) for tid in sorted(phr)}
    yn_start = len(pairs)
    for tid in sorted(phr):
        pairs += [(yn_prompts[tid], a) for a in world.ANSWERS]
    scored = score_pairs(model, tokenizer, pairs, batch_size)
    rows = []
    for k, tid in enumerate(sorted(phr)):
        r = info[tid]
        per = []
        for f in phr[tid]:
            lo, hi = where[(tid, f["template_id"])]
            lbar = [_mean(s["logps"]) for s in scored[lo:hi]]
            probs = probes.candidate_softmax(lbar).tolist()
            s_true = scored[lo]
            per.append({"split": f["template_split"], "style": f["style"], "template_id": f["template_id"],
                        "p": probs[0], "correct": len(probs) > 1 and probs[0] > max(probs[1:]),
                        "lbar": lbar, "s": s_true})
        train = [x for x in per if x["split"] == "train"]
        para = [x for x in per if x["split"] == "paraphrase"]
        para_stmt = next(x for x in para if x["style"] == "statement")
        lb = para_stmt["lbar"]
        tr = math.exp(_mean(lb[1:]) - lb[0]) if len(lb) > 1 else float("nan")
        yn_lo = yn_start + 3 * k
        # Whole-word log-probs: the tiny tokenizer splits the words, and "yes" and "unknown" share
        # their first token, so the paper's first-token read-out cannot tell them apart here.
        yn = probes.belief_from_logps([[math.fsum(scored[yn_lo + a]["logps"]) for a in range(3)]])[0]
        mia = _mia(train, r["tail"])
        rows.append({
            "triple_id": tid, "head": r["head"], "relation": r["relation"], "tail": r["tail"], "kind": r["kind"],
            "split": r["split"], "role": r["role"],
            "p_mean": _mean([x["p"] for x in per]), "p_worst": min(x["p"] for x in per),
            "p_max": max(x["p"] for x in per), "p_train": _mean([x["p"] for x in train]),
            "p_para": _mean([x["p"] for x in para]),
            "recall": sum(x["correct"] for x in train) * 2 > len(train),
            "recall_any": any(x["correct"] for x in per), "recall_para": bool(para_stmt["correct"]),
            "truth_ratio": tr, "prob": _mean([math.exp(x["lbar"][0]) for x in train]),
            "es": _mean([_es(x["s"]["correct"]) for x in train]),
            "em": _mean([_mean([float(c) for c in x["s"]["correct"]]) for x in train]),
            **mia,
            "p_yes": yn["p_yes"], "p_no": yn["p_no"], "p_unknown": yn["p_unknown"],
            "yn_entropy": yn["entropy"], "yn_believed": yn["believed"],
        })
    return pa.Table.from_pylist(rows)


def _es(correct: Sequence[bool]) -> float:
    """Extraction strength of one answer (:func:`metrics.extraction_strength` on one row)."""
    return float(metrics.extraction_strength(np.array([correct], dtype=bool), np.ones((1, len(correct)), bool))[0])


def _mia(train: list[dict], answer: str) -> dict:
    """Membership scores of the answer tokens (higher = member), averaged over the phrasings."""
    out = {"mia_loss": [], "mia_zlib": [], "mia_mink": [], "mia_minkpp": []}
    for x in train:
        lp = np.array([x["s"]["logps"]])
        m = np.ones_like(lp, dtype=bool)
        out["mia_loss"].append(float(metrics.mia_loss(lp, m)[0]))
        out["mia_zlib"].append(float(metrics.mia_zlib(lp, m, [answer])[0]))
        out["mia_mink"].append(float(metrics.mia_mink(lp, m, MINK)[0]))
        out["mia_minkpp"].append(float(metrics.mink_plus_plus_from_stats(
            # sigma floored: a float32 one-hot position has variance 0 and MinK++ is then undefined
            lp, np.array([x["s"]["mu"]]), np.maximum(np.sqrt(np.array([x["s"]["var"]])), 1e-6), m, MINK)[0]))
    return {k: _mean(v) for k, v in out.items()}


def ground_truth_support(split_rows: list[dict], max_depth: int = 3) -> dict[str, list[tuple[str, str, str]]]:
    """Per forget triple, the true premises of its derivations from the retained (trained, not
    forgotten) graph: what must survive in the model for it to be inferable."""
    retained = {(r["head"], r["relation"], r["tail"]) for r in split_rows if r["split"] not in ("forget", "holdout")}
    out = {}
    for r in split_rows:
        if r["split"] == "forget":
            t = (r["head"], r["relation"], r["tail"])
            out[r["triple_id"]] = sorted({p for d in judge.derivations(t, retained, max_depth) for p in d["support"]})
    return out


def implicit(table: pa.Table, split_rows: list[dict], max_depth: int = 3, hops: int = 2) -> pa.Table:
    """Per forget triple: direct recall, the rule judge's verdict on the believed graph, its path,
    the believed supporting subgraph, and support survival (module docstring)."""
    rows = table.to_pylist()
    believed = {(r["head"], r["relation"], r["tail"]) for r in rows if r["recall"]}
    all_triples = [(r["head"], r["relation"], r["tail"]) for r in split_rows]
    support = ground_truth_support(split_rows, max_depth)
    out = []
    for r in rows:
        if r["split"] != "forget":
            continue
        t = (r["head"], r["relation"], r["tail"])
        v = judge.judge_inferable(t, believed, max_depth)
        sub = judge.supporting_subgraph(t, believed, all_triples, hops)
        sup = support[r["triple_id"]]
        out.append({"triple_id": r["triple_id"], "head": r["head"], "relation": r["relation"], "tail": r["tail"],
                    "role": r["role"], "recall": r["recall"],
                    "recall_any": r["recall_any"], "inferable": v["inferable"], "judge_score": v["score"],
                    "explanation": v["explanation"], "subgraph": [f"{x[1]}({x[0]}, {x[2]})" for x in sorted(sub)],
                    "support_total": len(sup), "support_believed": sum(p in believed for p in sup),
                    "support_survival": (sum(p in believed for p in sup) / len(sup)) if sup else None})
    return pa.Table.from_pylist(out)


def _rate(xs) -> float | None:
    xs = list(xs)
    return _mean([float(x) for x in xs]) if xs else None


def summarise(table: pa.Table, inf: pa.Table, reference: tuple[pa.Table, pa.Table] | None = None) -> dict[str, float]:
    """Run-level metrics of one model (module docstring); ``reference`` is the gold retain model's
    ``(per_triple, implicit)`` tables, for forget quality, PrivLeak and the relative leak."""
    rows, irows = table.to_pylist(), inf.to_pylist()
    out: dict[str, float] = {}
    by_split: dict[str, list[dict]] = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r)
    for split, rs in by_split.items():
        out[f"{split}/recall"] = _rate(r["recall"] for r in rs)
        out[f"{split}/recall_any"] = _rate(r["recall_any"] for r in rs)
        out[f"{split}/recall_para"] = _rate(r["recall_para"] for r in rs)
        out[f"{split}/p_mean"] = _mean([r["p_mean"] for r in rs])
        out[f"{split}/p_worst"] = _mean([r["p_worst"] for r in rs])
        out[f"{split}/p_max"] = _mean([r["p_max"] for r in rs])
        out[f"{split}/prob"] = _mean([r["prob"] for r in rs])
        out[f"{split}/es"] = _mean([r["es"] for r in rs])
        out[f"{split}/em"] = _mean([r["em"] for r in rs])
        out[f"{split}/yn_believed"] = _rate(r["yn_believed"] for r in rs)
        out[f"{split}/yn_entropy"] = _mean([r["yn_entropy"] for r in rs])
        tr = [r["truth_ratio"] for r in rs]
        mode = "closer_to_1_better" if split in ("forget", "holdout") else "true_better"
        out[f"{split}/truth_ratio"] = metrics.truth_ratio_summary(tr, mode)
    retain = by_split.get("retain_local", []) + by_split.get("retain_global", [])
    parts = {}
    for name, rs in (("retain", retain), ("world", by_split.get("world", []))):
        if rs:
            parts[f"{name}_prob"] = _mean([r["p_train"] for r in rs])
            parts[f"{name}_recall"] = _rate(r["recall"] for r in rs)
            parts[f"{name}_truth_ratio"] = metrics.truth_ratio_summary([r["truth_ratio"] for r in rs], "true_better")
    out["model_utility"] = metrics.model_utility(parts)
    out["retain/recall"] = _rate(r["recall"] for r in retain)
    # Wei et al.'s rates on the forget set, overall and per role.
    for role in ["all", *sorted({r["role"] for r in irows})]:
        rs = [r for r in irows if role == "all" or r["role"] == role]
        pre = "forget" if role == "all" else f"forget_{role}"
        fsr_s = _rate(not r["recall"] for r in rs)
        fsr_k = _rate(not r["recall"] and not r["inferable"] for r in rs)
        out[f"{pre}/fsr_s"], out[f"{pre}/fsr_k"], out[f"{pre}/gap"] = fsr_s, fsr_k, fsr_s - fsr_k
        out[f"{pre}/inferable"] = _rate(r["inferable"] for r in rs)
        out[f"{pre}/recall_any"] = _rate(r["recall_any"] for r in rs)
        sv = [r["support_survival"] for r in rs if r["support_survival"] is not None]
        out[f"{pre}/support_survival"] = _mean(sv) if sv else float("nan")
    members, holdout = by_split.get("forget", []), by_split.get("holdout", [])
    if members and holdout:
        for k in ("loss", "zlib", "mink", "minkpp"):
            out[f"mia/{k}_auc"] = metrics.mia_auc([r[f"mia_{k}"] for r in members], [r[f"mia_{k}"] for r in holdout])
    if reference is not None:
        ref_rows, ref_inf = reference[0].to_pylist(), reference[1].to_pylist()
        ref_tr = {r["triple_id"]: r["truth_ratio"] for r in ref_rows if r["split"] == "forget"}
        out["forget_quality"] = metrics.forget_quality([r["truth_ratio"] for r in members], list(ref_tr.values()))
        ref_members = [r for r in ref_rows if r["split"] == "forget"]
        ref_hold = [r for r in ref_rows if r["split"] == "holdout"]
        if ref_members and ref_hold and "mia/loss_auc" in out:
            ref_auc = metrics.mia_auc([r["mia_loss"] for r in ref_members], [r["mia_loss"] for r in ref_hold])
            if ref_auc < 1.0:  # PrivLeak divides by 1 - AUC of the reference
                out["privleak"] = metrics.privleak(out["mia/loss_auc"], ref_auc)
        ref_inf_by = {r["triple_id"]: r["inferable"] for r in ref_inf}
        diffs = [float(r["inferable"]) - float(ref_inf_by[r["triple_id"]]) for r in irows if r["triple_id"] in ref_inf_by]
        out["forget/relative_leak"] = _mean(diffs) if diffs else float("nan")
    return {k: float(v) for k, v in out.items() if v is not None}
