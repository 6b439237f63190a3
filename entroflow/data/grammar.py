"""A probabilistic context-free grammar over invented words: the text task of the synthetic world.

Why a grammar: entropy-centred methods (token-entropy watermarks, entropy-guided decoding, OOD
scores) need text whose *true* next-word uncertainty is known. Sentences here are sampled one word
at a time from the grammar itself, so every word comes with the entropy (in nats) of the grammar's
own next-word distribution at that point: ``branch_entropy``. A model that has learned the grammar
perfectly has exactly this predictive entropy; forced words have 0.0.

Vocabulary (88 lowercase pseudo-words plus ``.`` and ``,`` as their own tokens, all separated by
single spaces):

* determiners ``la``/``las`` (animate, singular/plural) and ``ko``/``kos`` (inanimate, sg/pl);
* 11 animate nouns (``brin`` ... ``klid`` and the collocation ``mael dun``), 11 inanimate nouns
  (``tarn`` ... ``cavo`` and the collocation ``tarbo sil``), 10 adjectives;
* verbs as stem + number suffix, ``-a`` singular and ``-u`` plural: 8 transitive (``greva``/
  ``grevu``), 2 phrasal transitive verbs that always take their particle (``droma ut``,
  ``velta oz``) and 6 intransitive (``flima``/``flimu``);
* 8 adverbs, two of them fixed idioms (``zum parek``, ``tol vendi``);
* prepositions ``vo`` (takes an animate noun phrase) and ``en`` (takes an inanimate one),
  conjunctions ``po``/``fen``, pronouns ``se`` (sg) / ``sen`` (pl).

Grammar (``?`` = optional; probabilities in :data:`RULES`)::

    S      -> Clause .  |  Clause , Conj Tail .
    Clause -> Subj_sg VP_sg  |  Subj_pl VP_pl          # number chosen once, by the determiner
    NP     -> Det_{n,c} Adj? N_c PP?                   # the determiner fixes number n and class c
    PP     -> vo Det_an Adj? N_an  |  en Det_in Adj? N_in   # one level only: bounded length
    VP_n   -> Vt_n NP Adv?  |  Vp_n Particle NP Adv?  |  Vi_n Adv?
    Tail   -> Pron_n Vi_n Adv?

Entropy profile, which is the point of the design:

* **high entropy** (about 1.5-3.1 nats): the word after a determiner (an adjective or any of 11
  nouns of the class), the verb (a dozen stems of the right number), and the slot after a
  completed noun phrase where a prepositional phrase, the verb or an adverb, the coordination
  ``,`` and the final ``.`` compete;
* **medium to low, non-zero**: the first word (4 determiners, ln 4 = 1.39), the determiner after
  ``vo``/``en`` (class fixed, only number free: ln 2), the conjunction and the pronoun (ln 2),
  ``,`` versus ``.`` after a clause-final adverb (0.61);
* **zero (forced)**: the second word of every collocation (``dun``, ``sil``, ``ut``, ``oz``,
  ``parek``, ``vendi``) and the ``.`` after the adverb of a coordinated tail clause (about 6 % of
  all tokens);
* **agreement**: the verb's suffix is forced by the subject determiner, across an intervening
  prepositional phrase (``la brin vo las garu greva ...``: singular ``greva`` although the nearest
  noun phrase is plural); the wrong-number verb form has probability exactly 0.

The grammar is unambiguous with one word of look-ahead, so the generator's state after a prefix is
a function of the prefix, and ``branch_entropy`` equals the entropy of the next word *given the
prefix*: the best any language model can do. Recursion is bounded (a prepositional phrase holds no
further phrase), so every sentence has 4 to 29 tokens, 9-10 on average.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | test
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_words", pa.int32(), nullable=False),  # tokens incl. "." and ","
        # per token: entropy (nats) of the grammar's next-word distribution that produced it
        pa.field("branch_entropy", pa.list_(pa.float32()), nullable=False),
    ],
    metadata={"schema_version": "1", "table": "grammar"},
)

NUMBERS = ("sg", "pl")
CLASSES = ("an", "in")  # animate | inanimate noun class

DETERMINERS: dict[str, tuple[str, str]] = {  # word -> (number, class)
    "la": ("sg", "an"), "las": ("pl", "an"), "ko": ("sg", "in"), "kos": ("pl", "in"),
}
NOUNS: dict[str, list[str]] = {
    "an": ["brin", "toval", "mesk", "garu", "pelim", "zodak", "funi", "rask", "vemo", "klid"],
    "in": ["tarn", "solep", "wiko", "drem", "hask", "nubo", "plet", "ormi", "zeft", "cavo"],
}
# Collocation nouns: the first word is always followed by the second (like "kith and kin").
NOUN_COLLOCATIONS: dict[str, tuple[str, str]] = {"an": ("mael", "dun"), "in": ("tarbo", "sil")}
ADJECTIVES = ["lorn", "bexi", "sudra", "fenk", "ilva", "mopi", "rudd", "quen", "yalo", "tisk"]
TRANSITIVE_STEMS = ["grev", "sotl", "malk", "pind", "hurv", "jesk", "bold", "nakt"]
PHRASAL_STEMS = {"drom": "ut", "velt": "oz"}  # stem -> its obligatory particle
INTRANSITIVE_STEMS = ["flim", "spor", "wend", "kesh", "lumb", "trav"]
VERB_SUFFIX = {"sg": "a", "pl": "u"}
ADVERBS = ["zalo", "mirt", "osko", "penn", "vulo", "hadi"]
ADVERB_IDIOMS = [("zum", "parek"), ("tol", "vendi")]
PREPOSITIONS = {"vo": "an", "en": "in"}  # preposition -> class of the noun phrase it takes
CONJUNCTIONS = ["po", "fen"]
PRONOUNS = {"se": "sg", "sen": "pl"}

# Optional-element probabilities: they set how long sentences are and how much the slot after a
# completed phrase is worth in entropy.
P_ADJ = 0.45
P_PP = 0.3
P_ADV = 0.4
P_COORD = 0.3
VP_MIX = {"t": 0.45, "p": 0.15, "i": 0.4}  # transitive | phrasal | intransitive


def _verb(stem: str, number: str) -> str:
    return stem + VERB_SUFFIX[number]


def _build_rules() -> dict[str, list[tuple[float, tuple[str, ...]]]]:
    """The grammar as ``nonterminal -> [(probability, right-hand side), ...]``.

    Nonterminals start with an upper-case letter; everything else is a terminal word. Number and
    class agreement is compiled into the nonterminal names (``NP_sg_an``), the standard way to
    express agreement in a context-free grammar.
    """
    r: dict[str, list[tuple[float, tuple[str, ...]]]] = {}
    r["S"] = [(1 - P_COORD, ("Clause", ".")), (P_COORD, ("Clause", ",", "Conj", "Tail", "."))]
    r["Clause"] = [(0.5, ("Subj_sg", "VP_sg")), (0.5, ("Subj_pl", "VP_pl"))]
    r["Conj"] = [(1 / len(CONJUNCTIONS), (c,)) for c in CONJUNCTIONS]
    r["Tail"] = [(0.5, (p, f"Vi_{n}", "AdvOpt")) for p, n in PRONOUNS.items()]
    r["AdjOpt"] = [(1 - P_ADJ, ()), (P_ADJ, ("Adj",))]
    r["Adj"] = [(1 / len(ADJECTIVES), (a,)) for a in ADJECTIVES]
    r["PPOpt"] = [(1 - P_PP, ()), (P_PP, ("PP",))]
    r["PP"] = [(0.5, (p, f"NPs_{c}")) for p, c in PREPOSITIONS.items()]
    r["AdvOpt"] = [(1 - P_ADV, ()), (P_ADV, ("Adv",))]
    advs = [(a,) for a in ADVERBS] + ADVERB_IDIOMS
    r["Adv"] = [(1 / len(advs), a) for a in advs]
    r["Obj"] = [(0.25, (f"NP_{n}_{c}",)) for n in NUMBERS for c in CLASSES]
    for c in CLASSES:
        nouns = [(w,) for w in NOUNS[c]] + [NOUN_COLLOCATIONS[c]]
        r[f"N_{c}"] = [(1 / len(nouns), w) for w in nouns]
        # noun phrase inside a PP: no further PP, which bounds the sentence length
        r[f"NPs_{c}"] = [(0.5, (f"Det_{n}_{c}", "AdjOpt", f"N_{c}")) for n in NUMBERS]
    for n in NUMBERS:
        r[f"Subj_{n}"] = [(0.5, (f"NP_{n}_{c}",)) for c in CLASSES]
        for c in CLASSES:
            det = next(d for d, nc in DETERMINERS.items() if nc == (n, c))
            r[f"Det_{n}_{c}"] = [(1.0, (det,))]
            r[f"NP_{n}_{c}"] = [(1.0, (f"Det_{n}_{c}", "AdjOpt", f"N_{c}", "PPOpt"))]
        r[f"VP_{n}"] = [
            (VP_MIX["t"], (f"Vt_{n}", "Obj", "AdvOpt")),
            (VP_MIX["p"], (f"Vp_{n}", "Obj", "AdvOpt")),
            (VP_MIX["i"], (f"Vi_{n}", "AdvOpt")),
        ]
        r[f"Vt_{n}"] = [(1 / len(TRANSITIVE_STEMS), (_verb(s, n),)) for s in TRANSITIVE_STEMS]
        r[f"Vp_{n}"] = [(1 / len(PHRASAL_STEMS), (_verb(s, n), p)) for s, p in PHRASAL_STEMS.items()]
        r[f"Vi_{n}"] = [(1 / len(INTRANSITIVE_STEMS), (_verb(s, n),)) for s in INTRANSITIVE_STEMS]
    for nt, alts in r.items():
        assert abs(sum(p for p, _ in alts) - 1.0) < 1e-9, nt
    return r


RULES = _build_rules()


def _build_categories() -> dict[str, str]:
    cat: dict[str, str] = {}
    for d in DETERMINERS:
        cat[d] = "determiner"
    for c in CLASSES:
        for w in NOUNS[c]:
            cat[w] = f"noun_{c}"
        first, second = NOUN_COLLOCATIONS[c]
        cat[first], cat[second] = f"noun_{c}", "collocation"
    for a in ADJECTIVES:
        cat[a] = "adjective"
    for n in NUMBERS:
        for s in TRANSITIVE_STEMS:
            cat[_verb(s, n)] = "verb_transitive"
        for s in PHRASAL_STEMS:
            cat[_verb(s, n)] = "verb_phrasal"
        for s in INTRANSITIVE_STEMS:
            cat[_verb(s, n)] = "verb_intransitive"
    for p in PHRASAL_STEMS.values():
        cat[p] = "particle"
    for a in ADVERBS:
        cat[a] = "adverb"
    for first, second in ADVERB_IDIOMS:
        cat[first], cat[second] = "adverb", "collocation"
    for p in PREPOSITIONS:
        cat[p] = "preposition"
    for c in CONJUNCTIONS:
        cat[c] = "conjunction"
    for p in PRONOUNS:
        cat[p] = "pronoun"
    cat["."] = cat[","] = "punctuation"
    return cat


# word -> syntactic category; used by the OOD generator to swap words across categories
WORD_CATEGORY: dict[str, str] = _build_categories()
VOCABULARY: list[str] = sorted(WORD_CATEGORY)
# verb form -> grammatical number: the agreement rule is "first verb agrees with first word"
VERB_NUMBER: dict[str, str] = {
    w: ("sg" if w.endswith(VERB_SUFFIX["sg"]) else "pl")
    for w, c in WORD_CATEGORY.items() if c.startswith("verb_")
}
assert len(WORD_CATEGORY) == 90, "a word is listed in two categories"


@lru_cache(maxsize=None)
def _expand(stack: tuple[str, ...]) -> tuple[tuple[float, str | None, tuple[str, ...]], ...]:
    """All ways the pending symbols can produce their next word.

    Returns ``(probability, word, symbols still pending after the word)`` triples; the word is
    None when nothing is pending (the sentence is complete). Expansion only rewrites the leftmost
    symbol, and the grammar has no left recursion, so this terminates. The grammar is finite in
    the states it can reach, so the cache stays small.
    """
    if not stack:
        return ((1.0, None, ()),)
    top, rest = stack[0], stack[1:]
    if top not in RULES:
        return ((1.0, top, rest),)
    out = []
    for p, rhs in RULES[top]:
        for q, word, after in _expand(rhs + rest):
            out.append((p * q, word, after))
    return tuple(out)


@lru_cache(maxsize=None)
def _stack_step(stack: tuple[str, ...]) -> tuple[dict[str | None, float], float]:
    """Next-word distribution of one stack and its entropy, cached: sampling is the hot loop."""
    dist: dict[str | None, float] = {}
    for p, word, _ in _expand(stack):
        dist[word] = dist.get(word, 0.0) + p
    return dist, _entropy(dist)


def _next_words(belief: dict[tuple[str, ...], float]) -> tuple[dict[str | None, float], float]:
    """Next-word distribution given a belief (probabilities over pending-symbol stacks), and its
    entropy. The grammar is unambiguous, so the belief is a single stack in practice."""
    if len(belief) == 1:
        return _stack_step(next(iter(belief)))
    dist: dict[str | None, float] = {}
    for stack, weight in belief.items():
        for word, p in _stack_step(stack)[0].items():
            dist[word] = dist.get(word, 0.0) + weight * p
    return dist, _entropy(dist)


def _advance(belief: dict[tuple[str, ...], float], word: str) -> dict[tuple[str, ...], float]:
    """Condition the belief on the observed word (exact, even if the grammar were ambiguous)."""
    new: dict[tuple[str, ...], float] = {}
    for stack, weight in belief.items():
        for p, w, after in _expand(stack):
            if w == word:
                new[after] = new.get(after, 0.0) + weight * p
    total = sum(new.values())
    return {s: w / total for s, w in new.items()}


def _entropy(dist: dict) -> float:
    total = sum(dist.values())
    if len(dist) == 1:  # forced: exactly 0, not a rounding residue
        return 0.0
    return -sum(p / total * math.log(p / total) for p in dist.values() if p > 0)


def sample_sentence(rng: random.Random) -> tuple[list[str], list[float]]:
    """Sample one sentence word by word; returns (words, entropy of each word's distribution)."""
    belief: dict[tuple[str, ...], float] = {("S",): 1.0}
    words: list[str] = []
    entropies: list[float] = []
    while True:
        dist, entropy = _next_words(belief)
        if None in dist:  # "." is always last, so completion is never one option among others
            assert len(dist) == 1
            return words, entropies
        u = rng.random() * sum(dist.values())
        acc = 0.0
        for word, p in dist.items():
            acc += p
            if u < acc:
                break
        words.append(word)
        entropies.append(entropy)
        belief = _advance(belief, word)


def next_word_distributions(text: str) -> list[dict[str, float]]:
    """The grammar's next-word distribution before each token of ``text`` (a full sentence).

    ``_entropy`` of the i-th distribution is the i-th ``branch_entropy``. Raises ValueError if the
    text is not a complete sentence of the grammar, naming the first impossible token.
    """
    belief: dict[tuple[str, ...], float] = {("S",): 1.0}
    out = []
    for i, word in enumerate(text.split(" ")):
        dist = _next_words(belief)[0]
        if word not in dist:
            raise ValueError(f"token {i} ({word!r}) is impossible after {text.split(' ')[:i]}")
        total = sum(dist.values())
        out.append({w: p / total for w, p in dist.items() if w is not None})
        belief = _advance(belief, word)
    if None not in _next_words(belief)[0]:
        raise ValueError(f"sentence is incomplete: {text!r}")
    return out


def is_grammatical(text: str) -> bool:
    """True iff ``text`` (space-separated tokens) is a complete sentence of the grammar."""
    try:
        next_word_distributions(text)
    except ValueError:
        return False
    return True


def generate(n_sentences: int, seed: int, n_test: int = 200) -> pa.Table:
    """``n_sentences`` training sentences plus ``n_test`` held-out test sentences.

    Test sentences are distinct from each other and never occur in the train split (training
    sentences may repeat among themselves, as short sentences do in any corpus). Drawing train
    sentences conditioned on "not a test sentence" shifts their distribution only by the tiny
    probability mass of the test set, so ``branch_entropy`` stays the grammar's true entropy.
    """
    if n_sentences < 0 or n_test < 0:
        raise ValueError(f"n_sentences and n_test must be >= 0, got {n_sentences}, {n_test}")
    rng = random.Random(seed)
    rows: list[dict] = []
    test_texts: set[str] = set()
    tries = 0
    while len(test_texts) < n_test:
        words, ents = sample_sentence(rng)
        tries += 1
        if tries > 100 * n_test + 1000:
            raise ValueError(f"the grammar produced too few distinct sentences for n_test={n_test}")
        text = " ".join(words)
        if text in test_texts:
            continue
        test_texts.add(text)
        rows.append(_row(f"grammar-test-{len(rows):06d}", "test", words, ents))
    i = 0
    while i < n_sentences:
        words, ents = sample_sentence(rng)
        if " ".join(words) in test_texts:
            continue
        rows.append(_row(f"grammar-train-{i:07d}", "train", words, ents))
        i += 1
    return pa.Table.from_pylist(rows, schema=SCHEMA)


PARAGRAPH_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | test, the split of its sentences
        pa.field("text", pa.string(), nullable=False),  # the sentences joined by single spaces
        pa.field("n_sentences", pa.int32(), nullable=False),
        pa.field("n_words", pa.int32(), nullable=False),
    ],
    metadata={"schema_version": "1", "table": "paragraphs"},
)


