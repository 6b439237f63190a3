"""Detection statistics of green-list watermarks, from token ids alone (no model).

Kirchenbauer et al. 2023, "A Watermark for Large Language Models", §3 (Eq. 2 / §4): under the
null hypothesis H0 "the text was written without knowledge of the key", each scored token is green
with probability ``gamma`` independently of the others, so the green count ``G`` of ``T`` scored
tokens is ``Binomial(T, gamma)`` and the one-proportion z-statistic is::

    z = (G - gamma T) / sqrt(T gamma (1 - gamma))

The reference and transformers report the normal tail ``1 - Phi(z)``, which is poor for small ``T``
and tiny false-positive rates; here ``p_value`` is the exact binomial tail
``P[Bin(T, gamma) >= G] = binom.sf(G - 1, T, gamma)`` and ``p_value_normal`` the normal one.
``T = 0`` (nothing scored) is defined as no evidence: ``z = 0``, ``p = 1``, green_fraction NaN.

What is scored
--------------
Generated token ``j`` of a sequence is scored when (a) it has ``context_len`` tokens before it
(prompt tail + earlier generated tokens; the last ``h`` prompt tokens seed the first generated
tokens, as at generation), (b) the optional ``scored`` mask is true there (selective schemes:
SWEET, LTW), and (c) with ``ignore_repeated_ngrams`` its n-gram ``(context, token)`` has not been
scored earlier in the same sequence (the reference's "count each n-gram once"; ``T`` becomes the
number of distinct scored n-grams). A trailing EOS is dropped first when ``eos_token_id`` is given.

Weighted score (EWD, Lu et al. 2024)
------------------------------------
With per-token weights ``w_t >= 0`` (computed from a model, never from the key)::

    S = sum_t w_t g_t,   z_w = (S - gamma sum_t w_t) / sqrt(gamma (1 - gamma) sum_t w_t^2)

Null of ``S``: given the key is unknown to whoever wrote the text, the green bits ``g_t`` of the
scored tokens are i.i.d. Bernoulli(gamma) *and independent of the weights* (the weights are a
function of the text and the model only), so conditionally on the weights ``S`` is a weighted sum
of independent Bernoullis. ``p_value_weighted`` is its exact upper tail, computed by dynamic
programming after rounding the weights to an integer grid ``q_t = round(w_t / max(w) * levels)``:
the p-value is then exact for the statistic ``S_q = sum_t q_t g_t`` (a valid test statistic in its
own right, since ``q`` is also key-free), so rounding costs a little power but never validity.
``z_w`` uses the unrounded weights. All weights zero (or nothing scored): ``z_w = 0``, ``p = 1``.

Output
------
:func:`score_sequences` returns a list of dicts, one per sequence, with only Python scalars and
lists, so ``pyarrow.Table.from_pylist(rows)`` (one row per sequence) goes straight to Parquet.
Keys: ``num_tokens_generated`` (after the EOS strip), ``num_tokens_scored``, ``num_green``,
``green_fraction``, ``z``, ``p_value``, ``p_value_normal``, ``z_at_T`` (z over the first
``t + 1`` generated tokens, one entry per generated token), ``green`` (per generated token: 1 green,
0 red, -1 not scored), and ``weighted_score``, ``z_weighted``, ``p_value_weighted`` (None without
weights). :func:`tokens_to_fpr` reads ``green`` to give the shortest prefix that reaches a
false-positive rate.

Speed: all ``(context, token)`` pairs of all sequences go through one
:meth:`GreenList.is_green` call; repeated n-grams are found with one lexicographic sort; prefix
z-scores are one cumulative sum. Python loops only slice per-sequence results.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from entroflow.watermark.green import GreenList

DEFAULT_WEIGHT_LEVELS = 1000  # integer grid of the weighted null: max weight -> 1000


def z_score(num_green, num_scored, gamma: float):
    """One-proportion z of ``num_green`` out of ``num_scored`` (arrays ok); 0 where nothing is scored."""
    g = np.asarray(num_green, dtype=np.float64)
    t = np.asarray(num_scored, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (g - gamma * t) / np.sqrt(t * gamma * (1.0 - gamma))
    return np.where(t > 0, z, 0.0)


def binomial_p_value(num_green, num_scored, gamma: float):
    """Exact one-sided ``P[Bin(T, gamma) >= G]`` (arrays ok); 1 where nothing is scored."""
    g = np.asarray(num_green, dtype=np.int64)
    t = np.asarray(num_scored, dtype=np.int64)
    return np.where(t > 0, stats.binom.sf(g - 1, t, gamma), 1.0)


def weighted_null_p_value(weights, green, gamma: float, levels: int = DEFAULT_WEIGHT_LEVELS) -> float:
    """Exact ``P[S_q >= s_q]`` for ``S_q = sum q_t g_t``, ``g_t`` i.i.d. Bernoulli(gamma), with
    ``q_t = round(w_t / max(w) * levels)`` (module docstring: why this is a valid null).

    Dynamic programming over the pmf of the integer sum: adding token ``t`` maps
    ``pmf -> (1 - gamma) pmf + gamma shift(pmf, q_t)``; cost ``O(T * sum q)``.
    """
    w = np.asarray(weights, dtype=np.float64)
    g = np.asarray(green, dtype=bool)
    if w.size == 0 or not np.any(w > 0):
        return 1.0
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")
    q = np.rint(w / w.max() * levels).astype(np.int64)
    q = q[q > 0]  # zero-weight tokens add nothing to either side
    observed = int(np.rint(w / w.max() * levels).astype(np.int64)[g].sum())
    pmf = np.zeros(int(q.sum()) + 1)
    pmf[0] = 1.0
    top = 0
    for step in q:
        shifted = pmf[: top + 1].copy()
        pmf[: top + 1] *= 1.0 - gamma
        pmf[step : step + top + 1] += gamma * shifted
        top += int(step)
    return float(min(1.0, pmf[observed:].sum()))


def tokens_to_fpr(green: Sequence[int], gamma: float, alpha: float) -> int | None:
    """Smallest number of generated tokens whose prefix has exact binomial ``p <= alpha``
    (``green``: the per-token column of :func:`score_sequences`), or None if no prefix does."""
    bits = np.asarray(green, dtype=np.int64)
    scored = np.cumsum(bits >= 0)
    greens = np.cumsum(bits == 1)
    hit = np.nonzero(binomial_p_value(greens, scored, gamma) <= alpha)[0]
    return int(hit[0]) + 1 if hit.size else None


def score_sequences(
    green_list: GreenList,
    prompt_ids: Sequence[Sequence[int]],
    token_ids: Sequence[Sequence[int]],
    *,
    ignore_repeated_ngrams: bool = True,
    eos_token_id: int | None = None,
    scored: Sequence[Sequence[bool]] | None = None,
    weights: Sequence[Sequence[float]] | None = None,
    weight_levels: int = DEFAULT_WEIGHT_LEVELS,
) -> list[dict]:
    """Detection statistics of each sequence (module docstring: what is scored, the output keys).

    ``prompt_ids[i]``: the prompt of sequence ``i`` (only its last ``context_len`` tokens are read;
    ``[]`` scores the text alone, skipping its first ``context_len`` tokens); ``token_ids[i]``:
    its generated tokens only. ``scored[i]`` / ``weights[i]``: one entry per generated token
    (before the EOS strip; the stripped EOS's entry is ignored). selfhash reads ``h - 1`` context
    tokens; see :class:`GreenList` for ``context_len``.
    """
    if len(prompt_ids) != len(token_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(token_ids)} sequences")
    need = green_list.context_len
    gamma = float(green_list.gamma)
    n_seq = len(token_ids)

    # Per sequence: the tokens, their contexts (need columns) and which have a full context.
    toks, ctxs, masks, wts = [], [], [], []
    for i in range(n_seq):
        gen = np.asarray(token_ids[i], dtype=np.int64)
        n_gen = len(gen)
        if eos_token_id is not None and n_gen and gen[-1] == eos_token_id:
            gen = gen[:-1]
        n = len(gen)
        tail = np.asarray(prompt_ids[i], dtype=np.int64)[len(prompt_ids[i]) - need :] if need else np.zeros(0, np.int64)
        ext = np.concatenate([tail, gen])
        p = len(tail)
        has_ctx = np.arange(n) >= need - p  # token j's context ext[p+j-need : p+j] exists
        ctx = np.zeros((n, need), dtype=np.int64)
        if need and has_ctx.any():
            windows = np.lib.stride_tricks.sliding_window_view(ext, need)
            first = need - p if need > p else 0
            ctx[first:] = windows[p + first - need : p + n - need]
        mask = has_ctx
        if scored is not None:
            if len(scored[i]) != n_gen:
                raise ValueError(f"scored[{i}] has {len(scored[i])} entries for {n_gen} generated tokens")
            mask = mask & np.asarray(scored[i], dtype=bool)[:n]
        if weights is not None:
            if len(weights[i]) != n_gen:
                raise ValueError(f"weights[{i}] has {len(weights[i])} entries for {n_gen} generated tokens")
            wts.append(np.asarray(weights[i], dtype=np.float64)[:n])
        toks.append(gen)
        ctxs.append(ctx)
        masks.append(mask)

    lengths = np.array([len(t) for t in toks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    all_tok = np.concatenate(toks) if n_seq else np.zeros(0, np.int64)
    all_ctx = np.concatenate(ctxs) if n_seq else np.zeros((0, need), np.int64)
    all_mask = np.concatenate(masks) if n_seq else np.zeros(0, bool)
    seq_of = np.repeat(np.arange(n_seq), lengths)

    # One is_green call over every scored (context, token) pair of every sequence.
    idx = np.nonzero(all_mask)[0]
    green_bits = np.zeros(len(all_tok), dtype=bool)
    if idx.size:
        green_bits[idx] = green_list.is_green(
            torch.from_numpy(all_ctx[idx]), torch.from_numpy(all_tok[idx])
        ).cpu().numpy()

    if ignore_repeated_ngrams and idx.size:
        # First occurrence of each (sequence, context, token) among the scored positions: sort by
        # the n-gram then by position, and drop rows equal to their predecessor.
        keys = np.column_stack([seq_of[idx], all_ctx[idx], all_tok[idx]])
        order = np.lexsort((idx,) + tuple(keys[:, c] for c in range(keys.shape[1] - 1, -1, -1)))
        sorted_keys = keys[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1)
        all_mask[idx[order[repeat]]] = False

    green_col = np.where(all_mask, green_bits.astype(np.int8), np.int8(-1))
    # Prefix statistics over all sequences at once: cumulative sums restarted per sequence.
    cum_scored = np.cumsum(all_mask)
    cum_green = np.cumsum(all_mask & green_bits)
    base_scored = np.concatenate([[0], cum_scored])[offsets[:-1]]
    base_green = np.concatenate([[0], cum_green])[offsets[:-1]]
    prefix_scored = cum_scored - np.repeat(base_scored, lengths)
    prefix_green = cum_green - np.repeat(base_green, lengths)
    z_prefix = z_score(prefix_green, prefix_scored, gamma)

    seq_scored = np.add.reduceat(all_mask, offsets[:-1]) if len(all_tok) else np.zeros(n_seq, np.int64)
    seq_green = np.add.reduceat(all_mask & green_bits, offsets[:-1]) if len(all_tok) else np.zeros(n_seq, np.int64)
    seq_scored = np.where(lengths > 0, seq_scored, 0)  # reduceat repeats the next value on empty slices
    seq_green = np.where(lengths > 0, seq_green, 0)
    z_all = z_score(seq_green, seq_scored, gamma)
    p_all = binomial_p_value(seq_green, seq_scored, gamma)

    rows = []
    for i in range(n_seq):
        a, b = offsets[i], offsets[i + 1]
        t, g = int(seq_scored[i]), int(seq_green[i])
        row = {
            "num_tokens_generated": int(lengths[i]),
            "num_tokens_scored": t,
            "num_green": g,
            "green_fraction": g / t if t else float("nan"),
            "z": float(z_all[i]),
            "p_value": float(p_all[i]),
            "p_value_normal": float(stats.norm.sf(z_all[i])) if t else 1.0,
            "z_at_T": z_prefix[a:b].tolist(),
            "green": green_col[a:b].tolist(),
            "weighted_score": None,
            "z_weighted": None,
            "p_value_weighted": None,
        }
        if weights is not None:
            sel = all_mask[a:b]
            w = wts[i][sel]
            gb = green_bits[a:b][sel]
            row.update(_weighted(w, gb, gamma, weight_levels))
        rows.append(row)
    return rows


def _weighted(w: np.ndarray, green: np.ndarray, gamma: float, levels: int) -> dict:
    """EWD's weighted score, z and exact null p-value for one sequence's scored tokens."""
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")
    s = float((w * green).sum())
    var = gamma * (1.0 - gamma) * float((w * w).sum())
    z = (s - gamma * float(w.sum())) / np.sqrt(var) if var > 0 else 0.0
    return {
        "weighted_score": s,
        "z_weighted": float(z),
        "p_value_weighted": weighted_null_p_value(w, green, gamma, levels),
    }
