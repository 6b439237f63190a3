"""Per-layer features of a causal LM, every layer from one forward pass, streamed to Parquet.

One forward pass with ``output_hidden_states=True`` gives L+1 hidden states ``[B, T, d]``
(layer 0: the embedding output; layer l: the output of block l; Hugging Face returns the last
one after the final norm). Each is pooled per text:

* ``mean``: the average over the text's tokens, the BOS token left out (its state is the same
  for every text, so it only shrinks the differences);
* ``last``: the state at the last token, the one a causal LM predicts the next token from.

**Logit lens** (the LM counterpart of the paper's per-layer MCM, reference §A1.5): for every
layer, the next-token distribution at the last prompt position,
``p_l = softmax(W_U · norm(h_l[last]))`` (the final layer's is the model's own prediction), is
reduced to the logit-based OOD scores of :func:`entroflow.ood.detectors.logit_scores` (MSP,
max-logit, energy, entropy). The same forward also gives the text's mean next-token NLL
(``nll``: the perplexity baseline of LM OOD detection). Nothing logit-sized is stored, except for
the ID rows the layer selection reads (``keep_probs``): their per-layer distributions on the
final layer's ``top_m`` most likely tokens plus one bucket for the rest of the vocabulary
(exact when the vocabulary has at most ``top_m`` tokens).

Rows are tokenised up front, sorted by length (less padding), and written batch by batch with a
``pyarrow.parquet.ParquetWriter``, so memory holds one batch, whatever the number of texts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from entroflow.ood.detectors import LOGIT_DETECTORS, logit_scores

POOLINGS = ("mean", "last")
ROW_COLUMNS = ("id", "split", "suite", "shift", "domain")


def feature_column(pooling: str, layer: int) -> str:
    return f"{pooling}/{layer}"


def logit_column(detector: str, layer: int) -> str:
    return f"logit/{detector}/{layer}"


def n_layers(model) -> int:
    """Number of transformer blocks L (hidden states are 0..L)."""
    return int(model.config.num_hidden_layers)


def _lens_parts(model):
    """The final norm and the unembedding of a decoder-only HF model (Qwen2, Llama, ...)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return body.norm, model.get_output_embeddings()


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, chunk: int = 1024) -> list[list[int]]:
    """Token ids with the tokenizer's own special tokens (our tokenizer prepends <bos>), the
    first ``max_tokens`` kept. Tokenised ``chunk`` texts at a time: a fast tokenizer's batch
    output (offsets, token strings) is many times the ids, and peak memory should not grow with
    the number of texts."""
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        ids = tokenizer(list(texts[i: i + chunk]), add_special_tokens=True)["input_ids"]
        out += [x[:max_tokens] if len(x) > 0 else [tokenizer.eos_token_id] for x in ids]
    return out


