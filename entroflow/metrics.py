"""Evaluation metrics over greedy and sampled completions.

For one prompt with n sampled completions of which c are correct:

* pass@k, the probability that at least one of k samples drawn without replacement from the n is
  correct, by the unbiased estimator of Chen et al. 2021 (eq. 1)::

      pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)

  The product form avoids the huge binomials; it is 1 when n - c < k (every k-subset holds a
  correct sample).
* avg@k = (1/k) * sum_{j<k} correct_j, the accuracy of the first k samples (sample_idx order).
* maj@k = correct(mode of the first k answers): answers are clustered by semantic equivalence
  (:func:`entroflow.answers.cluster_answers`), unparsed answers (None, or a blank string) never
  vote, the largest cluster wins with ties going to the cluster that occurs first, and the vote
  is correct when the winning cluster's first answer is. No parsed answer at all counts as wrong.
  This is self-consistency (Wang et al. 2023).

Across prompts every metric is the unweighted mean over prompts. :func:`summarise` also reports

* greedy_acc = mean over greedy rows of correct; sampled_acc = mean over all sampled rows;
* parse_rate = fraction of all rows (greedy and sampled) whose answer is not null or blank (the
  same "no answer" as the vote's);
* mean_length = mean n_tokens over all rows;
* mean_token_entropy = sum_r n_r * H_r / sum_r n_r over all rows, where H_r is the row's mean
  per-token entropy, i.e. the mean entropy over all generated tokens (rows with no tokens or no
  entropy do not contribute);
* greedy_acc/level_<L>, sampled_acc/level_<L> and maj@<kmax>/level_<L>, the same metrics
  restricted to prompts of difficulty level L, with kmax the largest k evaluated, and
  prompts/level_<L>, how many prompts that level has.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from entroflow.answers import cluster_answers

# Columns summarise() reads from an evaluation table, with the types it expects.
EVAL_COLUMNS = {
    "prompt_id": pa.string(),
    "sample_idx": pa.int32(),
    "decoding": pa.string(),  # greedy | sampled
    "correct": pa.bool_(),
    "answer": pa.string(),  # null when no answer could be extracted
    "n_tokens": pa.int32(),
    "mean_entropy": pa.float64(),  # mean per-token entropy of the completion (nats)
    "level": pa.int32(),
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples with c correct (Chen et al. 2021, eq. 1)."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(
            f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}"
        )
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_k(correct_flags: Sequence[bool], k: int) -> float:
    """Mean correctness of the first k samples."""
    if not 1 <= k <= len(correct_flags):
        raise ValueError(f"avg_at_k needs 1 <= k <= {len(correct_flags)} samples; got k={k}")
    return float(np.mean(np.asarray(correct_flags[:k], dtype=np.float64)))


def majority_correct(
    answers: Sequence[str | None], correct_flags: Sequence[bool], fmt: str
) -> bool:
    """Whether the majority (most common clustered, non-None, non-blank) answer is correct.

    Ties go to the cluster whose first member comes first; cluster ids are numbered in order of
    first occurrence, so that is the smallest id among the largest clusters.
    """
    if len(answers) != len(correct_flags):
        raise ValueError(f"{len(answers)} answers but {len(correct_flags)} correctness flags")
    ids = cluster_answers(list(answers), fmt)
    counts = Counter(i for i in ids if i >= 0)
    if not counts:
        return False
    best = min(counts, key=lambda cid: (-counts[cid], cid))
    return bool(correct_flags[ids.index(best)])


def summarise(table: pa.Table, ks: list[int], fmt: str) -> dict[str, float]:
    """Flat dict of metrics over an evaluation table (one row per completion).

    ``ks`` larger than the smallest per-prompt sample count are skipped (pass@k and maj@k are
    undefined there); k < 1 is an error. A metric whose population is empty (no greedy rows, no
    sampled rows, no tokens) is NaN rather than missing, so the keys depend only on ``ks``, the
    sample counts and the levels present.
    """
    missing = [c for c in EVAL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"evaluation table lacks column(s) {', '.join(missing)}")
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1; got ks={ks}")
    col = {c: table.column(c).to_pylist() for c in EVAL_COLUMNS}
    bad = sorted({d for d in col["decoding"] if d not in ("greedy", "sampled")}, key=str)
    if bad:
        raise ValueError(f"decoding must be 'greedy' or 'sampled'; found {bad}")

    greedy_by_level: dict[int, list[bool]] = defaultdict(list)
    samples: dict[str, list[tuple[int, bool, str | None]]] = defaultdict(list)
    prompt_level: dict[str, int] = {}
    for pid, idx, dec, ok, ans, lvl in zip(
        col["prompt_id"], col["sample_idx"], col["decoding"], col["correct"], col["answer"],
        col["level"],
    ):
        ok = bool(ok)  # a null verdict means the completion could not be judged: wrong
        if dec == "greedy":
            greedy_by_level[lvl].append(ok)
        else:
            samples[pid].append((idx, ok, ans))
            prompt_level.setdefault(pid, lvl)
    for rows in samples.values():
        rows.sort(key=lambda r: r[0])

    greedy_all = [ok for oks in greedy_by_level.values() for ok in oks]
    sampled_all = [ok for rows in samples.values() for _, ok, _ in rows]
    out: dict[str, float] = {"greedy_acc": _mean(greedy_all), "sampled_acc": _mean(sampled_all)}

    n_min = min((len(rows) for rows in samples.values()), default=0)
    valid_ks = sorted({k for k in ks if k <= n_min})
    maj_by_prompt: dict[str, bool] = {}
    for k in valid_ks:
        avg, pas, maj = [], [], []
        for pid, rows in samples.items():
            flags = [ok for _, ok, _ in rows]
            avg.append(avg_at_k(flags, k))
            pas.append(pass_at_k(len(flags), sum(flags), k))
            maj_by_prompt[pid] = majority_correct([a for _, _, a in rows[:k]], flags[:k], fmt)
            maj.append(float(maj_by_prompt[pid]))
        out[f"avg@{k}"] = _mean(avg)
        out[f"pass@{k}"] = _mean(pas)
        out[f"maj@{k}"] = _mean(maj)
    # After the loop maj_by_prompt holds maj@kmax, the largest k evaluated.

    n_rows = table.num_rows
    parsed = sum(a is not None and a.strip() != "" for a in col["answer"])
    out["parse_rate"] = parsed / n_rows if n_rows else math.nan
    lengths = [n for n in col["n_tokens"] if n is not None]
    out["mean_length"] = _mean(lengths)
    weighted = [
        (n, h) for n, h in zip(col["n_tokens"], col["mean_entropy"])
        if n and h is not None and math.isfinite(h)
    ]
    total = sum(n for n, _ in weighted)
    out["mean_token_entropy"] = sum(n * h for n, h in weighted) / total if total else math.nan

    sampled_by_level: dict[int, list[bool]] = defaultdict(list)
    for pid, rows in samples.items():
        sampled_by_level[prompt_level[pid]].extend(ok for _, ok, _ in rows)
    for lvl in sorted(set(greedy_by_level) | set(sampled_by_level)):
        out[f"prompts/level_{lvl}"] = float(max(len(greedy_by_level[lvl]),
                                                sum(p == lvl for p in prompt_level.values())))
        out[f"greedy_acc/level_{lvl}"] = _mean(greedy_by_level[lvl])
        out[f"sampled_acc/level_{lvl}"] = _mean(sampled_by_level[lvl])
    if valid_ks:
        kmax = valid_ks[-1]
        maj_by_level: dict[int, list[bool]] = defaultdict(list)
        for pid, ok in maj_by_prompt.items():
            maj_by_level[prompt_level[pid]].append(ok)
        for lvl in sorted(maj_by_level):
            out[f"maj@{kmax}/level_{lvl}"] = _mean(maj_by_level[lvl])
    return out


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(np.asarray(xs, dtype=np.float64))) if len(xs) else math.nan
