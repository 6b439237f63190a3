"""Model-facing knowledge probes for unlearning evaluation: answer log-probs, candidate belief,
per-phrasing belief and a Yes/No/Unknown belief query (issue 10; ``shared/reference/ood_unlearning.md``
§B4.3 and §B6.5).

Everything here runs the model batched under ``torch.no_grad`` on the model's own device, in
eval mode, deterministically (no sampling). The pure math is factored into model-free functions
(:func:`candidate_softmax`, :func:`aggregate_phrasings`, :func:`belief_from_logps`) so it can be
tested on hand-made numbers.

Answer log-probs (:func:`answer_token_logps`), the input format of :mod:`entroflow.unlearn.losses`
and :mod:`entroflow.unlearn.metrics`: teacher-forced ``token_logps[b, t] = log pi(ids[t+1] | ids[:t+1])``
over the tokenisation ``ids`` of ``prompt + " " + answer`` (``kg.render`` returns the prompt without
its trailing space, and the answer follows after one space), right-padded, with ``mask[b, t] = 1``
exactly where ``ids[t+1]`` is an answer token. The answer span starts at the first token where the
tokenisation of the full text departs from that of the prompt alone (their longest common prefix),
so a tokenizer that merges across the prompt/answer boundary puts the merged token in the answer
span (its prompt part is then scored as part of the answer; with the project tokenizer, whose
Metaspace pre-tokeniser splits at spaces, this never happens and the span is exactly the tokens
after the prompt's tokens).

Candidate belief (§B6.5 "belief confidence", the TOFU-style multiple-choice probe): with
``lbar(y|x) = (1/|y|) sum_t log pi(y_t | x, y_<t)`` the length-normalised log-prob of candidate
object y (the true object and K wrong objects of the same type from
:func:`entroflow.unlearn.splits.perturbed_objects`)::

    c(y_k | x) = exp(lbar(y_k|x)) / sum_j exp(lbar(y_j|x))          (:func:`candidate_softmax`)

``p_true`` is c of the true object, ``correct`` that it is the strict argmax (a tie counts as not
correct), ``entropy`` the base-2 entropy of c. §B6.5 speaks of a softmax of the next-token logits,
which equals this for one-token objects; entities split into several BPE tokens here, hence the
length normalisation (the P~ of TOFU §2.5).

Phrasing robustness (:func:`phrasing_confidence`): c(true) under every phrasing of the triple (all
``train`` templates and the held-out ``paraphrase``, statements and QA), aggregated per triple as
``mean`` and ``worst = min`` over phrasings (issue 10: "under every training phrasing and every
paraphrase (mean and worst case)"); ``max`` is also reported. Which one is the worst case depends
on the side: for *retained* knowledge the weakest phrasing (min) is the worst case; for
*forgotten* knowledge the attacker picks the phrasing that still recalls best, so the leak worst
case is ``max`` (§B6.5: "Max is the worst case: an attacker picks the template").

Yes/No/Unknown belief (Wei et al. 2025, "Do LLMs Really Forget?", code
``src/evaluation/evaluator.py``; §B4.3) (:func:`yes_no_belief`, :func:`belief_from_logps`): the
statement is put into a question template, and at the next position the log-probs of the first
tokens of the answer words "yes", "no", "unknown" are renormalised over those three::

    P(a) = exp(l_a) / (exp(l_yes) + exp(l_no) + exp(l_unknown)),   a in {yes, no, unknown}
    H    = -sum_a P(a) log2 P(a)                                    (in [0, log2 3])
    believed = [P(yes) > P(no) and P(yes) > P(unknown)] and H <= threshold   (threshold 1.0)

The paper reads the three from the API's top-5 log-probs (a missing one gets log-prob -100); we
have the full distribution, so each word's exact log-prob is used (the same numbers whenever all
three are in the top 5). The paper sets the entropy of a rejected triple to 10000; we keep the
true entropy and return ``believed`` separately. A tie for the argmax counts as not believed.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

DEFAULT_YES_NO_TEMPLATE = "{statement} true or false ? answer :"
ENTROPY_THRESHOLD = 1.0  # the paper's config (entropy_threshold)


# ---------------------------------------------------------------------------------------------
# tokenisation and teacher-forced log-probs


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: one batched call for a Hugging Face tokenizer (callable), else
    ``encode`` per text (any object with the ``encode`` method)."""
    if not texts:
        return []
    if callable(tokenizer):
        return [list(x) for x in tokenizer(texts)["input_ids"]]
    return [list(tokenizer.encode(t)) for t in texts]


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def answer_span(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """(ids of ``prompt + " " + answer``, index of its first answer token).

    The answer starts where the full text's tokenisation departs from the prompt's (their longest
    common prefix), so a token merged across the boundary belongs to the answer. Raises ValueError
    when the answer adds no token.
    """
    return answer_spans(tokenizer, [(prompt, answer)])[0]


def answer_spans(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """:func:`answer_span` of every pair, with one batched tokenizer call over the distinct prompts
    and one over the distinct full texts (the evaluation repeats each prompt once per candidate,
    and per-string encoding was a third of its time)."""
    for p, a in pairs:
        if not a.strip():
            raise ValueError(f"answers: empty answer after prompt {p!r}")
    prompts = sorted({p for p, _ in pairs})
    fulls = sorted({f"{p} {a}" for p, a in pairs})
    p_ids = dict(zip(prompts, _encode_all(tokenizer, prompts)))
    f_ids = dict(zip(fulls, _encode_all(tokenizer, fulls)))
    out = []
    for p, a in pairs:
        pi, fi = p_ids[p], list(f_ids[f"{p} {a}"])
        start = 0
        while start < min(len(pi), len(fi)) and pi[start] == fi[start]:
            start += 1
        if start >= len(fi):
            raise ValueError(f"answers: {a!r} adds no token after prompt {p!r}")
        if start == 0:
            raise ValueError(f"prompts: {p!r} shares no leading token (e.g. <bos>) with its full text")
        out.append((fi, start))
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``[B, max len]`` token ids and their attention mask (the batching every probe,
    the evaluation pass and the unlearning loop share)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
    return ids, attn


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def answer_token_logps(model, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                       batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Teacher-forced per-token log-probs of each answer continuing its prompt.

    Returns ``(token_logps, mask)``, both ``[B, T]`` on the CPU (float32, bool), right-padded,
    ``T = max_b len(ids_b) - 1``: ``token_logps[b, t] = log pi(ids_b[t+1] | ids_b[:t+1])`` and
    ``mask[b, t]`` is 1 exactly on answer tokens (padding holds 0). ``ids_b`` is the tokenisation
    of ``prompts[b] + " " + answers[b]`` (with <bos>); see :func:`answer_span`.
    """
    if len(prompts) == 0:
        raise ValueError("prompts: must not be empty")
    if len(answers) != len(prompts):
        raise ValueError(f"answers: length {len(answers)} != len(prompts) {len(prompts)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    spans = answer_spans(tokenizer, list(zip(prompts, answers)))
    T = max(len(ids) for ids, _ in spans) - 1
    pad = _pad_id(tokenizer)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    out = torch.zeros((len(spans), T), dtype=torch.float32)
    mask = torch.zeros((len(spans), T), dtype=torch.bool)
    try:
        for lo in range(0, len(spans), batch_size):
            chunk = spans[lo:lo + batch_size]
            ids, attn = pad_rows([row for row, _ in chunk], pad)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            for i, (row, start) in enumerate(chunk):
                L = len(row) - 1
                out[lo + i, :L] = tok[i, :L]
                mask[lo + i, start - 1:L] = True
    finally:
        if was_training:
            model.train()
    return out, mask


# ---------------------------------------------------------------------------------------------
# candidate belief


def _entropy_bits(p: Tensor) -> Tensor:
    """Base-2 entropy along the last axis (0 log 0 = 0)."""
    logp = torch.log2(p.clamp_min(torch.finfo(p.dtype).tiny))
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(dim=-1)


def candidate_softmax(mean_logps) -> Tensor:
    """``softmax_k lbar(y_k|x)`` over the last axis of a ``[..., K]`` array of length-normalised
    candidate log-probs (float64)."""
    x = torch.as_tensor(mean_logps, dtype=torch.float64)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError("mean_logps: needs at least one candidate")
    return torch.softmax(x, dim=-1)


def _mean_logps(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int) -> Tensor:
    logps, mask = answer_token_logps(model, tokenizer, prompts, answers, batch_size)
    m = mask.to(torch.float64)
    return (torch.where(mask, logps.to(torch.float64), torch.zeros((), dtype=torch.float64))).sum(-1) / m.sum(-1)


def _check_candidates(candidates: Sequence[str], name: str) -> None:
    if len(candidates) == 0:
        raise ValueError(f"{name}: must not be empty")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"{name}: contains a duplicate candidate: {list(candidates)}")


def candidate_confidence(model, tokenizer, prompt: str | Sequence[str], candidates: Sequence,
                         batch_size: int = 64) -> dict | list[dict]:
    """Softmax over candidate objects of their length-normalised log-probs after ``prompt``.

    ``prompt`` a string with ``candidates`` a list of strings -> one ``{"probs": [K floats],
    "argmax": int, "entropy": bits}``; ``prompt`` a list with ``candidates`` a parallel list of
    lists -> a list of those. All (prompt, candidate) pairs run in one batched pass.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    cands = [list(candidates)] if single else [list(c) for c in candidates]
    if not prompts:
        raise ValueError("prompt: must not be empty")
    if len(cands) != len(prompts):
        raise ValueError(f"candidates: length {len(cands)} != number of prompts {len(prompts)}")
    for c in cands:
        if any(not isinstance(x, str) for x in c):
            raise ValueError("candidates: must be strings (a list of lists for a list of prompts)")
        _check_candidates(c, "candidates")
    flat_p = [p for p, c in zip(prompts, cands) for _ in c]
    flat_a = [a for c in cands for a in c]
    mean = _mean_logps(model, tokenizer, flat_p, flat_a, batch_size)
    out, lo = [], 0
    for c in cands:
        probs = candidate_softmax(mean[lo:lo + len(c)])
        lo += len(c)
        out.append({"probs": probs.tolist(), "argmax": int(torch.argmax(probs)),
                    "entropy": float(_entropy_bits(probs))})
    return out[0] if single else out


def triple_confidence(model, tokenizer, rows: Sequence[Mapping], batch_size: int = 64) -> list[dict]:
    """Per row ``{prompt, answer, wrong: [str]}``: the candidate belief over ``[answer] + wrong``,
    as ``{p_true, correct, entropy}`` (``correct``: the true answer is the strict argmax; entropy
    in bits)."""
    if len(rows) == 0:
        raise ValueError("rows: must not be empty")
    prompts, cands = [], []
    for r in rows:
        wrong = list(r["wrong"])
        if not wrong:
            raise ValueError(f"rows: 'wrong' is empty for prompt {r['prompt']!r}")
        if r["answer"] in wrong:
            raise ValueError(f"rows: 'wrong' contains the true answer {r['answer']!r}")
        if len(set(wrong)) != len(wrong):
            raise ValueError(f"rows: 'wrong' contains a duplicate: {wrong}")
        prompts.append(r["prompt"])
        cands.append([r["answer"]] + wrong)
    res = candidate_confidence(model, tokenizer, prompts, cands, batch_size)
    out = []
    for c in res:
        p = c["probs"]
        out.append({"p_true": p[0], "correct": bool(p[0] > max(p[1:])), "entropy": c["entropy"]})
    return out


def aggregate_phrasings(triple_ids: Sequence[str], p_true: Sequence[float]) -> dict[str, dict]:
    """``triple_id -> {mean, worst, max, n}`` of ``p_true`` over a triple's phrasings
    (``worst = min``), in order of first appearance."""
    if len(triple_ids) == 0:
        raise ValueError("triple_ids: must not be empty")
    if len(p_true) != len(triple_ids):
        raise ValueError(f"p_true: length {len(p_true)} != len(triple_ids) {len(triple_ids)}")
    groups: dict[str, list[float]] = {}
    for t, p in zip(triple_ids, p_true):
        groups.setdefault(t, []).append(float(p))
    return {t: {"mean": math.fsum(v) / len(v), "worst": min(v), "max": max(v), "n": len(v)}
            for t, v in groups.items()}


def phrasing_confidence(model, tokenizer, facts_rows: Sequence[Mapping],
                        wrong_objects: Mapping[str, Sequence[str]], batch_size: int = 64) -> dict[str, dict]:
    """Candidate belief in the true object under every phrasing of each triple.

    ``facts_rows``: rows of the kg ``facts`` table (``triple_id, prompt, answer, template_split``);
    every row (train and paraphrase templates, statements and QA) is one phrasing.
    ``wrong_objects``: ``triple_id -> wrong objects`` (:func:`splits.perturbed_objects`). Returns
    ``triple_id -> {mean, worst, max, n}`` (:func:`aggregate_phrasings`) plus ``mean_train`` and
    ``mean_paraphrase`` (None when the triple has no phrasing of that split).
    """
    if len(facts_rows) == 0:
        raise ValueError("facts_rows: must not be empty")
    rows = []
    for f in facts_rows:
        if f["triple_id"] not in wrong_objects:
            raise ValueError(f"wrong_objects: no entry for triple {f['triple_id']!r}")
        rows.append({"prompt": f["prompt"], "answer": f["answer"], "wrong": wrong_objects[f["triple_id"]]})
    conf = triple_confidence(model, tokenizer, rows, batch_size)
    tids = [f["triple_id"] for f in facts_rows]
    out = aggregate_phrasings(tids, [c["p_true"] for c in conf])
    for split in ("train", "paraphrase"):
        sub = [(t, c["p_true"]) for t, c, f in zip(tids, conf, facts_rows) if f.get("template_split") == split]
        agg = aggregate_phrasings([t for t, _ in sub], [p for _, p in sub]) if sub else {}
        for t in out:
            out[t][f"mean_{split}"] = agg[t]["mean"] if t in agg else None
    return out


# ---------------------------------------------------------------------------------------------
# Yes/No/Unknown belief


def belief_from_logps(logps, threshold: float = ENTROPY_THRESHOLD) -> list[dict]:
    """The §B4.3 rule on ``[N, 3]`` log-probs (or logits) of (yes, no, unknown): renormalise,
    base-2 entropy, ``believed = yes is the strict argmax and entropy <= threshold``."""
    x = torch.as_tensor(logps, dtype=torch.float64)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"logps: must be [N, 3] (yes, no, unknown), got shape {tuple(x.shape)}")
    p = torch.softmax(x, dim=-1)
    h = _entropy_bits(p)
    out = []
    for (py, pn, pu), e in zip(p.tolist(), h.tolist()):
        out.append({"p_yes": py, "p_no": pn, "p_unknown": pu, "entropy": e,
                    "believed": bool(py > pn and py > pu and e <= threshold)})
    return out


def yes_no_belief(model, tokenizer, statements: Sequence[str], yes: str = "yes", no: str = "no",
                  unknown: str = "unknown", template: str = DEFAULT_YES_NO_TEMPLATE,
                  threshold: float = ENTROPY_THRESHOLD, batch_size: int = 64) -> list[dict]:
    """Per statement ``{p_yes, p_no, p_unknown, entropy, believed}`` (Wei et al. §B4.3).

    The prompt is ``template.format(statement=s)``; each answer word's first token is scored at the
    next position (teacher-forced, :func:`answer_token_logps`) and the three are renormalised
    (:func:`belief_from_logps`). A tiny model trained from scratch has never seen this question
    format unless it was trained on it (e.g. on "... true or false ? answer : yes/no" documents):
    untrained, its answer is noise, so the caller decides whether this probe is meaningful.
    """
    if len(statements) == 0:
        raise ValueError("statements: must not be empty")
    if "{statement}" not in template:
        raise ValueError(f"template: must contain '{{statement}}', got {template!r}")
    words = [yes, no, unknown]
    prompts = [template.format(statement=s) for s in statements]
    firsts = []
    for w in words:
        ids, start = answer_span(tokenizer, prompts[0], w)
        firsts.append(ids[start])
    if len(set(firsts)) != 3:
        raise ValueError(f"yes/no/unknown: the answer words {words} must start with distinct tokens")
    flat_p = [p for p in prompts for _ in words]
    flat_a = [w for _ in prompts for w in words]
    logps, mask = answer_token_logps(model, tokenizer, flat_p, flat_a, batch_size)
    first = mask.to(torch.int64).argmax(dim=-1)  # index of the first answer token per row
    l1 = logps.gather(-1, first.unsqueeze(-1)).squeeze(-1).to(torch.float64).view(len(prompts), 3)
    return belief_from_logps(l1, threshold)
