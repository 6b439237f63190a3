"""Seeded attacks on a watermarked completion, on token ids.

Why token ids: the pipeline detects on the generated ids it stored, never on re-tokenised text,
because decode/encode round-trips are not always the identity (whitespace, merges; watermark.md
§1.7 item 5). An attack that went through text would mix its own effect with that drift. Every
attack here therefore maps ids to ids.

The attacks (watermark.md §5 "Attacks" and §9 item 7), each with a strength ``s`` in [0, 1]:

* ``delete`` — each token dropped independently with probability ``s`` (MarkLLM Word-D,
  ``WordDeletion(ratio)``; Word-D 0.3 in MarkLLM's robustness table).
* ``substitute`` — each token whose class has other members is replaced, with probability ``s``,
  by another member drawn uniformly (MarkLLM Word-S uses WordNet synonyms; the synthetic world
  has no synonyms, so the interchangeable words of a grammatical class play that role:
  :func:`grammar_classes`). Length is kept.
* ``insert`` — after each token, with probability ``s``, a token drawn uniformly from ``vocab``
  is inserted (expected length ``(1 + s) n``).
* ``copy_paste`` — dilution into unwatermarked text, the CP attack of the KGW reliability paper
  (Kirchenbauer et al. 2023, "On the Reliability of Watermarks for LLMs", CP-1-t%): ``s`` is the
  fraction of the output that comes from an unwatermarked text ``other``; one contiguous
  watermarked span of ``round((1 - s) n)`` tokens sits at a random position among
  ``n - round((1 - s) n)`` unwatermarked tokens, so the output keeps the original length ``n``.
* ``regenerate_suffix`` — keep the first ``round((1 - s) n)`` tokens and let an *unwatermarked*
  model write the rest. It needs a model, so this module only provides what to keep
  (:func:`regeneration_prefix`) and the flow batches the continuations through the rollout
  engine. It is a paraphrase stand-in: no local paraphraser (DIPPER is 11B) exists for the
  invented language, and replacing a suffix by fresh unwatermarked text is what a paraphrase
  does to the watermark signal of that part, without keeping its meaning.

Strength 0 is the identity: every attack returns an equal copy of its input and draws nothing
from ``rng`` (it returns before the first draw). Together with the per-(seed, attack, strength,
sample) generator of :func:`apply_attack`, an attack's output never depends on how many random
numbers another attack, strength or sample consumed.

Attacks treat every id alike, ``<eos>`` included: pass the completion without its trailing
``<eos>`` (the rollout table's ``token_ids`` keep it when it was emitted) if it should not be
deleted, substituted or diluted.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from entroflow.data import grammar


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    return s


def delete(token_ids: Sequence[int], strength: float, rng: np.random.Generator, **context) -> list[int]:
    """Drop each token independently with probability ``strength`` (MarkLLM Word-D).

    One uniform per token: token ``i`` is dropped iff ``u_i < strength``; strength 1 gives ``[]``.
    """
    s = _check_strength(strength)
    ids = list(token_ids)
    if s == 0.0 or not ids:
        return ids
    u = rng.random(len(ids))
    return [t for t, ui in zip(ids, u) if ui >= s]


def substitute(token_ids: Sequence[int], strength: float, rng: np.random.Generator, *,
               classes: dict[int, list[int]], **context) -> list[int]:
    """Replace each token that has interchangeable tokens, with probability ``strength``, by one
    of them drawn uniformly.

    ``classes`` maps a token id to the ids of its class; the token itself may or may not be
    listed (it is never its own replacement). Tokens absent from ``classes``, or whose class has
    no other member, are kept. The length never changes. One uniform per token decides, then one
    integer per replaced token picks the replacement.
    """
    s = _check_strength(strength)
    ids = list(token_ids)
    if s == 0.0 or not ids:
        return ids
    u = rng.random(len(ids))
    out = []
    for t, ui in zip(ids, u):
        others = [c for c in classes.get(t, ()) if c != t]
        if others and ui < s:
            t = others[int(rng.integers(len(others)))]
        out.append(t)
    return out


def insert(token_ids: Sequence[int], strength: float, rng: np.random.Generator, *,
           vocab: Sequence[int], **context) -> list[int]:
    """After each token, with probability ``strength``, insert a token drawn uniformly from
    ``vocab`` (pass the ids of real words, not special tokens). Expected added length: s·n."""
    s = _check_strength(strength)
    ids = list(token_ids)
    if s == 0.0 or not ids:
        return ids
    if len(vocab) == 0:
        raise ValueError("insert needs a non-empty vocab to draw inserted tokens from")
    u = rng.random(len(ids))
    picks = rng.integers(len(vocab), size=len(ids))  # drawn for every slot: fixed consumption
    out = []
    for t, ui, k in zip(ids, u, picks):
        out.append(t)
        if ui < s:
            out.append(int(vocab[int(k)]))
    return out


def copy_paste(token_ids: Sequence[int], strength: float, rng: np.random.Generator, *,
               other: Sequence[int], **context) -> list[int]:
    """Dilute the completion into unwatermarked text (KGW reliability paper, CP-1-t%).

    With ``n = len(token_ids)`` and ``k = round((1 - s) n)`` (Python's round: halves to even),
    the output is ``other[:j] + token_ids[a:a+k] + other[j:n-k]``: a contiguous watermarked span
    starting at a uniform ``a`` in ``[0, n-k]``, placed at a uniform position ``j`` in
    ``[0, n-k]`` of the first ``n - k`` unwatermarked tokens. The output has length ``n`` and the
    unwatermarked fraction is ``(n - k)/n ≈ s``; ``s = 1`` returns ``other[:n]``.

    If ``other`` has fewer than ``n - k`` tokens, all of it is used and the output is shorter
    than ``n`` (the watermarked span keeps its length ``k``; the realised dilution is then
    ``len(other)/(k + len(other))``, below ``s``). Pass an unwatermarked text at least as long
    as the completion (e.g. the unwatermarked sibling of the same prompt) to avoid that.
    """
    s = _check_strength(strength)
    ids = list(token_ids)
    if s == 0.0 or not ids:
        return ids
    n = len(ids)
    k = int(round((1.0 - s) * n))
    filler = list(other[: n - k])
    a = int(rng.integers(n - k + 1))
    j = int(rng.integers(len(filler) + 1))
    return filler[:j] + ids[a:a + k] + filler[j:]


def regeneration_prefix(token_ids: Sequence[int], strength: float) -> list[int]:
    """What the ``regenerate_suffix`` attack keeps: the first ``round((1 - s) n)`` tokens.

    The caller appends the prefix to the prompt and lets an unwatermarked model generate the
    rest (up to the original length ``n``), batched through the rollout engine; the attacked
    text is ``prefix + continuation``. A paraphrase stand-in (module docstring). Deterministic:
    no randomness here; the continuation's randomness is the rollout engine's seed.
    """
    s = _check_strength(strength)
    ids = list(token_ids)
    return ids[: int(round((1.0 - s) * len(ids)))]


Attack = Callable[..., list[int]]
ATTACKS: dict[str, Attack] = {
    "delete": delete,
    "substitute": substitute,
    "insert": insert,
    "copy_paste": copy_paste,
}
# Attacks that need a language model: the flow runs them (this module gives the prefix to keep).
MODEL_ATTACKS: dict[str, Callable[[Sequence[int], float], list[int]]] = {
    "regenerate_suffix": regeneration_prefix,
}


def attack_rng(seed: int, name: str, strength: float, sample_id: str | int) -> np.random.Generator:
    """The generator of one (seed, attack, strength, sample): ``numpy.random.default_rng`` seeded
    with the first 8 bytes of ``blake2b("seed|name|float(strength)|sample_id")``.

    A hash rather than Python's ``hash()`` (salted per process for strings) so outputs are the
    same across runs and machines; ``float(strength)`` makes ``1`` and ``1.0`` the same key.
    Each (sample, strength) gets independent noise, so an attack's output does not depend on
    which other samples or strengths were attacked, or in which order. Consequence: the noise is
    not shared across strengths (the tokens deleted at 0.3 are not a subset of those at 0.5).
    """
    key = f"{int(seed)}|{name}|{float(strength)!r}|{sample_id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def apply_attack(name: str, token_ids: Sequence[int], strength: float, seed: int,
                 sample_id: str | int = 0, **context) -> list[int]:
    """Run attack ``name`` on one completion with its own generator (:func:`attack_rng`).

    ``context`` carries what the attack needs (``classes``, ``vocab``, ``other``). Raises
    ValueError for an unknown name, and for ``regenerate_suffix``, which needs a model (use
    :func:`regeneration_prefix` and the rollout engine).
    """
    if name in MODEL_ATTACKS:
        raise ValueError(f"attack {name!r} needs a language model: keep regeneration_prefix(ids, "
                         "strength) and generate the continuation with the rollout engine")
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS) + sorted(MODEL_ATTACKS)}")
    _check_strength(strength)
    return ATTACKS[name](token_ids, strength, attack_rng(seed, name, strength, sample_id), **context)


# --- interchangeable words of the synthetic world -------------------------------------------------

def grammar_word_classes() -> dict[str, list[str]]:
    """Groups of words of the grammar that can replace each other anywhere one of them occurs,
    keeping the sentence grammatical (entroflow/data/grammar.py):

    * animate nouns, inanimate nouns (class agreement with the determiner and the preposition);
    * adjectives;
    * transitive verbs of one number, intransitive verbs of one number (number agreement with the
      subject; transitivity decides whether an object follows).

    Left out: determiners and pronouns (they fix number and class), prepositions (they fix the
    class of their noun phrase), phrasal verbs (each takes its own particle: ``droma ut``,
    ``velta oz``), and every part of a collocation (``mael dun``, ``tarbo sil``, ``zum parek``,
    ``tol vendi``), since swapping one part orphans the other.
    """
    groups = {
        "noun_an": list(grammar.NOUNS["an"]),
        "noun_in": list(grammar.NOUNS["in"]),
        "adjective": list(grammar.ADJECTIVES),
        "adverb": list(grammar.ADVERBS),
    }
    for n in grammar.NUMBERS:
        groups[f"verb_transitive_{n}"] = [grammar._verb(s, n) for s in grammar.TRANSITIVE_STEMS]
        groups[f"verb_intransitive_{n}"] = [grammar._verb(s, n) for s in grammar.INTRANSITIVE_STEMS]
    return groups


def _single_token(tokenizer, word: str, spaced: bool) -> int | None:
    """The id of ``word`` if it is one token (after ``"."`` and a space when ``spaced``, else at
    the start of a text), or None."""
    if not spaced:
        ids = tokenizer.encode(word, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None
    head = tokenizer.encode(".", add_special_tokens=False)
    ids = tokenizer.encode(". " + word, add_special_tokens=False)
    if ids[: len(head)] != head or len(ids) != len(head) + 1:
        return None
    return ids[-1]


def grammar_classes(tokenizer) -> dict[int, list[int]]:
    """Token id -> ids of the interchangeable words (:func:`grammar_word_classes`), for
    :func:`substitute`.

    The world's tokenizer (entroflow/tokenizer.py: Metaspace, no prepended space) gives a word
    inside a text a different token than the same word at the very start: ``"la brin"`` is
    ``['la', '▁brin']``. Generated completions are mostly the spaced form, but a completion can
    begin without a space. Both forms are classes of their own (a spaced token is only replaced
    by a spaced token, so the text keeps its spacing). A word takes part only in the forms that
    are a single token under this tokenizer (probed as ``". word"`` for the spaced form and
    ``"word"`` alone); a form with fewer than two single-token members yields no class. Each
    id's list includes the id itself.
    """
    out: dict[int, list[int]] = {}
    for words in grammar_word_classes().values():
        for spaced in (True, False):  # inside a text (after a space) | at the very start
            ids = [i for w in words if (i := _single_token(tokenizer, w, spaced)) is not None]
            ids = list(dict.fromkeys(ids))
            if len(ids) < 2:
                continue
            for i in ids:
                out[i] = ids
    return out


def expected_kept(n: int, strength: float) -> int:
    """Number of original tokens that ``copy_paste`` and ``regeneration_prefix`` keep."""
    return int(round((1.0 - _check_strength(strength)) * n))


__all__ = ["ATTACKS", "MODEL_ATTACKS", "apply_attack", "attack_rng", "copy_paste", "delete",
           "expected_kept", "grammar_classes", "grammar_word_classes", "insert",
           "regeneration_prefix", "substitute"]
