"""Rollout engines: sample completions from a causal LM and record per-token log-probs and entropies.

Interface
---------
:class:`RolloutEngine` is the engine-agnostic protocol: ``generate(prompts, prompt_ids, params)``
returns one row of :data:`SCHEMA` per (prompt, sample). :class:`HFRolloutEngine` implements it
on a Hugging Face causal LM with its own batched decoding loop; a vLLM engine can implement the
same protocol, so experiment code never depends on which engine produced a table.

Sampling math
-------------
At every step the engine turns next-token logits ``z`` into a sampling distribution:

1. *Logits processors* (HF ``LogitsProcessor`` convention, ``proc(input_ids, scores)``) rewrite
   ``z`` first, e.g. a watermark bias or a constraint that masks tokens with ``-inf``.
2. *Temperature* ``T > 0`` divides the processed logits: ``z / T``.
3. *Top-k* (``k > 0``) keeps the ``k`` highest-scoring tokens (tokens tied with the k-th score
   are kept too) and gives the others probability 0.
4. *Top-p* (nucleus, ``p < 1``) keeps the smallest set of highest-probability tokens whose total
   probability under the top-k-filtered distribution reaches ``p`` (the definition of
   transformers' ``TopPLogitsWarper``; the most likely token is always kept).
5. The sampling distribution is ``q = softmax`` over the surviving support.

A token is drawn by the *Gumbel-max trick*: with ``g_v = -log(-log u_v)`` for i.i.d. uniforms
``u_v``, ``argmax_v (log q_v + g_v)`` is distributed exactly as ``q`` (the ``g_v`` are standard
Gumbel variables, and the argmax of Gumbel-perturbed log-probabilities lands on ``v`` with
probability exactly ``q_v``). The trick turns sampling into a deterministic function of the
noise, which is what makes completions reproducible and independent of batch composition (below).
``temperature == 0`` is greedy decoding: ``argmax`` of the processed logits.

Prompts
-------
A dataset prompt becomes the model's input through a :class:`PromptFormat`: ``template`` wraps
it (``{prompt}``: unchanged), and for an instruct model the text becomes the user message of the
tokenizer's chat template, with the generation prompt appended. The row's ``prompt`` column is
that exact input text and ``prompt_token_ids`` its exact tokens, which the RL trainer reuses as
they are (it never re-tokenises).

Per generated token the engine records:

* ``logprobs``: ``log q(token)``, the log-probability of the chosen token under the sampling
  distribution actually used (processors, temperature, top-k, top-p). For greedy decoding, where
  ``q`` is a point mass, it is the log-probability under the temperature-1 distribution after
  processors, ``log_softmax(processed logits)``, i.e. the model's own confidence.
* ``entropies``: the Shannon entropy ``H(q) = -sum_v q_v log q_v`` in nats of that same
  distribution: the spread of the distribution the token was drawn from, not of the raw model.

Why the decoding loop and the noise are hand-written
----------------------------------------------------
``model.generate`` draws from ``torch.multinomial`` with one global generator, so a sample
depends on the batch it happens to share and on the order of everything drawn before it, and it
does not return per-token entropies of the sampling distribution. Here every (prompt, sample)
gets its own 63-bit seed :func:`sample_seed` and the uniform for (seed ``s``, step ``t``, vocab
index ``v``) is a pure function ``u = hash(s, t, v)`` (:func:`uniform_noise`). torch has no
per-row random generator that can be used vectorised over a batch (a ``torch.Generator`` per row
would mean one kernel launch per row per step), so the hash is a splitmix64-style mixer written
with int64 tensor arithmetic: wrapping multiplication and xor-shifts computed for the whole
``[B, V]`` grid in a few ops. The completion of (prompt, sample) is therefore the same whether it
is generated alone or in a batch of 256, in any prompt order and with any ``batch_size``, up to
floating-point differences in the forward pass between batch shapes (which only matter on
near-exact ties of the perturbed scores).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch
from transformers import DynamicCache

from entroflow import lean_lm

SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),  # sample_seed(params.seed, prompt_id, sample_idx)
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),  # exactly what the model read (incl. <bos> or chat markup)
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),  # generated, incl. <eos> if emitted
        pa.field("text", pa.string(), nullable=False),  # decoded token_ids, special tokens skipped
        pa.field("logprobs", pa.list_(pa.float32()), nullable=False),  # log q(token) per token
        pa.field("entropies", pa.list_(pa.float32()), nullable=False),  # H(q) in nats per token
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),  # stop | length
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),
    ],
    metadata={"schema_version": "1", "table": "rollouts"},
)


@dataclass
class SamplingParams:
    """How to sample: ``n`` completions per prompt, decoding knobs and the base seed.

    ``temperature == 0`` means greedy (top-k/top-p then have no effect); ``top_k == 0`` and
    ``top_p == 1`` switch those filters off. With ``stop_on_eos=False`` every completion runs to
    ``max_new_tokens``. ``seed`` is the base seed from which :func:`sample_seed` derives each
    completion's own seed.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    seed: int = 0
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class PromptFormat:
    """How a dataset prompt becomes the model's input text and tokens.

    ``text = template.format(prompt=prompt)``; with ``chat`` that text is the user message (after
    a ``system`` message when one is given; None keeps the template's own default) and the
    tokenizer's chat template renders the conversation with the generation prompt. A rendered
    chat prompt already holds its special tokens, so it is tokenised with
    ``add_special_tokens=False``, exactly as ``apply_chat_template(tokenize=True)`` does (a
    tokenizer that also adds ``<bos>`` would otherwise double it); a plain prompt gets the
    tokenizer's own special tokens (the tiny world's ``<bos>``).
    """

    template: str = "{prompt}"
    chat: bool = False
    system: str | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer, chat_template: str = "auto", system: str | None = None,
                      template: str = "{prompt}") -> "PromptFormat":
        """``chat_template``: ``auto`` (on when the tokenizer has one), ``on`` or ``off``."""
        has = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "on" and not has:
            raise ValueError("prompt.chat_template is 'on' but the model's tokenizer has no chat template")
        return cls(template=template, chat=has if chat_template == "auto" else chat_template == "on", system=system)

    def render(self, tokenizer, prompt: str) -> str:
        text = self.template.format(prompt=prompt)
        if not self.chat:
            return text
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages.append({"role": "user", "content": text})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, tokenizer, texts: list[str]) -> list[list[int]]:
        return tokenizer(list(texts), add_special_tokens=not self.chat)["input_ids"] if texts else []