def paragraphs(sentences: pa.Table, min_sentences: int, max_sentences: int, seed: int) -> pa.Table:
    """Consecutive sentences of each split grouped into paragraphs of ``min..max`` sentences
    (sizes drawn uniformly, seeded; the last paragraph of a split takes what is left).

    Why: a document of one sentence teaches a model to stop after ~10 tokens, and a watermark
    needs long texts (its z-score grows with the square root of the length). Sentences are
    independent draws from the grammar, so a paragraph's next-word entropy is still the grammar's
    at every word (the first word of a sentence has the sentence-initial distribution)."""
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"paragraph sizes must satisfy 1 <= min <= max, got {min_sentences}, {max_sentences}")
    rng = random.Random(seed)
    rows = []
    for split in ("train", "test"):
        part = sentences.filter(pa.compute.equal(sentences["split"], split))
        texts, n_words = part["text"].to_pylist(), part["n_words"].to_pylist()
        i = 0
        while i < len(texts):
            k = rng.randint(min_sentences, max_sentences)
            rows.append({"id": f"paragraph-{split}-{len(rows):06d}", "split": split, "text": " ".join(texts[i:i + k]),
                         "n_sentences": len(texts[i:i + k]), "n_words": sum(n_words[i:i + k])})
            i += k
    return pa.Table.from_pylist(rows, schema=PARAGRAPH_SCHEMA)


