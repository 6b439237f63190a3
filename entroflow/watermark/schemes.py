"""One scheme config (``watermark.scheme(name)`` of entroflow/config.py) -> its embedding processor
and its detector, so the stages never branch on the scheme themselves.

=============  =====================================  ==========================================
scheme         embedding (a logits processor)          detection
=============  =====================================  ==========================================
kgw            +delta on the context-seeded green list  z over (distinct) scored n-grams
unigram        +delta on one fixed green list           z over (distinct) tokens
sweet          kgw where H(next token) > threshold      z over positions the model finds uncertain
ewd            kgw                                      spike-entropy-weighted z
ltw_kgw        kgw where LTW's selector says so         z over positions the replayed selector picks
ltw_unigram    unigram where the selector says so       same, on the unigram list
=============  =====================================  ==========================================

White-box detectors (sweet, ewd, ltw_*) recompute the model's raw next-token entropies with one
forward pass over prompt + text (:mod:`entroflow.watermark.entropy`); none trusts anything
recorded at generation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from entroflow.watermark.green import GreenList


@dataclass
class LTWParts:
    """What LTW's processor and detector need besides the green list."""

    selector: object
    encoder: object
    k: int
    pad_id: int


def base_of(name: str) -> str:
    """The green-list scheme under ``name``: unigram for unigram and ltw_unigram, else kgw."""
    return "unigram" if name in ("unigram", "ltw_unigram") else "kgw"


def watermark(scheme: dict, vocab_size: int, key: int):
    """The scheme's green-list watermark object (processor + detector; LTW's base watermark)."""
    from entroflow.watermark.ewd import EWD
    from entroflow.watermark.kgw import KGW
    from entroflow.watermark.sweet import SWEET
    from entroflow.watermark.unigram import Unigram

    name, g, d = scheme["name"], scheme["gamma"], scheme["delta"]
    if base_of(name) == "unigram":
        return Unigram(vocab_size, key, gamma=g, delta=d)
    kw = {"seeding": scheme["seeding"], "context_width": scheme["context_width"]}
    if name == "sweet":
        return SWEET(vocab_size, key, gamma=g, delta=d, entropy_threshold=scheme["entropy_threshold"], **kw)
    if name == "ewd":
        return EWD(vocab_size, key, gamma=g, delta=d, **kw)
    return KGW(vocab_size, key, gamma=g, delta=d, **kw)


def green_list(scheme: dict, vocab_size: int, key: int) -> GreenList:
    return watermark(scheme, vocab_size, key).green_list


def processor(scheme: dict, vocab_size: int, key: int, ltw: LTWParts | None = None):
    """The logits processor that embeds ``scheme`` with ``key`` (applied before temperature)."""
    wm = watermark(scheme, vocab_size, key)
    if scheme["name"].startswith("ltw_"):
        from entroflow.watermark.ltw import LTWProcessor

        return LTWProcessor(wm.green_list, scheme["delta"], ltw.selector, ltw.encoder, k=ltw.k, pad_id=ltw.pad_id)
    return wm


def detect(scheme: dict, vocab_size: int, key: int, prompt_ids: list[list[int]], token_ids: list[list[int]], *,
           ignore_repeated_ngrams: bool, model=None, ltw: LTWParts | None = None, batch_size: int = 64,
           device: str | torch.device = "cpu") -> list[dict]:
    """Detection statistics per sequence (:func:`entroflow.watermark.detect.score_sequences` keys,
    plus ``scored_fraction``). ``score`` is the statistic to threshold: the weighted z for EWD,
    else z; ``score_p`` its exact null p-value."""
    wm = watermark(scheme, vocab_size, key)
    name = scheme["name"]
    if name.startswith("ltw_"):
        from entroflow.watermark.ltw import ltw_detect

        rows = ltw_detect(model, ltw.encoder, ltw.selector, wm.green_list, prompt_ids, token_ids, k=ltw.k,
                          ignore_repeated_ngrams=ignore_repeated_ngrams, batch_size=batch_size, device=device)
        for r in rows:
            r.setdefault("z_weighted", None)
            r.setdefault("p_value_weighted", None)
    elif name in ("sweet", "ewd"):
        rows = wm.detect(prompt_ids, token_ids, model=model, ignore_repeated_ngrams=ignore_repeated_ngrams,
                         batch_size=batch_size, device=device)
    else:
        rows = wm.detect(prompt_ids, token_ids, ignore_repeated_ngrams=ignore_repeated_ngrams)
    for r in rows:
        weighted = name == "ewd"
        r["score"] = r["z_weighted"] if weighted else r["z"]
        r["score_p"] = r["p_value_weighted"] if weighted else r["p_value"]
        r["scored_fraction"] = r["num_tokens_scored"] / max(1, r["num_tokens_generated"])
    return rows


def ltw_encoder(ltw_cfg: dict, tokenizer, vocab_size: int, device):
    """LTW's context encoder (MiniLM + the LM-to-WordPiece bridge table): the same for every seed,
    so a stage loads it once."""
    from entroflow.watermark import ltw

    return ltw.ContextEncoder.load(ltw_cfg["embedding_model"], tokenizer, vocab_size=vocab_size, device=device)


def ltw_parts(ltw_cfg: dict, selector_dir, seed: int, encoder, tokenizer, device) -> LTWParts:
    """The trained selector of ``seed`` (train_selector's output) with the shared encoder."""
    from entroflow.watermark import ltw

    selector = ltw.load_selector(selector_dir / f"selector_s{seed}", device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return LTWParts(selector=selector, encoder=encoder, k=ltw_cfg["k"], pad_id=pad)
