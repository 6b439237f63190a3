"""Text quality of (watermarked) completions: oracle perplexity and n-gram diversity.

Perplexity (watermark.md §5 protocol item 4, §4.3)
--------------------------------------------------
``conditional_perplexity`` follows the KGW convention (reliability release,
``utils/evaluation.py::compute_ppl_batch``): the oracle LM reads prompt + completion, the labels
are masked over the prompt, and the perplexity of one completion ``y`` of length ``m`` given its
prompt ``x`` is::

    ppl(y | x) = exp( -(1/m) * sum_{t=1..m} log p_oracle(y_t | x, y_<t) )

MarkLLM and LTW score the completion alone (unconditional); pass an empty or ``[<bos>]`` prompt
for that. The aggregate :func:`aggregate_perplexity` reports ``exp(mean_i log ppl_i)`` (the
geometric mean, i.e. the exponentiated mean per-sequence NLL: one long-tailed outlier cannot
dominate it) as the headline, with the median and the arithmetic mean of per-sequence
perplexities (what the KGW and MarkLLM scripts average) beside it.

Diversity (Li et al. 2016; Su et al. 2022, SimCTG)
--------------------------------------------------
On token ids (or on any sequences of hashable items, e.g. words)::

    distinct-n(S)  = |unique n-grams over all sequences of S| / |n-grams over all sequences of S|
    rep-n(s)       = 1 - |unique n-grams of s| / |n-grams of s|                (a fraction)
    diversity(s)   = prod_{n=2..4} (1 - rep-n(s))                              (SimCTG)
    log-div(s)     = -log(1 - diversity(s))                                    (KGW reliability)

SimCTG writes rep-n in percent and divides by 100 in the product. MarkLLM's
``LogDiversityAnalyzer`` and the KGW reliability ``metrics/repetition_diversity.py`` compute rep-n
as a fraction and still divide it by 100, so their diversity is ``prod(1 - rep_n/100)``, close to 1
for any text (watermark.md §4.3). We do not divide again: rep-n is a fraction and enters the
product as it is. Our numbers are therefore not comparable to those tables' log-diversity.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch

LOG_DIV_CAP = 20.0  # -log(e^-20): a text without any repeated 2/3/4-gram has diversity 1 (MarkLLM's clamp)


@torch.inference_mode()
def conditional_perplexity(model, prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]],
                           batch_size: int = 16, device: str | torch.device = "cpu",
                           padding_side: str = "right", pad_id: int = 0) -> np.ndarray:
    """Per-sequence perplexity of ``token_ids[i]`` given ``prompt_ids[i]`` under ``model`` (float64).

    Sequences are sorted by length and batched (less padding), padded on ``padding_side`` with
    ``pad_id`` and an attention mask, with explicit ``position_ids = cumsum(mask) - 1`` so a left-
    padded row has the same positions as when it is alone. Only completion positions are scored,
    selected by index (a pad position is never scored, and NaNs a fully masked pad row might
    produce cannot leak into the sum). Log-probabilities in float32. A completion token needs
    one token before it: with an empty prompt the first completion token is not scored. A
    completion with no scored token gets NaN. Results are in the input order and do not depend
    on ``batch_size`` or on the other sequences of a batch (up to float rounding of batch shapes).
    """
    if len(prompt_ids) != len(token_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(token_ids)} completions")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    model.eval()
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, token_ids)]
    starts = [len(p) for p in prompt_ids]  # index of the first completion token in seqs[i]
    out = np.full(len(seqs), np.nan, dtype=np.float64)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), max(1, batch_size)):
        idx = [i for i in order[b:b + batch_size] if len(seqs[i]) >= 2 and len(token_ids[i]) > 0]
        if not idx:
            continue
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        offset = []
        for r, i in enumerate(idx):
            L = len(seqs[i])
            o = width - L if padding_side == "left" else 0
            ids[r, o:o + L] = torch.tensor(seqs[i], dtype=torch.long)
            mask[r, o:o + L] = 1
            offset.append(o)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=pos.to(device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(idx):
            o, L = offset[r], len(seqs[i])
            first = max(starts[i], 1)  # token at index t is predicted by position t-1
            tgt = torch.arange(o + first, o + L, device=logp.device)
            if tgt.numel() == 0:
                continue
            lp = logp[r, tgt - 1, ids[r, tgt.cpu()].to(logp.device)]
            out[i] = math.exp(-float(lp.double().mean()))
    return out


def aggregate_perplexity(ppl: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Summary of per-sequence perplexities; non-finite values (unscored sequences) are left out.

    ``ppl`` (reported): ``exp(mean log ppl_i)``; ``ppl_median``; ``ppl_mean``: arithmetic mean
    (the KGW/MarkLLM scripts' number); ``n``: sequences used. NaN everywhere when none is finite.
    """
    a = np.asarray(ppl, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"ppl": float("nan"), "ppl_median": float("nan"), "ppl_mean": float("nan"), "n": 0}
    return {"ppl": float(np.exp(np.log(a).mean())), "ppl_median": float(np.median(a)),
            "ppl_mean": float(a.mean()), "n": int(a.size)}


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple]:
    """The overlapping n-grams of ``seq`` as tuples (empty if ``len(seq) < n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = list(seq)
    return [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]


def distinct_n(seqs: Sequence[Sequence[Hashable]], n: int) -> float:
    """distinct-n over a set of sequences (Li et al. 2016): unique n-grams / all n-grams, pooled
    over the whole set (n-grams never span two sequences). NaN if the set has no n-gram."""
    grams = [g for s in seqs for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_n(seq: Sequence[Hashable], n: int) -> float:
    """SimCTG rep-n of one sequence, as a fraction: ``1 - |unique n-grams| / |n-grams|``.

    A sequence shorter than ``n`` has no n-gram and so no repetition: 0.0.
    """
    grams = ngrams(seq, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def diversity(seq: Sequence[Hashable]) -> float:
    """SimCTG diversity ``prod_{n=2..4} (1 - rep-n)`` with rep-n a fraction (no second /100)."""
    return float(np.prod([1.0 - repetition_n(seq, n) for n in (2, 3, 4)]))


def log_diversity(seq: Sequence[Hashable]) -> float:
    """``-log(1 - diversity(seq))``, capped at :data:`LOG_DIV_CAP` = 20 (MarkLLM's
    ``max(1 - div, e^-20)`` clamp): a text with no repeated 2-, 3- or 4-gram has diversity 1 and
    would otherwise be infinite. Higher = more diverse; it tends to 0 for one token repeated
    (rep-n -> 1 as the text grows: ``[7]*5`` has rep-2/3/4 = 3/4, 2/3, 1/2). Short texts (a grammar sentence of ~10 tokens) often reach the
    cap, so compare log-diversity only between sets of texts of similar length.
    """
    d = diversity(seq)
    return float(min(LOG_DIV_CAP, -math.log(max(1.0 - d, math.exp(-LOG_DIV_CAP)))))


def diversity_summary(seqs: Sequence[Sequence[Hashable]]) -> dict[str, float]:
    """Set-level numbers for logging: distinct-1/2/3 (pooled), mean rep-2/3/4 and mean
    log-diversity over sequences (NaN for an empty set)."""
    out = {f"distinct_{n}": distinct_n(seqs, n) for n in (1, 2, 3)}
    for n in (2, 3, 4):
        out[f"rep_{n}"] = float(np.mean([repetition_n(s, n) for s in seqs])) if seqs else float("nan")
    out["log_diversity"] = float(np.mean([log_diversity(s) for s in seqs])) if seqs else float("nan")
    return out