def _batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: the last token of row i is at lengths[i] - 1."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _pool_mask(ids: torch.Tensor, mask: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """The positions ``mean`` averages: the text's tokens without a leading BOS (kept when it is
    the only token)."""
    m = mask.clone().float()
    if bos_id is not None:
        lead = (ids[:, 0] == bos_id) & (mask.sum(1) > 1)
        m[lead, 0] = 0.0
    return m


@torch.no_grad()
def forward_layers(model, ids: torch.Tensor, mask: torch.Tensor,
                   logits: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """All L+1 hidden states and (``logits``) the logits of every position, from one forward
    pass; without logits the LM head is skipped (features only)."""
    if not logits:
        body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        out = body(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return list(out.hidden_states), None
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return list(out.hidden_states), out.logits


class _Stop(Exception):
    pass


@torch.no_grad()
def forward_to_layer(model, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
    """Hidden state ``layer`` from a forward pass that stops there (the baseline of one pass per
    layer: the benchmark and the one-pass test). A hook captures the output of block ``layer``
    (of the embedding for 0; of the final norm for L, as ``hidden_states`` has it) and stops the
    pass by raising."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    L = n_layers(model)
    module = body.embed_tokens if layer == 0 else body.norm if layer == L else body.layers[layer - 1]
    got: list[torch.Tensor] = []

    def hook(_mod, _inp, output):
        got.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def pool(h: torch.Tensor, pool_mask: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    h = h.float()
    if how == "mean":
        return (h * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdim=True).clamp_min(1.0)
    if how == "last":
        return h[torch.arange(h.shape[0], device=h.device), lengths - 1]
    raise ValueError(f"pooling: unknown '{how}' (poolings: {', '.join(POOLINGS)})")


def _truncated_probs(logits_by_layer: list[torch.Tensor], top_m: int) -> np.ndarray:
    """[B, L+1, M+1]: each layer's next-token probabilities on the final layer's top-M tokens,
    and the remaining mass in the last column."""
    final = logits_by_layer[-1].float()
    m = min(top_m, final.shape[-1])
    idx = final.topk(m, dim=-1).indices  # [B, M]
    out = []
    for lg in logits_by_layer:
        p = torch.softmax(lg.float(), dim=-1)
        kept = p.gather(1, idx)
        out.append(torch.cat([kept, (1.0 - kept.sum(1, keepdim=True)).clamp_min(0.0)], dim=1))
    return torch.stack(out, dim=1).cpu().numpy()


@torch.no_grad()
def extract(model, tokenizer, rows: list[dict], path: Path, poolings: Sequence[str] = POOLINGS,
            batch_size: int = 64, max_tokens: int = 128, keep_probs: Callable[[dict], bool] | None = None,
            top_m: int = 1024, progress: Callable[[int], None] | None = None) -> dict:
    """Write one Parquet row per text to ``path``: the row's ``id, split, suite, shift, domain``,
    ``n_tokens``, ``nll`` (mean next-token NLL of the text), one float32 vector per (pooling,
    layer) (column ``mean/3``), and the logit-lens scores per layer (``logit/msp/3``).

    Returns ``{"layers": L, "hidden_size": d, "rows": n, "tokens": total, "probs": array or
    None, "prob_ids": [row ids]}``: ``probs`` [n_keep, L+1, M+1] for the rows ``keep_probs``
    selects (see the module docstring)."""
    if not rows:
        raise ValueError("extract: no texts to embed")
    for how in poolings:
        if how not in POOLINGS:
            raise ValueError(f"pooling: unknown '{how}' (poolings: {', '.join(POOLINGS)})")
    device = next(model.parameters()).device
    L, d = n_layers(model), int(model.config.hidden_size)
    norm, unembed = _lens_parts(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = tokenize(tokenizer, [r["text"] for r in rows], max_tokens)
    order = sorted(range(len(rows)), key=lambda i: len(seqs[i]))

    fields = [pa.field("id", pa.string()), pa.field("split", pa.string()), pa.field("suite", pa.string()),
              pa.field("shift", pa.int32()), pa.field("domain", pa.string()), pa.field("n_tokens", pa.int32()),
              pa.field("nll", pa.float32())]
    fields += [pa.field(feature_column(p, l), pa.list_(pa.float32(), d)) for p in poolings for l in range(L + 1)]
    fields += [pa.field(logit_column(s, l), pa.float32()) for s in LOGIT_DETECTORS for l in range(L + 1)]
    schema = pa.schema(fields, metadata={"layers": str(L), "hidden_size": str(d),
                                         "poolings": ",".join(poolings), "table": "ood_features"})
    probs, prob_ids, tokens = [], [], 0
    tmp = path.with_suffix(".partial")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = _batch([seqs[i] for i in idx], pad_id, device)
            lengths = mask.sum(1)
            hidden, logits = forward_layers(model, ids, mask)
            pm = _pool_mask(ids, mask, tokenizer.bos_token_id)
            cols: dict[str, pa.Array] = {}
            for p in poolings:
                for l, h in enumerate(hidden):
                    v = pool(h, pm, lengths, p).cpu().numpy().astype(np.float32)
                    cols[feature_column(p, l)] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d)
            last = torch.arange(ids.shape[0], device=device), lengths - 1
            lens = [unembed(norm(h[last])) for h in hidden[:-1]] + [logits[last]]  # logit lens; final: the model's
            for l, lg in enumerate(lens):
                for s, v in logit_scores(lg).items():
                    cols[logit_column(s, l)] = pa.array(v.cpu().numpy().astype(np.float32))
            # Mean NLL of each text's tokens after the first (the perplexity baseline).
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            tok_mask = mask[:, 1:].float()
            nll = -(logp * tok_mask).sum(1) / tok_mask.sum(1).clamp_min(1.0)
            meta = [rows[i] for i in idx]
            batch = {"id": [r["id"] for r in meta], "split": [r["split"] for r in meta],
                     "suite": [r["suite"] for r in meta], "shift": [int(r["shift"]) for r in meta],
                     "domain": [r["domain"] for r in meta], "n_tokens": lengths.cpu().numpy().astype(np.int32),
                     "nll": nll.cpu().numpy().astype(np.float32), **cols}
            writer.write_table(pa.table(batch, schema=schema))
            tokens += int(lengths.sum())
            if keep_probs is not None:
                keep = [j for j, r in enumerate(meta) if keep_probs(r)]
                if keep:
                    probs.append(_truncated_probs([lg[keep] for lg in lens], top_m))
                    prob_ids += [meta[j]["id"] for j in keep]
            if progress is not None:
                progress(len(idx))
    tmp.replace(path)
    return {"layers": L, "hidden_size": d, "rows": len(rows), "tokens": tokens,
            "probs": np.concatenate(probs) if probs else None, "prob_ids": prob_ids}


def read_rows(path: Path) -> pa.Table:
    """The row columns (id, split, suite, shift, domain, n_tokens, nll) of a features file."""
    return pq.read_table(path, columns=[*ROW_COLUMNS, "n_tokens", "nll"])


def read_matrix(path: Path, column: str) -> np.ndarray:
    """One (pooling, layer) feature column as an [n, d] float32 matrix, in file row order."""
    col = pq.read_table(path, columns=[column]).column(0).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def file_layers(path: Path) -> tuple[int, list[str]]:
    """(L, poolings) of a features file, from its schema metadata."""
    meta = pq.read_schema(path).metadata
    return int(meta[b"layers"]), meta[b"poolings"].decode().split(",")
