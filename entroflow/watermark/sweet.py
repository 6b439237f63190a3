"""SWEET: KGW restricted to high-entropy positions, at embedding and at detection.

Lee, Hong, Ahn, Hong, Lee, Yun, Shin, Kim, "Who Wrote this Code? Watermarking for Code
Generation" (ACL 2024, arXiv 2305.15060), Alg. 1-2. With ``H_t`` the Shannon entropy of the raw
next-token distribution and threshold ``tau``::

    l'_k = l_k + delta 1[k in G_t] 1[H_t > tau]                      (embedding)
    z = (G_S - gamma |S|) / sqrt(|S| gamma (1 - gamma)),  S = {t : H_t > tau}   (detection)

Low-entropy steps (code syntax, forced continuations) are left alone, which is where a bias would
hurt quality and carry little signal. Embedding computes ``H_t`` from the scores the processor
receives, before its own bias (the reference: ``softmax(scores)`` at the top of
``SweetLogitsProcessor.__call__``). Detection is white-box: the model recomputes ``H_t`` by a
teacher-forced pass over prompt + text (:func:`entroflow.watermark.entropy.next_token_entropies`),
never trusting entropies stored by the generator, and only positions with ``H_t > tau`` are scored.
On the unattacked text the two agree up to floating-point differences between the incremental and
the full forward pass (a position with ``H_t`` within ~1e-5 of ``tau`` may flip).
Deviation from the reference: with nothing scored the reference returns ``z = -100``; here
``z = 0``, ``p = 1`` like every other scheme (no evidence either way).
Defaults: LTW's SWEET baseline uses ``tau = 1.2`` with gamma 0.25, delta 3; MarkLLM tau 0.9.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from entroflow.watermark.entropy import next_token_entropies, shannon_entropy
from entroflow.watermark.green import GreenList
from entroflow.watermark.kgw import GreenListWatermark


class SWEET(GreenListWatermark):
    """KGW whose bias and scoring apply only where the raw next-token entropy exceeds ``entropy_threshold``."""

    scheme = "sweet"

    def __init__(self, vocab_size: int, key: int, gamma: float = 0.25, delta: float = 2.0,
                 entropy_threshold: float = 1.2, seeding: str = "hash", context_width: int = 1):
        if seeding == "unigram":
            raise ValueError("SWEET is a KGW variant: seeding='unigram' is not supported")
        if not entropy_threshold >= 0:
            raise ValueError(f"entropy_threshold must be >= 0, got {entropy_threshold}")
        super().__init__(GreenList(vocab_size, gamma, key, seeding, context_width), delta)
        self.entropy_threshold = float(entropy_threshold)

    def embed_mask(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.BoolTensor:
        high = shannon_entropy(scores) > self.entropy_threshold  # raw: before this processor's bias
        return self.green_list.green_mask(input_ids, scores) & high[:, None]

    def scored_mask(self, entropies: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per sequence, per generated token: scored iff its entropy exceeds the threshold."""
        return [np.asarray(e) > self.entropy_threshold for e in entropies]

    def detect(self, prompt_ids, token_ids, *, model=None, entropies=None, ignore_repeated_ngrams: bool = True,
               eos_token_id: int | None = None, batch_size: int = 16, device="cpu", **kwargs) -> list[dict]:
        """Score only high-entropy positions. ``entropies`` (per generated token) are recomputed
        with ``model`` when not given; rows gain ``scored_fraction`` (scored / generated)."""
        if entropies is None:
            if model is None:
                raise ValueError("SWEET detection needs the model (or precomputed entropies)")
            entropies = next_token_entropies(model, prompt_ids, token_ids, batch_size=batch_size, device=device)
        rows = super().detect(prompt_ids, token_ids, ignore_repeated_ngrams=ignore_repeated_ngrams,
                              eos_token_id=eos_token_id, scored=self.scored_mask(entropies), **kwargs)
        for row in rows:
            n = row["num_tokens_generated"]
            row["scored_fraction"] = row["num_tokens_scored"] / n if n else 0.0
        return rows

    def config(self) -> dict:
        return {**super().config(), "entropy_threshold": self.entropy_threshold}
