"""KGW: the soft green-list watermark of Kirchenbauer et al. 2023, as a logits processor + detector.

Kirchenbauer, Geiping, Wen, Katz, Miers, Goldstein, "A Watermark for Large Language Models"
(ICML 2023, arXiv 2301.10226). Alg. 2 (soft red list): at step ``t`` the previous ``h`` tokens and
the key seed a green list ``G_t`` of ``gamma V`` tokens (:class:`~entroflow.watermark.green.GreenList`)
and every green logit gets ``+delta``::

    l'_k = l_k + delta 1[k in G_t],   p'_k = exp(l'_k) / sum_i exp(l'_i)

Detection (§3, Eq. 2 / §4) counts green tokens: ``z = (G - gamma T) / sqrt(T gamma (1 - gamma))``,
with the exact ``Binomial(T, gamma)`` tail as p-value (:mod:`entroflow.watermark.detect`).
Thm 4.2: with spike entropy ``S`` of the next-token distributions (``entropy.spike_entropy``) the
expected green fraction is at least ``gamma e^delta S / (1 + (e^delta - 1) gamma)``: low-entropy
text carries a weak watermark, whatever delta.

Engine contract: the processor follows the HF convention ``proc(input_ids [B, L] left padded,
scores [B, V]) -> scores`` and is row-wise. The rollout engine (and transformers) applies logits
processors *before* temperature, top-k and top-p, so at sampling temperature ``T_s`` the effective
bias is ``delta / T_s`` (delta = 2 at T_s = 0.7 acts like 2.86), exactly as in the reference.
Under ``seeding="lefthash"``/``"selfhash"`` the processor is bit-compatible with transformers'
``WatermarkLogitsProcessor`` (same green lists; tested), under ``"hash"`` (default) it is the
device-independent keyed hash.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from entroflow.watermark.detect import score_sequences
from entroflow.watermark.green import GreenList


class GreenListWatermark:
    """Adds ``delta`` to the logits of a :class:`GreenList`'s green tokens, and detects it.

    The base of KGW, Unigram and SWEET: one green-list definition drives both directions.
    ``__call__`` is the logits processor; :meth:`detect` scores token ids (no model).
    """

    scheme = "green_list"

    def __init__(self, green_list: GreenList, delta: float):
        if not delta >= 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.green_list = green_list
        self.delta = float(delta)

    @property
    def gamma(self) -> float:
        return self.green_list.gamma

    def embed_mask(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.BoolTensor:
        """``[B, V]``: where ``delta`` is added this step (KGW: the green list; SWEET narrows it)."""
        return self.green_list.green_mask(input_ids, scores)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.embed_mask(input_ids, scores)
        return torch.where(mask, scores + self.delta, scores)

    def detect(
        self,
        prompt_ids: Sequence[Sequence[int]],
        token_ids: Sequence[Sequence[int]],
        *,
        ignore_repeated_ngrams: bool = True,
        eos_token_id: int | None = None,
        **kwargs,
    ) -> list[dict]:
        """Per-sequence statistics (:func:`entroflow.watermark.detect.score_sequences`)."""
        return score_sequences(self.green_list, prompt_ids, token_ids,
                               ignore_repeated_ngrams=ignore_repeated_ngrams,
                               eos_token_id=eos_token_id, **kwargs)

    def config(self) -> dict:
        """Loggable settings (the key only as its fingerprint)."""
        gl = self.green_list
        return {
            "scheme": self.scheme, "gamma": gl.gamma, "delta": self.delta, "seeding": gl.seeding,
            "context_width": gl.context_width, "vocab_size": gl.vocab_size,
            "key_fingerprint": gl.fingerprint(),
        }


class KGW(GreenListWatermark):
    """Kirchenbauer et al.'s soft watermark: ``+delta`` on the context-seeded green list.

    ``vocab_size``: the logits width. ``key``: the secret (required; 15485863 is the reference's
    public key, for reproduction only). ``seeding``/``context_width``: see :class:`GreenList`
    (reference guide: gamma 0.25, delta 2; selfhash h = 4 is the reference's robust choice).
    """

    scheme = "kgw"

    def __init__(self, vocab_size: int, key: int, gamma: float = 0.25, delta: float = 2.0,
                 seeding: str = "hash", context_width: int = 1):
        if seeding == "unigram":
            raise ValueError("seeding='unigram' is the Unigram scheme (entroflow.watermark.unigram)")
        super().__init__(GreenList(vocab_size, gamma, key, seeding, context_width), delta)
