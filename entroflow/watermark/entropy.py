"""The entropy service of the entropy-aware watermarks (SWEET, EWD, LTW).

Shannon entropy (nats) of the model's raw next-token distribution ``p = softmax(l)``::

    H(p) = -sum_k p_k log p_k

Spike entropy (Kirchenbauer et al. 2023, Def. 4.1 / Thm 4.2; the weight of EWD, Lu et al. 2024)::

    S(p) = sum_k p_k / (1 + z_mod p_k),   z_mod = (1 - gamma)(e^delta - 1) / (1 - gamma + gamma e^delta)

``S`` is in (1 / (1 + z_mod), 1]: 1 for a uniform distribution over a large vocabulary, close to
``1 / (1 + z_mod)`` for a point mass. Thm 4.2 bounds the expected green fraction of KGW text below
by ``gamma e^delta S / (1 + (e^delta - 1) gamma)``.

"Raw" means the logits as the model produced them: no watermark bias, no temperature, no top-k/p.
At generation time processors compute it from the incoming ``scores`` (:func:`entropy_and_spike`);
at detection :func:`next_token_entropies` / :func:`next_token_spike_entropies` recompute it with
one teacher-forced forward pass over prompt + completion, so the detector never trusts values
stored by the generator (which an attacker could edit).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def spike_modulus(gamma: float, delta: float) -> float:
    """``z_mod = (1 - gamma)(e^delta - 1) / (1 - gamma + gamma e^delta)``."""
    alpha = math.exp(delta)
    return (1.0 - gamma) * (alpha - 1.0) / (1.0 - gamma + gamma * alpha)


def spike_entropy(probs: torch.Tensor, gamma: float, delta: float) -> torch.Tensor:
    """``sum_k p_k / (1 + z_mod p_k)`` over the last axis of a probability tensor."""
    return (probs / (1.0 + spike_modulus(gamma, delta) * probs)).sum(-1)


def shannon_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(scores)`` over the last axis, in float32 at least;
    ``-inf`` scores (masked tokens) contribute 0, not NaN."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    return -(logp.exp() * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)


def entropy_and_spike(scores: torch.Tensor, gamma: float, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shannon and spike entropy of ``softmax(scores)`` for ``[B, V]`` scores (generation time)."""
    probs = torch.softmax(scores.float(), dim=-1)
    return shannon_entropy(scores), spike_entropy(probs, gamma, delta)


def next_token_entropies(model, prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]],
                         batch_size: int = 16, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Per sequence, per generated token: ``H`` (nats) of the raw distribution that produced it.

    Element ``j`` of sequence ``i`` comes from the model's logits after ``prompt + token_ids[:j]``.
    """
    return _per_generated_token(model, prompt_ids, token_ids, shannon_entropy, batch_size, device)


def next_token_spike_entropies(model, prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]],
                               gamma: float, delta: float, batch_size: int = 16,
                               device: str | torch.device = "cpu") -> list[np.ndarray]:
    """As :func:`next_token_entropies`, with the spike entropy of each distribution."""
    def stat(scores: torch.Tensor) -> torch.Tensor:
        return spike_entropy(torch.softmax(scores.float(), dim=-1), gamma, delta)

    return _per_generated_token(model, prompt_ids, token_ids, stat, batch_size, device)


@torch.inference_mode()
def _per_generated_token(model, prompt_ids, token_ids, stat: Callable[[torch.Tensor], torch.Tensor],
                         batch_size: int, device) -> list[np.ndarray]:
    """Apply ``stat`` ([N, V] logits -> [N]) to the logits that produced every generated token.

    Batches are left padded with position ids from the attention-mask cumsum (padding does not
    shift positions), sequences sorted by length to limit padding. With left padding every row's
    completion ends at the last column, so ``logits_to_keep = max_gen + 1`` keeps exactly the
    positions needed: generated token ``j`` of a row with ``n`` generated tokens is predicted by
    kept position ``K - n + j`` (``K = max_gen``). Memory is ``batch_size * K * V`` floats.
    """
    if len(prompt_ids) != len(token_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(token_ids)} sequences")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(token_ids)
    seqs = []
    for i, (p, t) in enumerate(zip(prompt_ids, token_ids)):
        if len(t) and not len(p):
            raise ValueError(f"sequence {i}: an empty prompt leaves no logits for the first token")
        seqs.append((i, list(p) + list(t), len(t)))
    todo = sorted((s for s in seqs if s[2] > 0), key=lambda s: len(s[1]))
    pad = 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        width = max(len(s[1]) for s in batch)
        k = max(s[2] for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, seq, _) in enumerate(batch):
            ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attn[r, width - len(seq) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                       logits_to_keep=k + 1, use_cache=False).logits[:, :k, :]  # the last column predicts past the end
        values = stat(logits.reshape(-1, logits.shape[-1])).view(len(batch), k).float().cpu().numpy()
        for r, (i, _, n) in enumerate(batch):
            out[i] = values[r, k - n :].astype(np.float32)
    return out
