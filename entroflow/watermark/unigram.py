"""Unigram watermark: KGW with one fixed green list (context width h = 0).

Zhao, Ananth, Li, Wang, "Provable Robust Watermarking for AI-Generated Text" (ICLR 2024,
arXiv 2306.17439), §3: a single green list ``G`` of ``gamma V`` tokens is drawn once from the key
and every step adds ``delta`` to its logits::

    l'_k = l_k + delta 1[k in G]

Because the list does not depend on the context, an edit changes the green status of the edited
tokens only (the basis of the paper's edit-robustness guarantee), at the price that the list can be estimated from token frequencies of enough watermarked
text. Detection is the same z-test as KGW over all generated tokens (h = 0: nothing is skipped);
``ignore_repeated_ngrams=True`` counts each distinct token once, which is the authors' ``unidetect``
(z over the set of unique tokens). The list is the authors' own construction (``gptwm.py``; see
:mod:`entroflow.watermark.green`), so the same key gives the same list as their code.
Processor placement (before temperature) as :mod:`entroflow.watermark.kgw`.
"""
from __future__ import annotations

from entroflow.watermark.green import GreenList
from entroflow.watermark.kgw import GreenListWatermark


class Unigram(GreenListWatermark):
    """``+delta`` on one key-derived green list (authors' defaults: gamma 0.5, delta 2)."""

    scheme = "unigram"

    def __init__(self, vocab_size: int, key: int, gamma: float = 0.5, delta: float = 2.0):
        super().__init__(GreenList(vocab_size, gamma, key, "unigram", 0), delta)
