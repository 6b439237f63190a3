"""The tiny causal LM: a standard Hugging Face Qwen2 built from config and trained from scratch.

Pretraining is a plain nanoGPT-style loop: sample a batch of documents from the mixed corpus,
right-pad, cross-entropy on the positions the document's loss mask marks (arithmetic prompts are
not predicted, their completions and all text documents are), AdamW with linear warm-up and
cosine decay to ``min_lr_ratio`` of the peak, gradient clipping. The model is a stock
``Qwen2ForCausalLM`` so ``save_pretrained`` output loads in transformers and vLLM alike
(head_dim 32, a size vLLM's CPU attention supports).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from entroflow.tokenizer import BOS, EOS, PAD


@dataclass
class Document:
    ids: list[int]  # starts with <bos>, ends with <eos>
    loss_mask: list[int]  # 1 where the next-token loss counts (aligned with ids[1:])
    kind: str  # reasoning | corpus | kg


def build_model(vocab_size: int, hidden_size: int, layers: int, heads: int, intermediate_size: int,
                max_positions: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=BOS,
        eos_token_id=EOS, pad_token_id=PAD, rope_theta=10000.0, use_cache=True,
    )
    return Qwen2ForCausalLM(config)


def make_document(tokenizer, prompt: str, completion: str, kind: str, predict_prompt: bool) -> Document:
    """Tokenise ``prompt + completion`` with <bos> ... <eos>; mask the prompt out unless asked."""
    p = tokenizer.encode(prompt)  # includes <bos>
    c = tokenizer.encode(completion, add_special_tokens=False) + [EOS]
    ids = p + c
    mask = [1 if predict_prompt else 0] * (len(p) - 1) + [1] * len(c)
    return Document(ids, mask, kind)


def length_buckets(docs: list[Document]) -> list[list[Document]]:
    """Split a batch in two by length where that pads least (sum over buckets of size x longest
    document); one bucket when splitting saves under a quarter of the padded area."""
    docs = sorted(docs, key=lambda d: len(d.ids))
    n = len(docs)
    lens = [len(d.ids) for d in docs]
    whole = n * lens[-1]
    best, k = min((i * lens[i - 1] + (n - i) * lens[-1], i) for i in range(1, n + 1))
    if best > 0.75 * whole or k == n:
        return [docs]
    return [docs[:k], docs[k:]]


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def collate(docs: list[Document], max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and next-token targets (-100 where no loss)."""
    n = min(max_len, max(len(d.ids) for d in docs))
    ids = torch.full((len(docs), n), PAD, dtype=torch.long)
    attn = torch.zeros((len(docs), n), dtype=torch.long)
    labels = torch.full((len(docs), n), -100, dtype=torch.long)
    for i, d in enumerate(docs):
        L = min(n, len(d.ids))
        ids[i, :L] = torch.tensor(d.ids[:L])
        attn[i, :L] = 1
        tgt = torch.tensor(d.ids[1:L])
        m = torch.tensor(d.loss_mask[: L - 1], dtype=torch.bool)
        labels[i, : L - 1] = torch.where(m, tgt, torch.full_like(tgt, -100))
    return ids, attn, labels


def pretrain(
    model: Qwen2ForCausalLM,
    sources: dict[str, list[Document]],
    weights: dict[str, float],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.1,
    warmup: int = 100,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    on_step: Callable[[int, dict], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``steps`` optimizer steps; returns per-step metrics.

    Each batch element is drawn from a source chosen with probability proportional to its weight
    (sources without documents or with weight 0 are skipped), then uniformly within the source.
    """
    rng = random.Random(seed)
    names = [k for k in sorted(sources) if sources[k] and weights.get(k, 0) > 0]
    if not names:
        raise ValueError("pretraining has no documents: every source is empty or has weight 0")
    w = [weights[k] for k in names]
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas,
    )
    max_len = model.config.max_position_embeddings
    device = next(model.parameters()).device
    warmup = min(warmup, max(1, steps // 10))
    model.train()
    history = []
    for step in range(steps):
        t0 = time.perf_counter()
        cur_lr = lr_at(step, steps, lr, warmup, min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        picks = rng.choices(names, weights=w, k=batch_size)
        batch = [sources[k][rng.randrange(len(sources[k]))] for k in picks]
        # The batch's mean token loss, computed over length buckets: a few long documents (grammar
        # paragraphs) would otherwise pad every short one to their length. Summed losses divided
        # by the batch's target-token count give the same mean as one padded batch.
        groups = [collate(g, max_len) for g in length_buckets(batch)]
        n_tok = sum(int((labels != -100).sum()) for _, _, labels in groups)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for ids, attn, labels in groups:
            ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(input_ids=ids, attention_mask=attn).logits.float()
            part = torch.nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100, reduction="sum"
            ) / max(1, n_tok)
            if not torch.isfinite(part):
                raise FloatingPointError(f"pretraining loss is {part.item()} at step {step}")
            part.backward()
            loss_sum += part.item()
        loss = torch.tensor(loss_sum)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        rec = {"step": step, "loss": loss.item(), "lr": cur_lr, "grad_norm": float(gnorm),
               "tokens": n_tok, "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_step:
            on_step(step, rec)
    model.eval()
    return history


def resolve_model_dir(stage_dir: Path) -> Path:
    """The Hugging Face directory of a model stage's output (``pretrain_base``, ``import_model``,
    ``train_rl``): its ``model/``."""
    return stage_dir / "model"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def runtime_device(device: str = "auto") -> str:
    """``auto``: CUDA when this machine has it, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but this machine has no CUDA device")
    return device


def load_model(model_dir: Path, dtype: torch.dtype | str = torch.float32, device: str = "cpu"):
    """Load a causal LM and its tokenizer from a local directory (never from a hub)."""
    from transformers import AutoModelForCausalLM

    from entroflow.tokenizer import load as load_tokenizer

    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    model.to(runtime_device(device)).eval()
    return model, load_tokenizer(model_dir)
