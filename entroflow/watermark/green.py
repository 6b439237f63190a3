"""The one definition of a *green list*, shared by every green-list watermark's embedding and detection.

Kirchenbauer et al. 2023, "A Watermark for Large Language Models" (ICML'23), Alg. 2: before
token ``t`` is drawn, the previous ``h`` tokens and a secret key seed a pseudorandom partition of
the vocabulary into a *green* list ``G_t`` of size ``gamma * V`` and a red list. Embedding adds
``delta`` to the green logits; detection counts how many tokens landed in their green list. Both
sides must therefore agree bit for bit on "is token ``v`` green after context ``c``", which is why
the reference code derives both from one base class and why this module is the only place that
answers the question (:class:`GreenList`). Embedding asks for a ``[B, V]`` mask
(:meth:`GreenList.green_mask`), detection asks for a bit per ``(context, token)`` pair
(:meth:`GreenList.is_green`); a test checks they agree for every seeding.

Seedings
--------
``hash`` (project default, ``h >= 1``)
    A keyed, device-independent hash: ``v`` is green after ``c = (c_1..c_h)`` iff
    ``u(key, c, v) < gamma``, where ``u`` is the top 63 bits of a splitmix64 mix of the key, the
    context and ``v`` read as a fraction of ``2**63`` (so ``P(green) = floor(gamma 2**63) / 2**63``).
    The state ``s = mix(... mix(mix(key + g) ^ mix(c_1 + salt)) ... ^ mix(c_h + salt))`` is
    computed per context and ``v`` reads element ``v + 1`` of the splitmix64 stream of ``s``
    (``mix(s + (v + 1) g)``), all with wrapping int64 tensor arithmetic (the mixer of
    :mod:`entroflow.rollout`). Membership of a whole ``[B, V]`` grid costs a few integer ops per
    entry, needs no ``randperm`` or ``torch.Generator``, and is bit-identical on CPU and CUDA
    (§9.1 of the spec; ``torch.randperm`` gives different permutations on the two). The number of
    green tokens per list is ``Binomial(V, gamma)`` rather than exactly ``floor(gamma V)``; the
    detection null (each scored token green with probability ``gamma``, independently) is the
    same.
``lefthash`` (KGW ``simple_1``, transformers' default)
    Exactly transformers' ``WatermarkLogitsProcessor``: ``seed = key * prev_token`` (Python
    integers, no wrap-around), a CPU ``torch.Generator`` seeded with ``seed % (2**64 - 1)``,
    ``randperm(V)``, and the first ``int(V * gamma)`` ids are green. transformers reads only the
    *last* token whatever ``context_width`` is (``context_width`` only sets how many leading
    tokens detection skips); this mirrors it. The permutation is always drawn on the CPU so that
    lists do not depend on the device.
``selfhash`` (KGW Alg. 3, ``anchored_minhash`` with self-salt)
    Exactly transformers' selfhash: ``table = randperm(1_000_003)`` from a generator seeded with
    the key; for a candidate ``v`` the window is the last ``h - 1`` tokens followed by ``v``, and
    ``seed = min_x key * (table[x % 1_000_003] + 1) * (table[v % 1_000_003] + 1)`` over the window,
    in wrapping int64 arithmetic as transformers computes it; ``v`` is green iff it is among the
    first ``int(V * gamma)`` ids of ``randperm(V)`` seeded with ``seed % (2**64 - 1)``. At
    generation only the 40 highest-scoring candidates are tested (transformers and the reference
    stop there to bound the 40 permutations per row and step); the others are not green.
``unigram`` (Zhao et al. 2024, ``h = 0``)
    One fixed list (Unigram-Watermark ``gptwm.py``): a boolean vector with ``int(gamma V)`` Trues
    followed by Falses, shuffled by ``numpy.random.default_rng(seed)`` with ``seed`` the first 4
    bytes (little-endian) of ``sha256`` of the key as a little-endian int64. Same list as the
    authors' code for the same key.

Context lengths
---------------
A scored token needs ``context_len`` previous tokens: ``h`` for hash and lefthash (transformers'
detector skips ``h`` leading tokens for lefthash even though it reads one), ``h - 1`` for
selfhash (the candidate itself fills the last slot of the window) and 0 for unigram.
:meth:`GreenList.is_green` accepts a context of at least that many columns and reads the last
``context_len``; passing the ``h`` previous tokens always works.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from entroflow.rollout import _GOLDEN, _i64, _mix64, _shr

SEEDINGS = ("hash", "lefthash", "selfhash", "unigram")
SELFHASH_TABLE_SIZE = 1_000_003  # transformers' / the reference's fixed_table size (a prime)
SELFHASH_CANDIDATES = 40  # candidates tested per row at generation (transformers: range(40))
_CONTEXT_SALT = _i64(0xD6E8FEB86659FD93)  # separates context tokens from stream indices
_PERM_CACHE_SIZE = 1024
_HASH_TABLE_MAX = 1 << 24  # largest V * V whose hash mask (bool, 16 MiB) is precomputed for h = 1  # cached randperm green masks (lefthash: one per previous token)


@dataclass(frozen=True)
class GreenList:
    """Which tokens are green after a given context, for one key and green fraction.

    ``vocab_size`` is the logits width (``model.config.vocab_size`` / ``scores.shape[-1]``), not
    ``len(tokenizer)``: a permutation over another size gives other lists. ``gamma`` is the green
    fraction (0 < gamma < 1), ``key`` the secret (0 <= key < 2**63; log :meth:`fingerprint`, never
    the key), ``seeding`` one of :data:`SEEDINGS` and ``context_width`` the ``h`` previous tokens
    that seed a list (0 for unigram, >= 1 otherwise). See the module docstring for each seeding.
    """

    vocab_size: int
    gamma: float
    key: int
    seeding: str = "hash"
    context_width: int = 1

    def __post_init__(self) -> None:
        if int(self.vocab_size) < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if not 0.0 < float(self.gamma) < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if not 0 <= int(self.key) < 2**63:
            raise ValueError(f"key must be in [0, 2**63), got {self.key}")
        if self.seeding not in SEEDINGS:
            raise ValueError(f"seeding must be one of {SEEDINGS}, got {self.seeding!r}")
        if self.seeding == "unigram" and self.context_width != 0:
            raise ValueError(f"context_width must be 0 for seeding='unigram', got {self.context_width}")
        if self.seeding != "unigram" and self.context_width < 1:
            raise ValueError(f"context_width must be >= 1 for seeding={self.seeding!r}, got {self.context_width}")

    # --- properties ---------------------------------------------------------------------------

    @property
    def self_salt(self) -> bool:
        """selfhash: the candidate token itself is part of the seed."""
        return self.seeding == "selfhash"

    @property
    def context_len(self) -> int:
        """Previous tokens a scored token needs (detection skips the first ``context_len``)."""
        return self.context_width - int(self.self_salt)

    @property
    def greenlist_size(self) -> int:
        """``int(V * gamma)``: the exact list size of the randperm and unigram seedings."""
        return int(self.vocab_size * self.gamma)

    def fingerprint(self) -> str:
        """First 12 hex digits of sha256 of the key: identifies the key in logs without revealing it."""
        return hashlib.sha256(str(int(self.key)).encode()).hexdigest()[:12]

    # --- embedding: a [B, V] mask --------------------------------------------------------------

    def green_mask(self, input_ids: torch.LongTensor, scores: torch.Tensor | None = None) -> torch.BoolTensor:
        """``[B, L]`` prefixes (left padded; only the last ``h`` tokens of a row are read) ->
        ``[B, V]`` bool mask of the green candidates for the next token, on ``input_ids.device``.

        selfhash needs ``scores`` (``[B, V]``): only the top :data:`SELFHASH_CANDIDATES` by score
        are tested. As in transformers, a prefix shorter than ``context_width`` gets no green
        tokens (the step is not watermarked).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        device = input_ids.device
        if length < self.context_width:
            return torch.zeros(batch, self.vocab_size, dtype=torch.bool, device=device)
        if self.seeding == "unigram":
            return _unigram_mask(self).to(device).expand(batch, -1).clone()
        if self.seeding == "hash":
            if self.context_width == 1 and self.vocab_size**2 <= _HASH_TABLE_MAX:
                # Small vocabularies: the whole [V, V] table (same bits) once, then a row gather.
                return _hash_table(self, device)[input_ids[:, -1]]
            state = self._hash_state(input_ids[:, length - self.context_width :])
            vocab = torch.arange(self.vocab_size, dtype=torch.int64, device=device)
            return self._hash_green(state[:, None], vocab[None, :])
        if self.seeding == "lefthash":
            prev = input_ids[:, -1].tolist()
            return torch.stack([_randperm_mask(self, self._lefthash_seed(p)) for p in prev]).to(device)
        # selfhash: test the top candidates of every row, each with its own (context, candidate) seed.
        if scores is None:
            raise ValueError("seeding='selfhash' needs the scores to choose the candidates")
        n_cand = min(SELFHASH_CANDIDATES, self.vocab_size)
        # transformers sorts the whole row (not topk) and takes the first 40: same tie order.
        candidates = scores.sort(dim=-1, descending=True).indices[:, :n_cand].to(torch.int64)
        context = input_ids[:, length - self.context_len :].to(torch.int64).cpu()
        context = context.repeat_interleave(n_cand, dim=0)  # row b's context for each of its candidates
        passed = self.is_green(context, candidates.reshape(-1).cpu())
        mask = torch.zeros(batch, self.vocab_size, dtype=torch.bool, device=device)
        mask.scatter_(1, candidates, passed.view(batch, n_cand).to(device))
        return mask

    # --- detection: one bit per (context, token) -------------------------------------------------

    def is_green(self, context: torch.LongTensor, tokens: torch.LongTensor) -> torch.BoolTensor:
        """``context [N, k]`` (the tokens before each token, ``k >= context_len``; the last
        ``context_len`` columns are read), ``tokens [N]`` -> ``[N]`` bool, on ``tokens.device``.

        Vectorised for hash and unigram; lefthash and selfhash draw one permutation per distinct
        seed (lefthash: per distinct previous token, at most V) and cache them.
        """
        tokens = tokens.to(torch.int64)
        n = tokens.shape[0]
        need = self.context_len
        if need == 0:  # unigram, selfhash with h = 1: the context is not read (may be None)
            context = torch.zeros(n, 0, dtype=torch.int64, device=tokens.device)
        elif context.dim() != 2 or context.shape[0] != n or context.shape[1] < need:
            raise ValueError(f"context must be [N, >= {need}] for N={n} tokens, got {tuple(context.shape)}")
        else:
            context = context[:, context.shape[1] - need :].to(torch.int64)
        if self.seeding == "unigram":
            return _unigram_mask(self).to(tokens.device)[tokens]
        if self.seeding == "hash":
            return self._hash_green(self._hash_state(context.to(tokens.device)), tokens)
        if self.seeding == "lefthash":
            seeds = [self._lefthash_seed(p) for p in context[:, -1].tolist()]
        else:
            seeds = self._selfhash_seeds(context.cpu(), tokens.cpu()).tolist()
        return self._lookup_by_seed(seeds, tokens)

    # --- internals ----------------------------------------------------------------------------

    def _hash_state(self, context: torch.Tensor) -> torch.Tensor:
        """Per-row splitmix64 state from the key and the ``[N, h]`` context (wrapping int64)."""
        context = context.to(torch.int64)
        state = _mix64(torch.full((context.shape[0],), int(self.key), dtype=torch.int64, device=context.device) + _GOLDEN)
        for j in range(context.shape[1]):
            state = _mix64(state ^ _mix64(context[:, j] + _CONTEXT_SALT))
        return state

    def _hash_green(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Green bit of ``tokens`` under ``state`` (broadcast): top 63 bits of element ``v + 1``
        of the state's splitmix64 stream, compared with ``floor(gamma * 2**63)``."""
        bits = _mix64(state + (tokens + 1) * _GOLDEN)
        return _shr(bits, 1) < int(float(self.gamma) * 2.0**63)

    def _lefthash_seed(self, prev_token: int) -> int:
        # transformers: seed = hash_key * input_seq[-1].item() with Python ints, then % (2**64 - 1).
        return (int(self.key) * int(prev_token)) % (2**64 - 1)

    def _selfhash_seeds(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """transformers' anchored minhash, vectorised: int64 seeds (before ``% (2**64 - 1)``)."""
        table = _selfhash_table(int(self.key))
        window = torch.cat([context, tokens[:, None]], dim=1)  # [N, h]: context then the candidate
        a = table[window % SELFHASH_TABLE_SIZE] + 1
        b = table[tokens % SELFHASH_TABLE_SIZE] + 1
        # Same association order as transformers (key * a * b), so the int64 wrap-around matches.
        return (int(self.key) * a * b[:, None]).min(dim=1).values

    def _lookup_by_seed(self, seeds: list[int], tokens: torch.Tensor) -> torch.Tensor:
        """Green bit of each token under its (lefthash/selfhash) seed, one permutation per seed."""
        out = torch.zeros(len(seeds), dtype=torch.bool)
        positions: dict[int, list[int]] = {}
        for i, seed in enumerate(seeds):
            positions.setdefault(seed % (2**64 - 1), []).append(i)
        tok = tokens.cpu()
        for seed, rows in positions.items():
            idx = torch.tensor(rows, dtype=torch.int64)
            out[idx] = _randperm_mask(self, seed)[tok[idx]]
        return out.to(tokens.device)


@functools.lru_cache(maxsize=_PERM_CACHE_SIZE)
def _randperm_mask(green_list: GreenList, seed: int) -> torch.Tensor:
    """``[V]`` bool: the first ``int(V gamma)`` ids of a CPU ``randperm(V)`` seeded with ``seed``
    (already reduced mod ``2**64 - 1``), as transformers' ``_get_greenlist_ids``."""
    rng = torch.Generator(device="cpu")
    rng.manual_seed(seed % (2**64 - 1))
    perm = torch.randperm(green_list.vocab_size, generator=rng)
    mask = torch.zeros(green_list.vocab_size, dtype=torch.bool)
    mask[perm[: green_list.greenlist_size]] = True
    return mask


@functools.lru_cache(maxsize=4)
def _hash_table(green_list: GreenList, device: torch.device) -> torch.Tensor:
    """``[V, V]`` bool: row ``p`` is the hash green mask after previous token ``p`` (h = 1)."""
    vocab = torch.arange(green_list.vocab_size, dtype=torch.int64, device=device)
    return green_list._hash_green(green_list._hash_state(vocab[:, None])[:, None], vocab[None, :])


@functools.lru_cache(maxsize=4)
def _selfhash_table(key: int) -> torch.Tensor:
    """transformers' ``fixed_table``: CPU ``randperm(1_000_003)`` from a generator seeded with the key."""
    rng = torch.Generator(device="cpu")
    rng.manual_seed(key)
    return torch.randperm(SELFHASH_TABLE_SIZE, generator=rng)


@functools.lru_cache(maxsize=16)
def _unigram_mask(green_list: GreenList) -> torch.Tensor:
    """Zhao et al.'s fixed list (``gptwm.py``): ``int(gamma V)`` Trues then Falses, shuffled by
    ``default_rng(first 4 bytes, little-endian, of sha256(int64 key))``."""
    seed = int.from_bytes(hashlib.sha256(np.int64(green_list.key).tobytes()).digest()[:4], "little")
    n_green = int(green_list.gamma * green_list.vocab_size)
    mask = np.array([True] * n_green + [False] * (green_list.vocab_size - n_green))
    np.random.default_rng(seed).shuffle(mask)
    return torch.from_numpy(mask)
