"""A lean forward pass for small Qwen2/Llama causal LMs, on the Hugging Face model's own weights.

Why it exists
-------------
At the sizes this project trains (hidden 64-512, 2-8 layers) one forward of a Hugging Face
``Qwen2ForCausalLM`` is dominated by per-call Python overhead, not arithmetic: every call builds
a 4-D attention mask from the 2-D one, goes through output-capturing decorators, a ``DynamicCache``
object that grows by ``torch.cat`` at every decoding step, ``rotate_half`` per tensor and about
twenty small modules per layer. In the RL loop the decoder calls the model once per generated
token, so that overhead is paid 30-50 times per step. :class:`LeanLM` computes the same function
with plain tensor ops on the same ``nn.Parameter`` objects (it holds no weights of its own, so an
optimizer step on the HF model is seen at the next call):

* decoding (:meth:`LeanLM.start`, :meth:`LeanLM.step`) uses a preallocated key/value cache
  written in place and an additive key mask, and attends with two batched matmuls (SDPA's CPU
  kernel costs more than the arithmetic for a single query row); no mask building, cache object
  or module call per step. The caller can prefill each distinct prompt once and copy its cache
  to the rows that share it (:meth:`LeanLM.select_rows`);
* q/k/v and gate/up projections run as one matmul each (weights concatenated once per decoding
  call; inside autograd for scoring, where the concatenation is cheap and its backward just
  splits the gradient), and q and k are rotated together;
* scoring (:meth:`LeanLM.score`, with autograd) runs every matmul on the *distinct* tokens only
  (:class:`Packed`: no padding, and a prompt shared by several rows, e.g. the G samples of a
  group, once); only attention sees a ``[B, S]`` row layout, and the LM head runs only on the
  positions whose logits are asked for.

The math is Hugging Face's, step by step (RMSNorm in float32, RoPE with ``cat(freqs, freqs)``,
SDPA with scale ``head_dim ** -0.5``), so logits agree with the HF model to float32 rounding
(``tests/test_rollout.py`` checks 1e-5 on logits, identical greedy tokens and equal sampled
tokens). Autocast (bf16) applies to it as to the HF model. Anything it does not implement (other
architectures, RoPE scaling, sliding windows, attention dropout, soft-capping, Qwen3's q/k
norms, ...) is refused by :func:`supports`, and callers then use the HF forward. The models it
supports have no dropout, so it ignores train/eval mode.

Padding: real tokens never attend to padding. In the left-padded prefill a padding query attends
to itself only, so its hidden state stays finite; in scoring, row positions past a row's end are
masked keys whose query outputs are never read.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

_ARCHS = {"Qwen2ForCausalLM", "LlamaForCausalLM"}


def supports(model) -> bool:
    """Whether :class:`LeanLM` computes exactly what ``model``'s own forward computes."""
    cfg = getattr(model, "config", None)
    if cfg is None or type(model).__name__ not in _ARCHS:
        return False
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "mlp_bias", False):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1) or getattr(cfg, "attention_dropout", 0.0):
        return False
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return False
    return getattr(inner.rotary_emb, "attention_scaling", 1.0) == 1.0


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm / LlamaRMSNorm: normalise in float32, cast back, then scale."""
    dt = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF ``apply_rotary_pos_emb`` on one tensor: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LeanLM:
    """Lean forward of a supported HF causal LM (see the module docstring); shares its weights."""

    def __init__(self, model):
        if not supports(model):
            raise ValueError(f"LeanLM does not support {type(model).__name__}")
        self.model = model
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.n_layers = cfg.num_hidden_layers
        self.gqa = self.n_kv != self.n_heads

    # ------------------------------------------------------------------ weights
    def _layer(self, i: int):
        """(input norm, qkv weight, qkv bias, o weight, o bias, post norm, gate_up weight, down
        weight) of layer ``i``, read from the model now (so they are its current values)."""
        lyr = self.model.model.layers[i]
        a, m = lyr.self_attn, lyr.mlp
        w_qkv = torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
        b_qkv = torch.cat((a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)) if a.q_proj.bias is not None else None
        w_gu = torch.cat((m.gate_proj.weight, m.up_proj.weight))
        return (lyr.input_layernorm.weight, w_qkv, b_qkv, a.o_proj.weight, a.o_proj.bias,
                lyr.post_attention_layernorm.weight, w_gu, m.down_proj.weight)

    def _cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.model.model.rotary_emb.inv_freq
        freqs = pos[..., None].float() * inv_freq.to(device=pos.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _attend(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5,
                                              enable_gqa=self.gqa)

    def _mlp(self, h, w_gu, w_down):
        gu = F.linear(h, w_gu)
        gate, up = gu.chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w_down)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = _rms(h, self.model.model.norm.weight, self.eps)
        return self.model.lm_head(h)

    # ------------------------------------------------------------------ scoring (autograd)
    def score(self, pack: "Packed") -> torch.Tensor:
        """Logits ``[M, V]`` at ``pack.heads`` (differentiable w.r.t. the model's parameters).

        Every matmul runs on the ``N`` distinct tokens of the pack (no padding; a prompt shared by
        several rows is computed once); attention runs on the ``[B, S]`` row layout, gathered
        from the token table by ``pack.index``. Gradients of a shared prompt token sum over the
        rows that read it (the backward of the gather), which is exactly the gradient of the
        unshared computation.
        """
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        B, S = pack.index.shape
        # Positions past a row's end read token 0: as keys they are masked, as queries their
        # outputs are never read back, so they get no gradient either.
        index = pack.index.reshape(-1).clamp(max=pack.n_tokens - 1)
        x = self.model.model.embed_tokens(pack.tokens)  # [N, hidden]
        cos, sin = self._cos_sin(pack.positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        ar = torch.arange(S, device=index.device)
        mask = ((ar[None, :] <= ar[:, None])[None] & (ar[None, None, :] < pack.lengths[:, None, None]))[:, None]
        for i in range(self.n_layers):
            ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gu, w_down = self._layer(i)
            qkv = F.linear(_rms(x, ln1, self.eps), w_qkv, b_qkv).view(-1, H + 2 * Hkv, D)
            qk = _rope(qkv[:, : H + Hkv], cos, sin).to(qkv.dtype)  # q and k rotated together
            # index_select: its backward is an index_add, cheaper than indexing's index_put
            qk = qk.index_select(0, index).view(B, S, H + Hkv, D).transpose(1, 2)
            v = qkv[:, H + Hkv:].index_select(0, index).view(B, S, Hkv, D).transpose(1, 2)
            o = self._attend(qk[:, :H], qk[:, H:], v, mask)  # [B, H, S, D]
            o = o.transpose(1, 2).reshape(B * S, H * D).index_select(0, pack.home)
            x = x + F.linear(o, w_o, b_o)
            x = x + self._mlp(_rms(x, ln2, self.eps), w_gu, w_down)
        return self._head(x.index_select(0, pack.heads))

    # ------------------------------------------------------------------ decoding (no grad)
    def start(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
              max_new: int) -> tuple[torch.Tensor, dict]:
        """Prefill ``[B, L]`` left-padded prompts; returns the last position's logits ``[B, V]``
        and a decoding state with room for ``max_new`` more tokens per row."""
        B, L = ids.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        layers = [self._layer(i) for i in range(self.n_layers)]
        x = self.model.model.embed_tokens(ids)
        # cos/sin of every position this call can reach, looked up per step
        table = self._cos_sin(torch.arange(int(pos.max()) + max_new + 1, device=ids.device), x.dtype)
        cos, sin = table[0][pos][:, None], table[1][pos][:, None]  # [B, 1, L, D]
        ar = torch.arange(L, device=ids.device)
        valid = attn.bool()
        mask = ((ar[None, :] <= ar[:, None])[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool,
                                                                                   device=ids.device)[None]
        bias = torch.full((B, L + max_new), float("-inf"), device=ids.device)
        bias[:, :L].masked_fill_(valid, 0.0)
        cache = []
        for ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gu, w_down in layers:
            qkv = F.linear(_rms(x, ln1, self.eps), w_qkv, b_qkv).view(B, L, H + 2 * Hkv, D).transpose(1, 2)
            qk = _rope(qkv[:, : H + Hkv], cos, sin)
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
            # keys are cached transposed, [B, kv heads, D, capacity], so that the decoding step's
            # q @ K^T reads a contiguous-column slice
            kc = torch.empty((B, Hkv, D, L + max_new), dtype=k.dtype, device=k.device)
            vc = torch.empty((B, Hkv, L + max_new, D), dtype=v.dtype, device=v.device)
            kc[..., :L], vc[:, :, :L] = k.transpose(2, 3), v
            cache.append((kc, vc))
            o = self._attend(q, k, v, mask[:, None])
            x = x + F.linear(o.transpose(1, 2).reshape(B, L, H * D), w_o, b_o)
            x = x + self._mlp(_rms(x, ln2, self.eps), w_gu, w_down)
        state = {"layers": layers, "cache": cache, "bias": bias, "len": L, "rope": table}
        return self._head(x[:, -1]), state

    def step(self, state: dict, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``tokens``, ``pos``: ``[B]``); returns next-token logits ``[B, V]``.

        Attention of the single query is two batched matmuls over the cache prefix (cheaper than
        SDPA's kernel for one query row). The fed token becomes a valid key; feed any token
        (e.g. pad) to finished rows, whose logits the caller ignores."""
        B = tokens.shape[0]
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        G = H // Hkv
        t = state["len"]
        bias = state["bias"]
        bias[:, t] = 0.0
        mask = bias[:, None, None, : t + 1]  # [B, 1, 1, t+1], broadcast over kv heads and groups
        x = self.model.model.embed_tokens(tokens)  # [B, hidden]
        cos, sin = state["rope"][0][pos][:, None], state["rope"][1][pos][:, None]  # [B, 1, D]
        for (ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gu, w_down), (kc, vc) in zip(state["layers"], state["cache"]):
            qkv = F.linear(_rms(x, ln1, self.eps), w_qkv, b_qkv).view(B, H + 2 * Hkv, D)
            qk = _rope(qkv[:, : H + Hkv], cos, sin)  # q and k rotated together
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
            kc[..., t], vc[:, :, t] = k, v
            cap = vc.shape[2]
            keys_t = kc.view(B * Hkv, D, cap)[..., : t + 1]
            vals = vc.view(B * Hkv, cap, D)[:, : t + 1]
            s = torch.bmm(q.reshape(B * Hkv, G, D), keys_t).float()
            p = (s.view(B, Hkv, G, t + 1).mul_(D**-0.5) + mask).softmax(-1)
            o = torch.bmm(p.view(B * Hkv, G, t + 1).to(vals.dtype), vals).reshape(B, H * D)
            x = x + F.linear(o, w_o, b_o)
            x = x + self._mlp(_rms(x, ln2, self.eps), w_gu, w_down)
        state["len"] = t + 1
        return self._head(x)

    @staticmethod
    def select_rows(state: dict, keep: torch.Tensor) -> None:
        """Keep (or repeat) rows ``keep`` (indices) of a decoding state, in place."""
        state["cache"] = [(kc[keep], vc[keep]) for kc, vc in state["cache"]]
        state["bias"] = state["bias"][keep]


class Packed:
    """Prompt/completion pairs laid out for :meth:`LeanLM.score`.

    Row ``b`` is ``prompts[b] + completions[b]`` (no left padding: positions are ``0..len-1``,
    as the attention-mask cumsum gives for a left-padded row). The token table holds each distinct
    prompt once (rows with equal prompt token lists share it, e.g. the G samples of a group)
    followed by every row's completion tokens:

    * ``tokens``, ``positions``: ``[N]``;
    * ``index [B, S]``: token-table index of each row position (``N`` past the row's end);
    * ``lengths [B]``: real tokens per row; ``home [N]``: one flat ``b * S + s`` position that holds
      each token (to read the attention output back);
    * ``heads [M]``: token-table index of the position predicting each completion token, in
      row-major (row, completion position) order: the last prompt token, then completion tokens
      ``0 .. len-2``; ``targets [M]`` the completion tokens themselves.
    """

    def __init__(self, prompts: list[list[int]], completions: list[list[int]], device):
        uniq: dict[tuple, int] = {}
        first, row_u = [], []  # first row of each distinct prompt; distinct prompt of each row
        for b, p in enumerate(prompts):
            u = uniq.setdefault(tuple(p), len(first))
            if u == len(first):
                first.append(b)
            row_u.append(u)
        row_u, first = np.asarray(row_u), np.asarray(first)
        lp = np.asarray([len(p) for p in prompts])
        lc = np.asarray([len(c) for c in completions])
        lp_u = lp[first]
        n_prompt = int(lp_u.sum())
        p_start = np.concatenate(([0], np.cumsum(lp_u)[:-1])) if len(first) else np.zeros(0, np.int64)
        c_start = n_prompt + np.concatenate(([0], np.cumsum(lc)[:-1]))
        n = n_prompt + int(lc.sum())
        B, S = len(prompts), int((lp + lc).max())
        s_ = np.arange(S)[None, :]
        ps, lpb, lcb = p_start[row_u][:, None], lp[:, None], lc[:, None]
        index = np.where(s_ < lpb, ps + s_, np.where(s_ < lpb + lcb, c_start[:, None] + s_ - lpb, n))
        tokens = np.fromiter(itertools.chain.from_iterable(
            [prompts[b] for b in first] + list(completions)), dtype=np.int64, count=n)
        positions = np.concatenate((_ranges(lp_u), np.repeat(lp, lc) + _ranges(lc)))
        home = np.concatenate((np.repeat(first * S, lp_u) + _ranges(lp_u),
                               np.repeat(np.arange(B) * S + lp, lc) + _ranges(lc)))
        j = _ranges(lc)
        heads = np.repeat(c_start - 1, lc) + j
        heads = np.where(j == 0, np.repeat(p_start[row_u] + lp - 1, lc), heads)
        t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long, device=device)  # noqa: E731
        self.index, self.home, self.tokens, self.positions = t(index), t(home), t(tokens), t(positions)
        self.lengths = t(lp + lc)
        self.heads = t(heads)
        self.targets = self.tokens[n_prompt:]
        self.n_tokens = n


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(l) for l in lengths)``."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - starts