@runtime_checkable
class RolloutEngine(Protocol):
    """What every rollout engine (HF now, vLLM later) provides.

    ``generate`` returns a :data:`SCHEMA` table with ``len(prompts) * params.n`` rows ordered by
    (input prompt order, sample_idx). ``logits_processors`` follow the HF ``LogitsProcessor``
    convention and must be row-wise (a row's output depends only on its own ``input_ids`` row
    and ``scores`` row), because engines batch rows freely. A processor that keeps per-row state
    across steps (LTW's running watermark ratio) implements ``reset(batch_size)``, called before
    the first step of every batch, and ``select_rows(keep)``, called with the kept row indices
    (a LongTensor) when the engine drops finished rows. ``progress`` is called with the
    number of completions finished since its last call (``tqdm.update`` fits).
    ``tokens_per_second`` is the generated-token rate of the last ``generate`` call.
    """

    tokens_per_second: float

    def generate(
        self,
        prompts: list[str],
        prompt_ids: list[str],
        params: SamplingParams,
        logits_processors: list | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> pa.Table: ...


class SuppressTokens:
    """Logits processor that gives ``token_ids`` zero probability (``-inf``) at every step: with
    the EOS id and ``stop_on_eos=False``, every completion runs to ``max_new_tokens`` (the
    watermark flow's fixed-length texts; LTW and KGW set a minimum length the same way). Put it
    after a watermark processor, so the watermark sees the model's own distribution."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = [int(t) for t in token_ids if t is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.token_ids:
            return scores
        scores = scores.clone()
        scores[:, self.token_ids] = float("-inf")
        return scores


def sample_seed(base_seed: int, prompt_id: str, sample_idx: int) -> int:
    """Stable 63-bit seed of one (prompt, sample): blake2b of the three fields.

    Python's ``hash()`` is salted per process for strings, so it would break reproducibility
    across runs; 63 bits keep the value a non-negative int64 (arrow column, torch tensor).
    """
    key = f"{int(base_seed)}\x1f{prompt_id}\x1f{int(sample_idx)}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _i64(x: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits (torch has no uint64 math)."""
    return x - (1 << 64) if x >= 1 << 63 else x


_NOISE_BUDGET = 1 << 22  # largest B * T * V whose noise the decoder precomputes (32 MiB of float64)
_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)
_STEP_SALT = _i64(0xD1B54A32D192ED03)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic and copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors; int64 multiplication wraps mod 2**64 like uint64."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniform_noise(seeds: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """Uniforms ``u[b, v] = hash(seeds[b], step, v)`` in the open interval (0, 1), float64.

    The (seed, step) pair is mixed into a stream key, then vocab index ``v`` reads element
    ``v + 1`` of that key's splitmix64 stream (``mix(key + (v + 1) * golden)``). The top 53 bits
    become a double, offset by half a unit so that ``u`` is never 0 or 1 (``log`` stays finite).
    """
    seeds = seeds.to(torch.int64)
    # The step term is computed as a tensor so that it wraps mod 2**64 like the rest.
    step_term = torch.full_like(seeds, int(step)) * _STEP_SALT + _GOLDEN
    key = _mix64(_mix64(seeds + _GOLDEN) ^ step_term)
    v = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=seeds.device)
    bits = _mix64(key[:, None] + v[None, :] * _GOLDEN)
    return (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53


def gumbel_noise(seeds: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)`` of :func:`uniform_noise`, shape ``[B, V]``, float64."""
    return -torch.log(-torch.log(uniform_noise(seeds, step, vocab_size)))