def _row(id_: str, split: str, words: list[str], ents: list[float]) -> dict:
    return {"id": id_, "split": split, "text": " ".join(words), "n_words": len(words),
            "branch_entropy": ents}


def sentence_entropy_stats(table: pa.Table) -> dict[str, float]:
    """Summary of the corpus' ground-truth uncertainty, for logging next to model entropies.

    ``mean_branch_entropy`` averages over all token positions; ``zero_entropy_fraction`` is the
    share of forced tokens; ``mean_sentence_entropy`` is the average total entropy of a sentence
    (nats per sentence, the per-sentence information content).
    """
    lists = table.column("branch_entropy").to_pylist()
    flat = np.array([e for ents in lists for e in ents], dtype=np.float64)
    if flat.size == 0:
        return {"n_sentences": float(table.num_rows), "n_positions": 0.0,
                "mean_branch_entropy": 0.0, "zero_entropy_fraction": 0.0,
                "max_branch_entropy": 0.0, "mean_sentence_entropy": 0.0, "mean_words": 0.0}
    return {
        "n_sentences": float(table.num_rows),
        "n_positions": float(flat.size),
        "mean_branch_entropy": float(flat.mean()),
        "zero_entropy_fraction": float((flat == 0.0).mean()),
        "max_branch_entropy": float(flat.max()),
        "mean_sentence_entropy": float(np.mean([sum(e) for e in lists])),
        "mean_words": float(flat.size / table.num_rows),
    }
