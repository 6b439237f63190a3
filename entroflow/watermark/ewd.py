"""EWD: KGW embedding with entropy-weighted detection.

Lu, Liu, Yu, Li, King, "An Entropy-based Text Watermarking Detection Method" (ACL 2024,
arXiv 2403.13485). Embedding is unchanged KGW. Detection weights token ``t`` by the spike entropy
``SE_t`` of the model's raw next-token distribution (:mod:`entroflow.watermark.entropy`), so that
tokens the watermark could actually move count more::

    w_t = SE_t - min_{s scored} SE_s
    z_w = (sum_t w_t g_t - gamma sum_t w_t) / sqrt(gamma (1 - gamma) sum_t w_t^2)

The shift by the minimum is MarkLLM's implementation (``EWD._get_weight_from_entropy``: minimum
over the positions after the prefix); here the minimum is over the positions that have a full
seeding context, i.e. the positions scored before the repeated-n-gram filter. The p-value is the
exact null of the weighted sum (weights fixed by the model, green bits i.i.d. Bernoulli(gamma)
under H0; :mod:`entroflow.watermark.detect`), not the normal tail of ``z_w``. The unweighted KGW
statistics are reported alongside.
"""
from __future__ import annotations

import numpy as np

from entroflow.watermark.entropy import next_token_spike_entropies
from entroflow.watermark.green import GreenList
from entroflow.watermark.kgw import GreenListWatermark


class EWD(GreenListWatermark):
    """KGW generation; detection weighted by spike entropy (paper/MarkLLM defaults: gamma 0.5, delta 2)."""

    scheme = "ewd"

    def __init__(self, vocab_size: int, key: int, gamma: float = 0.25, delta: float = 2.0,
                 seeding: str = "hash", context_width: int = 1):
        if seeding == "unigram":
            raise ValueError("EWD is a KGW variant: seeding='unigram' is not supported")
        super().__init__(GreenList(vocab_size, gamma, key, seeding, context_width), delta)

    def weights(self, prompt_ids, token_ids, spike_entropies, eos_token_id: int | None = None) -> list[np.ndarray]:
        """``w_t = SE_t - min SE`` over each sequence's positions with a full seeding context
        (a stripped trailing EOS excluded); positions without context get weight 0."""
        need = self.green_list.context_len
        out = []
        for prompt, toks, se in zip(prompt_ids, token_ids, spike_entropies):
            se = np.asarray(se, dtype=np.float64)
            n = len(toks) - int(eos_token_id is not None and len(toks) > 0 and toks[-1] == eos_token_id)
            has_ctx = np.arange(len(se)) >= need - min(len(prompt), need)
            has_ctx[n:] = False
            w = np.zeros(len(se))
            if has_ctx.any():
                w[has_ctx] = se[has_ctx] - se[has_ctx].min()
            out.append(w)
        return out

    def detect(self, prompt_ids, token_ids, *, model=None, spike_entropies=None, ignore_repeated_ngrams: bool = True,
               eos_token_id: int | None = None, batch_size: int = 16, device="cpu", **kwargs) -> list[dict]:
        """Weighted detection; ``spike_entropies`` (per generated token) are recomputed with
        ``model`` when not given. ``z_weighted`` / ``p_value_weighted`` are EWD's statistics."""
        if spike_entropies is None:
            if model is None:
                raise ValueError("EWD detection needs the model (or precomputed spike entropies)")
            spike_entropies = next_token_spike_entropies(model, prompt_ids, token_ids, self.gamma, self.delta,
                                                         batch_size=batch_size, device=device)
        weights = self.weights(prompt_ids, token_ids, spike_entropies, eos_token_id)
        return super().detect(prompt_ids, token_ids, ignore_repeated_ngrams=ignore_repeated_ngrams,
                              eos_token_id=eos_token_id, weights=weights, **kwargs)