def gumbel_noise_steps(seeds: torch.Tensor, n_steps: int, vocab_size: int) -> torch.Tensor:
    """:func:`gumbel_noise` of steps ``0 .. n_steps-1`` at once, ``[B, n_steps, V]`` float64:
    bit for bit ``gumbel_noise(seeds, t, V)`` at ``[:, t]`` (the same integer and float ops,
    broadcast over the step axis). The decoder uses it for small ``B * T * V`` to replace ~40
    tiny ops per decoding step by one batched computation."""
    seeds = seeds.to(torch.int64)
    steps = torch.arange(n_steps, dtype=torch.int64, device=seeds.device)
    step_term = torch.zeros_like(seeds)[:, None] + steps[None, :]
    step_term = step_term * _STEP_SALT + _GOLDEN
    key = _mix64(_mix64(seeds + _GOLDEN)[:, None] ^ step_term)  # [B, T]
    v = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=seeds.device)
    bits = _mix64(key[:, :, None] + v[None, None, :] * _GOLDEN)
    u = (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53
    return -torch.log(-torch.log(u))


def filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Set every score below the k-th largest of its row to ``-inf`` (ties with it survive)."""
    if k <= 0 or k >= scores.size(-1):
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def filter_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest highest-probability set with mass >= ``p`` (HF ``TopPLogitsWarper``).

    Sorting ascending, a token is dropped when the cumulative mass up to and including it is
    ``<= 1 - p``; the most likely token is always kept. The stable sort breaks ties by index so
    the result does not depend on the batch.
    """
    if p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False, stable=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= 1.0 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def _entropy(logq: torch.Tensor) -> torch.Tensor:
    """Entropy in nats from log-probs; ``-inf`` entries (zero mass) contribute 0, not NaN."""
    q = logq.exp()
    return -(q * torch.where(torch.isfinite(logq), logq, torch.zeros_like(logq))).sum(-1)


def select_tokens(
    scores: torch.Tensor, seeds: torch.Tensor, step: int, params: SamplingParams,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the next token of each row from processed logits; returns (tokens, logprobs, entropies).

    ``scores`` are the logits after logits processors. Greedy (T=0) takes the argmax and reports
    the temperature-1 distribution; otherwise temperature, top-k and top-p define ``q`` and the
    token is ``argmax(log q + Gumbel noise(seed, step))``. ``noise`` may pass that noise
    precomputed (``[B, V]`` float64, e.g. from :func:`gumbel_noise_steps`).
    """
    scores = scores.float()
    if params.temperature == 0:
        logq = torch.log_softmax(scores, dim=-1)
        tokens = scores.argmax(dim=-1)
    else:
        z = scores / params.temperature if params.temperature != 1 else scores  # x / 1.0 == x exactly
        z = filter_top_p(filter_top_k(z, params.top_k), params.top_p)
        logq = torch.log_softmax(z, dim=-1)
        g = noise if noise is not None else gumbel_noise(seeds, step, z.size(-1)).to(z.device)
        tokens = (logq.double() + g).argmax(dim=-1)
    chosen = logq.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, chosen, _entropy(logq)


def _decode_texts(tokenizer, seqs: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(seqs, skip_special_tokens=True)``; for a fast tokenizer without
    clean-up this is exactly its Rust backend's ``decode_batch`` (what ``decode`` calls), which
    skips the per-token Python conversion of ``batch_decode``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode_batch(seqs, skip_special_tokens=True)
    return tokenizer.batch_decode(seqs, skip_special_tokens=True)


def _list_column(values: Sequence[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
    """Arrow list column from per-row numpy arrays via one flat buffer plus offsets."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, type=dtype))


class HFRolloutEngine:
    """:class:`RolloutEngine` over a Hugging Face causal LM with a hand-written batched loop.

    Rows of a batch are (prompt, sample) pairs. Prompts are sorted by token length so a batch
    holds prompts of similar length (little left padding), and whole prompts are packed into a
    batch so the ``n`` samples of a prompt share one when ``n <= batch_size``. Prompts are
    left-padded, positions come from the attention-mask cumsum (so padding does not shift RoPE
    positions), the prompt is prefilled once and each later step feeds one token per row. A row
    stops at EOS or ``max_new_tokens``; a finished row is fed the pad id, and once a quarter of
    the rows are finished they are dropped from the batch and the cache, so compute follows the
    rows still decoding (``compactions`` counts these drops).

    Forward pass: for architectures :mod:`entroflow.lean_lm` supports (Qwen2, Llama) and
    ``lean=None`` (auto) or ``True``, decoding runs through :class:`entroflow.lean_lm.LeanLM` on
    the model's own weights: a preallocated KV cache, each distinct prompt of the batch prefilled
    once and its cache shared by its samples, and a few ops per layer and token (at small model
    sizes the Hugging Face forward's per-call overhead dominates decoding). Otherwise (or with
    ``lean=False``) it calls the Hugging Face model with a ``DynamicCache``. Both compute the same
    distribution; tests check equal tokens and log-probs.

    The model is moved to ``device`` and put in eval mode (in place). ``prompt_format`` turns
    dataset prompts into model input (default: unchanged, with the tokenizer's special tokens).
    """

    def __init__(self, model, tokenizer, batch_size: int = 256, device: str | torch.device = "cpu",
                 lean: bool | None = None, prompt_format: PromptFormat | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or PromptFormat()
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id
        self.tokens_per_second = 0.0
        self.compactions = 0
        if lean and not lean_lm.supports(self.model):
            raise ValueError(f"lean=True but entroflow.lean_lm does not support {type(self.model).__name__}")
        self.lean = lean_lm.LeanLM(self.model) if lean is not False and lean_lm.supports(self.model) else None

    def _batches(self, lengths: list[int], n: int) -> list[list[tuple[int, int]]]:
        """Group (prompt index, sample index) rows into batches, prompts sorted by length."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep input order
        rows = [(p, s) for p in order for s in range(n)]
        if n <= self.batch_size:
            step = (self.batch_size // n) * n  # whole prompts per batch
        else:
            step = self.batch_size
        return [rows[i : i + step] for i in range(0, len(rows), step)]

    def generate(
        self,
        prompts: list[str],
        prompt_ids: list[str],
        params: SamplingParams,
        logits_processors: list | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> pa.Table:
        """Sample ``params.n`` completions of every prompt; one :data:`SCHEMA` row each.

        ``prompts`` are dataset prompts; the engine's :class:`PromptFormat` renders them, and the
        rows hold the rendered text and its tokens. ``prompt_ids`` name the prompts and, with ``params.seed`` and the sample index, fix each
        completion's seed; equal ids give equal seeds. Rows come back in (prompt order,
        sample_idx) order whatever the internal batching.
        """
        if len(prompts) != len(prompt_ids):
            raise ValueError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
        t0 = time.perf_counter()
        prompts = [self.prompt_format.render(self.tokenizer, p) for p in prompts]
        encoded = self.prompt_format.encode(self.tokenizer, prompts)
        return self._generate(prompts, encoded, prompt_ids, params, logits_processors, progress, t0)

    def generate_from_tokens(
        self,
        prompt_token_ids: list[list[int]],
        prompt_ids: list[str],
        params: SamplingParams,
        logits_processors: list | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> pa.Table:
        """:meth:`generate` for prompts given as model input tokens, used as they are (no prompt
        format, no special tokens added): to continue a text from an exact token prefix, as the
        watermark flow's re-generation attack does. The ``prompt`` column is their decoding."""
        if len(prompt_token_ids) != len(prompt_ids):
            raise ValueError(f"{len(prompt_token_ids)} prompts but {len(prompt_ids)} prompt_ids")
        t0 = time.perf_counter()
        encoded = [list(map(int, ids)) for ids in prompt_token_ids]
        prompts = self.tokenizer.batch_decode(encoded, skip_special_tokens=False) if encoded else []
        return self._generate(prompts, encoded, prompt_ids, params, logits_processors, progress, t0)

    def _generate(self, prompts, encoded, prompt_ids, params, logits_processors, progress, t0) -> pa.Table:
        for pid, ids in zip(prompt_ids, encoded):
            if not ids:
                raise ValueError(f"prompt {pid!r} tokenises to no tokens")
        seeds = {
            (p, s): sample_seed(params.seed, prompt_ids[p], s)
            for p in range(len(prompts))
            for s in range(params.n)
        }
        results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, str]] = {}
        with torch.inference_mode():
            for batch in self._batches([len(e) for e in encoded], params.n):
                out = self._decode_batch(
                    [encoded[p] for p, _ in batch], [seeds[r] for r in batch], params,
                    logits_processors or [],
                )
                results.update(zip(batch, out))
                if progress is not None:
                    progress(len(batch))

        keys = [(p, s) for p in range(len(prompts)) for s in range(params.n)]
        token_ids = [results[k][0] for k in keys]
        texts = _decode_texts(self.tokenizer, [t.tolist() for t in token_ids])
        n_rows = len(keys)
        n_generated = sum(len(t) for t in token_ids)
        columns = {
            "prompt_id": pa.array([prompt_ids[p] for p, _ in keys], pa.string()),
            "sample_idx": pa.array([s for _, s in keys], pa.int32()),
            "seed": pa.array([seeds[k] for k in keys], pa.int64()),
            "prompt": pa.array([prompts[p] for p, _ in keys], pa.string()),
            "prompt_token_ids": _list_column(
                [np.asarray(encoded[p], dtype=np.int32) for p, _ in keys], pa.int32()
            ),
            "token_ids": _list_column(token_ids, pa.int32()),
            "text": pa.array(texts, pa.string()),
            "logprobs": _list_column([results[k][1] for k in keys], pa.float32()),
            "entropies": _list_column([results[k][2] for k in keys], pa.float32()),
            "n_tokens": pa.array([len(t) for t in token_ids], pa.int32()),
            "finish_reason": pa.array([results[k][3] for k in keys], pa.string()),
            "temperature": pa.array([params.temperature] * n_rows, pa.float32()),
            "top_p": pa.array([params.top_p] * n_rows, pa.float32()),
            "top_k": pa.array([params.top_k] * n_rows, pa.int32()),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)
        elapsed = time.perf_counter() - t0
        self.tokens_per_second = n_generated / elapsed if elapsed > 0 else 0.0
        return table

    def _forward(self, ids, attn, pos, cache) -> torch.Tensor:
        """Logits of the last position only (``logits_to_keep=1`` skips the rest of the LM head)."""
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def _decode_batch(
        self, prompt_tokens: list[list[int]], seeds: list[int], params: SamplingParams, processors: list
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
        """Decode one batch of rows; returns (token_ids, logprobs, entropies, finish_reason) per row."""
        dev = self.device
        B = len(prompt_tokens)
        L = max(len(t) for t in prompt_tokens)
        T = params.max_new_tokens
        # Prompt + generated tokens, left padded; processors see the prefix ``ids[:, :L + t]``.
        ids = torch.full((B, L + T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L + T), dtype=torch.long)
        for i, t in enumerate(prompt_tokens):
            ids[i, L - len(t) : L] = torch.tensor(t, dtype=torch.long)
            attn[i, L - len(t) : L] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        seed_t = torch.tensor(seeds, dtype=torch.int64, device=dev)
        pos = (attn[:, :L].cumsum(-1) - 1).clamp(min=0)
        next_pos = pos[:, -1] + 1

        # Per-row outputs live in buffers indexed by the row's original index, so dropping
        # finished rows from the working batch only changes ``alive`` (working -> original row).
        # A finished row is fed (and records) the pad id; its length is read off the buffer at
        # the end (up to and including its first EOS).
        tok_buf = torch.full((B, T), self.pad_id, dtype=torch.long, device=dev)
        lp_buf = torch.zeros((B, T), dtype=torch.float32, device=dev)
        ent_buf = torch.zeros((B, T), dtype=torch.float32, device=dev)
        alive = torch.arange(B, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)  # per working row
        stop = params.stop_on_eos and self.eos_id is not None

        if self.lean is not None:
            # Each distinct prompt is prefilled once; its samples share (copies of) its cache.
            uniq: dict[tuple, int] = {}
            first, inv = [], []
            for i, t in enumerate(prompt_tokens):
                if tuple(t) not in uniq:
                    uniq[tuple(t)] = len(first)
                    first.append(i)
                inv.append(uniq[tuple(t)])
            first, inv = torch.tensor(first, device=dev), torch.tensor(inv, device=dev)
            logits, state = self.lean.start(ids[first, :L], attn[first, :L], pos[first], T)
            if len(first) < B:
                lean_lm.LeanLM.select_rows(state, inv)
                logits = logits[inv]
        else:
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(ids[:, :L], attn[:, :L], pos, cache)
        # All steps' Gumbel noise in one batched computation when it is small (it is a pure
        # function of (seed, step, v), so precomputing it changes no sample).
        V = logits.shape[-1]
        noise = (gumbel_noise_steps(seed_t, T, V) if params.temperature > 0 and B * T * V <= _NOISE_BUDGET
                 else None)
        for proc in processors:  # stateful processors (see RolloutEngine) start a new batch
            if hasattr(proc, "reset"):
                proc.reset(B)
        steps = 0
        for step in range(T):
            scores = logits.float()
            for proc in processors:
                scores = proc(ids[:, : L + step], scores)
            tokens, lp, ent = select_tokens(scores, seed_t, step, params,
                                            noise=noise[:, step] if noise is not None else None)
            tokens = tokens.masked_fill(done, self.pad_id)
            tok_buf[alive, step] = tokens
            lp_buf[alive, step] = lp.float()
            ent_buf[alive, step] = ent.float()
            steps = step + 1
            if stop:
                done = done | (tokens == self.eos_id)
            n_done = int(done.sum())
            if n_done == done.numel() or step == T - 1:
                break
            ids[:, L + step] = tokens
            attn[:, L + step] = 1
            if n_done * 4 >= done.numel():
                keep = (~done).nonzero().squeeze(-1)
                if self.lean is not None:
                    lean_lm.LeanLM.select_rows(state, keep)
                else:
                    cache.batch_select_indices(keep)
                self.compactions += 1
                for proc in processors:
                    if hasattr(proc, "select_rows"):
                        proc.select_rows(keep)
                ids, attn, next_pos, seed_t = ids[keep], attn[keep], next_pos[keep], seed_t[keep]
                noise = noise[keep] if noise is not None else None
                tokens, alive, done = tokens[keep], alive[keep], done[keep]
            if self.lean is not None:
                logits = self.lean.step(state, tokens, next_pos)
            else:
                logits = self._forward(tokens[:, None], attn[:, : L + step + 1], next_pos[:, None], cache)
            next_pos = next_pos + 1

        tok_np = tok_buf[:, :steps].cpu().numpy()
        lp_np, ent_np = lp_buf[:, :steps].cpu().numpy(), ent_buf[:, :steps].cpu().numpy()
        if stop:
            is_eos = tok_np == self.eos_id
            stopped = is_eos.any(axis=1)
            n_gen = np.where(stopped, is_eos.argmax(axis=1) + 1, steps)
        else:
            stopped = np.zeros(B, dtype=bool)
            n_gen = np.full(B, steps)
        return [
            (tok_np[i, : n_gen[i]].astype(np.int32), lp_np[i, : n_gen[i]].copy(), ent_np[i, : n_gen[i]].copy(),
             "stop" if stopped[i] else "length")
            for i in range(B)
        ]
