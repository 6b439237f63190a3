"""Tests of the green-list watermarks: the shared green definition, detection statistics, KGW /
Unigram / SWEET / EWD, and interoperability with transformers' own KGW implementation.

Statistics are checked against hand-computed or exact binomial values; model-based tests use a tiny
random-weight Qwen2 built here (a random model has high-entropy next-token distributions, where a
watermark is easy to embed and to see).
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from entroflow.model import build_model
from entroflow.rollout import HFRolloutEngine, SamplingParams
from entroflow.tokenizer import BOS, EOS, train_tokenizer
from entroflow.watermark.detect import (
    binomial_p_value,
    score_sequences,
    tokens_to_fpr,
    weighted_null_p_value,
)
from entroflow.watermark.entropy import (
    entropy_and_spike,
    next_token_entropies,
    next_token_spike_entropies,
    spike_entropy,
    spike_modulus,
)
from entroflow.watermark.ewd import EWD
from entroflow.watermark.green import GreenList, _unigram_mask
from entroflow.watermark.kgw import KGW
from entroflow.watermark.sweet import SWEET
from entroflow.watermark.unigram import Unigram

KEY = 15485863
V = 512
ALL_SEEDINGS = [("hash", 1), ("hash", 3), ("lefthash", 1), ("lefthash", 2), ("selfhash", 1), ("selfhash", 4),
                ("unigram", 0)]
SEEDING_IDS = [f"{s}-h{h}" for s, h in ALL_SEEDINGS]


def _random_pairs(n: int, width: int, vocab: int = V, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, width), generator=g), torch.randint(0, vocab, (n,), generator=g)


# --- GreenList ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeding,h", ALL_SEEDINGS, ids=SEEDING_IDS)
def test_green_fraction_of_random_tokens_is_gamma(seeding, h):
    gl = GreenList(V, 0.25, KEY, seeding, h)
    n = 20000 if seeding in ("hash", "unigram", "lefthash") else 3000  # selfhash: one randperm per pair
    ctx, tok = _random_pairs(n, max(h, 1))
    frac = gl.is_green(ctx, tok).float().mean().item()
    # selfhash with h = 1 reads only the token itself: one fixed list of Binomial(V, gamma) tokens,
    # so its own size varies around gamma V by sd sqrt(gamma (1 - gamma) / V).
    per_list = 1 / V if (seeding, h) == ("selfhash", 1) else 0.0
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 * (1 / n + per_list)) + 1e-3


@pytest.mark.parametrize("seeding,h", ALL_SEEDINGS, ids=SEEDING_IDS)
def test_green_mask_agrees_with_is_green(seeding, h):
    """Embedding (``green_mask``) and detection (``is_green``) use one definition of green."""
    gl = GreenList(V, 0.25, KEY, seeding, h)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 6), generator=g)
    scores = torch.randn(3, V, generator=g)
    mask = gl.green_mask(ids, scores)
    ctx = ids[:, -max(h, 1):].repeat_interleave(V, dim=0)
    per_pair = gl.is_green(ctx, torch.arange(V).repeat(3)).view(3, V)
    if seeding == "selfhash":  # only the top 40 candidates are tested at generation
        top = torch.zeros_like(mask).scatter_(1, scores.sort(dim=-1, descending=True).indices[:, :40], True)
        assert torch.equal(mask, per_pair & top)
        assert mask.any()
    else:
        assert torch.equal(mask, per_pair)
    if seeding in ("lefthash", "unigram"):
        assert mask.sum(1).tolist() == [int(V * 0.25)] * 3


def test_hash_green_bits_are_pinned():
    """Fixed test vectors: any change to the hash (constants, order, comparison) fails here."""
    gl = GreenList(49152, 0.25, KEY, "hash", 1)
    ctx = torch.tensor([[0], [1], [17], [49151], [12345], [2**31]]).repeat_interleave(8, dim=0)
    assert gl.is_green(ctx, torch.arange(48)).int().tolist() == [
        1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0,
        0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0]
    gl3 = GreenList(512, 0.5, 2**63 - 1, "hash", 3)
    ctx3 = torch.tensor([[1, 2, 3], [3, 2, 1], [0, 0, 0], [511, 7, 9]]).repeat_interleave(8, dim=0)
    assert gl3.is_green(ctx3, torch.arange(32) * 13 % 512).int().tolist() == [
        1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert GreenList(1000, 0.3, 42, "hash", 1)._hash_state(torch.tensor([[5]])).tolist() == [-52509638728755160]
    # The small-V [V, V] table path and the direct [B, V] computation give the same bits.
    ids = torch.randint(0, 512, (4, 3))
    direct = gl3.green_mask(ids)
    big = GreenList(49152, 0.25, KEY, "hash", 1)
    assert torch.equal(GreenList(512, 0.25, KEY, "hash", 1).green_mask(ids),
                       GreenList(512, 0.25, KEY, "hash", 1).is_green(
                           ids[:, -1:].repeat_interleave(512, 0), torch.arange(512).repeat(4)).view(4, 512))
    assert direct.shape == (4, 512) and big.green_mask(ids).shape == (4, 49152)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_hash_green_lists_identical_on_cuda():
    for h in (1, 3):
        gl = GreenList(49152, 0.25, KEY, "hash", h)
        ids = torch.randint(0, 49152, (8, 5))
        assert torch.equal(gl.green_mask(ids), gl.green_mask(ids.cuda()).cpu())
        ctx, tok = _random_pairs(5000, h, 49152)
        assert torch.equal(gl.is_green(ctx, tok), gl.is_green(ctx.cuda(), tok.cuda()).cpu())


def test_unigram_list_is_the_authors_construction():
    """gptwm.py: int(gamma V) Trues then Falses, shuffled by default_rng(sha256(int64 key)[:4] LE)."""
    import hashlib
    seed = int.from_bytes(hashlib.sha256(np.int64(7)).digest()[:4], "little")
    mask = np.array([True] * 256 + [False] * 256)
    np.random.default_rng(seed).shuffle(mask)
    assert np.array_equal(_unigram_mask(GreenList(V, 0.5, 7, "unigram", 0)).numpy(), mask)


@pytest.mark.parametrize("kwargs,field", [
    (dict(gamma=0.0), "gamma"), (dict(gamma=1.0), "gamma"), (dict(gamma=-0.1), "gamma"),
    (dict(key=-1), "key"), (dict(key=2**63), "key"), (dict(seeding="minhash"), "seeding"),
    (dict(seeding="unigram", context_width=1), "context_width"), (dict(context_width=0), "context_width"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    args = dict(vocab_size=V, gamma=0.25, key=KEY) | kwargs
    with pytest.raises(ValueError, match=field):
        GreenList(**args)


def test_fingerprint_hides_the_key():
    fp = GreenList(V, 0.25, 123456789, "hash").fingerprint()
    assert len(fp) == 12 and "123456789" not in fp
    assert fp != GreenList(V, 0.25, 123456788, "hash").fingerprint()


def test_processors_match_transformers_watermark_processor():
    from transformers.generation.logits_process import WatermarkLogitsProcessor
    g = torch.Generator().manual_seed(3)
    ids, scores = torch.randint(0, V, (4, 7), generator=g), torch.randn(4, V, generator=g)
    for seeding, h in [("lefthash", 1), ("lefthash", 3), ("selfhash", 1), ("selfhash", 4)]:
        theirs = WatermarkLogitsProcessor(V, "cpu", 0.25, 2.0, KEY, seeding, h)(ids, scores.clone())
        ours = KGW(V, KEY, 0.25, 2.0, seeding, h)(ids, scores.clone())
        assert torch.equal(theirs, ours), (seeding, h)


# --- detection statistics -------------------------------------------------------------------------


def _unigram_tokens(gl: GreenList, n_green: int, n_red: int) -> list[int]:
    mask = _unigram_mask(gl).numpy()
    return list(np.nonzero(mask)[0][:n_green]) + list(np.nonzero(~mask)[0][:n_red])


def test_exact_p_value_matches_hand_binomial_tail():
    gl = GreenList(V, 0.5, KEY, "unigram", 0)
    row = score_sequences(gl, [[]], [_unigram_tokens(gl, 7, 3)], ignore_repeated_ngrams=False)[0]
    assert (row["num_tokens_scored"], row["num_green"]) == (10, 7)
    assert row["p_value"] == pytest.approx((120 + 45 + 10 + 1) / 1024, rel=1e-12)  # P[Bin(10, 1/2) >= 7]
    assert row["z"] == pytest.approx((7 - 5) / math.sqrt(2.5), rel=1e-12)
    assert row["p_value_normal"] == pytest.approx(stats.norm.sf((7 - 5) / math.sqrt(2.5)))
    assert row["green"] == [1] * 7 + [0] * 3
    assert binomial_p_value(0, 0, 0.5) == 1.0


def test_empty_scoring_is_defined_as_no_evidence():
    gl = GreenList(V, 0.25, KEY, "hash", 1)
    rows = score_sequences(gl, [[], []], [[], [5]])  # nothing, and one token without a context
    for row in rows:
        assert row["num_tokens_scored"] == 0 and row["z"] == 0.0 and row["p_value"] == 1.0
        assert math.isnan(row["green_fraction"])
    assert rows[1]["green"] == [-1] and rows[1]["z_at_T"] == [0.0]


def test_repeated_bigram_counts_once():
    gl = GreenList(V, 0.25, KEY, "hash", 1)
    once, every = (score_sequences(gl, [[7]], [[7] * 20], ignore_repeated_ngrams=r)[0] for r in (True, False))
    assert once["num_tokens_scored"] == 1 and every["num_tokens_scored"] == 20
    assert once["green"][1:] == [-1] * 19


def test_prompt_tail_seeds_the_first_tokens_and_eos_is_stripped():
    gl = GreenList(V, 0.25, KEY, "hash", 2)
    prompt, toks = [1, 9, 4], [10, 11, 12, EOS]
    row = score_sequences(gl, [prompt], [toks], eos_token_id=EOS)[0]
    assert row["num_tokens_generated"] == 3 and row["num_tokens_scored"] == 3
    expect = gl.is_green(torch.tensor([[9, 4], [4, 10], [10, 11]]), torch.tensor([10, 11, 12])).int().tolist()
    assert row["green"] == expect
    alone = score_sequences(gl, [[]], [toks], eos_token_id=EOS)[0]
    assert alone["green"] == [-1, -1, expect[2]]


def test_false_positive_rate_matches_exact_binomial_tail():
    """20k random sequences of T = 200: the rate of z > 2 and z > 4 and the mean/variance of the
    green count match Binomial(200, gamma) (green bits independent across tokens and sequences)."""
    gl = GreenList(V, 0.25, KEY, "hash", 1)
    rng = np.random.default_rng(0)
    n_seq, T = 20000, 200
    seqs = rng.integers(0, V, size=(n_seq, T + 1))
    rows = score_sequences(gl, seqs[:, :1].tolist(), seqs[:, 1:].tolist(), ignore_repeated_ngrams=False)
    z = np.array([r["z"] for r in rows])
    greens = np.array([r["num_green"] for r in rows])
    assert all(r["num_tokens_scored"] == T for r in rows)
    for thr in (2.0, 4.0):
        g_min = math.floor(0.25 * T + thr * math.sqrt(T * 0.25 * 0.75)) + 1  # z > thr <=> G >= g_min
        expected = n_seq * stats.binom.sf(g_min - 1, T, 0.25)
        hi = stats.poisson.ppf(1 - 1e-4, expected)
        lo = stats.poisson.ppf(1e-4, expected)
        assert lo <= int((z > thr).sum()) <= hi, (thr, expected)
    assert abs(greens.mean() - 50) < 4 * math.sqrt(37.5 / n_seq)
    assert abs(greens.var() / 37.5 - 1) < 0.05  # sd of the variance ratio ~ sqrt(2/n) = 0.01


def test_argmax_of_biased_random_logits_gives_large_z():
    """A 'model' that always takes the top logit after the KGW bias emits mostly green tokens."""
    for seeding in ("hash", "lefthash"):
        wm = KGW(V, KEY, gamma=0.25, delta=2.0, seeding=seeding)
        g = torch.Generator().manual_seed(5)
        ids = torch.randint(0, V, (8, 1), generator=g)
        for _ in range(100):
            scores = wm(ids, torch.randn(8, V, generator=g))
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
        rows = wm.detect(ids[:, :1].tolist(), ids[:, 1:].tolist())
        assert min(r["z"] for r in rows) > 6 and max(r["p_value"] for r in rows) < 1e-8
        plain = KGW(V, KEY + 1, seeding=seeding).detect(ids[:, :1].tolist(), ids[:, 1:].tolist())
        assert max(abs(r["z"]) for r in plain) < 4.5  # another key sees no watermark


def test_z_at_T_and_tokens_to_fpr():
    gl = GreenList(V, 0.5, KEY, "unigram", 0)
    row = score_sequences(gl, [[]], [_unigram_tokens(gl, 10, 2)], ignore_repeated_ngrams=False)[0]
    assert row["z_at_T"][0] == pytest.approx(1.0)  # 1 green of 1: (1 - .5)/sqrt(.25)
    assert row["z_at_T"][-1] == pytest.approx(row["z"])
    assert tokens_to_fpr(row["green"], 0.5, 0.01) == 7  # 0.5**7 = 0.0078 <= 0.01 < 0.5**6
    assert tokens_to_fpr([-1, -1] + [1] * 7, 0.5, 0.01) == 9
    assert tokens_to_fpr([0] * 20, 0.5, 0.01) is None


def test_weighted_score_hand_computed():
    """Weights (1, 2, 3), green bits (1, 0, 1), gamma 1/2: S = 4, z_w = (4 - 3)/sqrt(14/4), and
    under H0 S takes the subset sums {0,1,2,3,3,4,5,6} each with prob 1/8: P[S >= 4] = 3/8."""
    gl = GreenList(V, 0.5, KEY, "unigram", 0)
    toks = _unigram_tokens(gl, 2, 1)
    toks = [toks[0], toks[2], toks[1]]  # green, red, green
    row = score_sequences(gl, [[]], [toks], weights=[[1.0, 2.0, 3.0]], ignore_repeated_ngrams=False)[0]
    assert row["weighted_score"] == 4.0
    assert row["z_weighted"] == pytest.approx(1 / math.sqrt(3.5), rel=1e-12)
    assert row["p_value_weighted"] == pytest.approx(3 / 8, rel=1e-12)
    # Equal weights reduce to the exact binomial tail.
    assert weighted_null_p_value([1.0] * 10, [1] * 7 + [0] * 3, 0.5) == pytest.approx(176 / 1024, rel=1e-12)
    assert weighted_null_p_value([0.0, 0.0], [1, 1], 0.5) == 1.0


def test_weighted_null_is_calibrated():
    """Random weights, random green bits: P[p_weighted <= a] <= a (up to sampling error)."""
    rng = np.random.default_rng(1)
    p = np.array([weighted_null_p_value(rng.random(40), rng.random(40) < 0.25, 0.25, levels=200)
                  for _ in range(2000)])
    for a in (0.05, 0.2):
        assert (p <= a).mean() < a + 4 * math.sqrt(a * (1 - a) / len(p))
    assert (p <= 0.2).mean() > 0.2 - 4 * math.sqrt(0.16 / len(p))


# --- entropy, SWEET, EWD ----------------------------------------------------------------------------


def test_spike_entropy_values():
    gamma, delta = 0.25, 2.0
    zmod = spike_modulus(gamma, delta)
    assert zmod == pytest.approx(0.75 * (math.e**2 - 1) / (0.75 + 0.25 * math.e**2))
    assert zmod == pytest.approx(1.845, abs=1e-3)  # spec §0 table
    point = torch.zeros(1, 10)
    point[0, 3] = 1.0
    assert spike_entropy(point, gamma, delta).item() == pytest.approx(1 / (1 + zmod))
    uniform = torch.full((1, 1000), 1e-3)
    assert spike_entropy(uniform, gamma, delta).item() == pytest.approx(1 / (1 + zmod * 1e-3))
    h, se = entropy_and_spike(torch.zeros(2, 8), gamma, delta)
    assert torch.allclose(h, torch.full((2,), math.log(8)))
    assert torch.allclose(se, torch.full((2,), 1 / (1 + zmod / 8)))


def test_sweet_embeds_and_scores_only_high_entropy_positions():
    wm = SWEET(V, KEY, gamma=0.25, delta=2.0, entropy_threshold=1.0)
    ids = torch.randint(0, V, (2, 3))
    scores = torch.zeros(2, V)  # row 0: uniform, entropy log 512
    scores[1, 0] = 50.0  # row 1: a point mass, entropy ~0
    out = wm(ids, scores)
    assert torch.equal(out[1], scores[1])
    assert torch.equal(out[0] != scores[0], wm.green_list.green_mask(ids)[0])
    toks = [[3, 4, 5, 6, 7, 8]]
    ent = [np.array([2.0, 0.1, 2.0, 0.5, 1.5, 0.0])]
    row = wm.detect([[1]], toks, entropies=ent, ignore_repeated_ngrams=False)[0]
    assert [g >= 0 for g in row["green"]] == [True, False, True, False, True, False]
    assert row["num_tokens_scored"] == 3 and row["scored_fraction"] == 0.5
    full = wm.green_list.is_green(torch.tensor([[1], [3], [4], [5], [6], [7]]), torch.tensor(toks[0]))
    assert [row["green"][i] for i in (0, 2, 4)] == full[[0, 2, 4]].int().tolist()


def test_ewd_weights_are_spike_entropy_minus_minimum():
    wm = EWD(V, KEY, gamma=0.5)
    se = [np.array([0.9, 0.5, 0.7, 0.6]), np.array([0.8, 0.4, 0.95])]
    w = wm.weights([[1], []], [[3, 4, 5, 6], [3, 4, EOS]], se, eos_token_id=EOS)
    assert np.allclose(w[0], [0.4, 0.0, 0.2, 0.1])
    assert np.allclose(w[1], [0.0, 0.0, 0.0])  # token 0 has no context, EOS is stripped: min over one
    rows = wm.detect([[1]], [[3, 4, 5, 6]], spike_entropies=se[:1], ignore_repeated_ngrams=False)
    bits = np.array(rows[0]["green"]) == 1
    assert rows[0]["weighted_score"] == pytest.approx(float((w[0] * bits).sum()))


# --- tiny model: engine, entropy service, transformers interop ----------------------------------------


def _corpus(n: int = 400) -> list[str]:
    # Arithmetic plus sentences of 120 pseudo-words: enough merges for a vocabulary of 128, above the
    # 40 candidates transformers' selfhash indexes (it fails on smaller vocabularies).
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 5))) for _ in range(120)]
    return [f"{a}+{b}={a + b} " + " ".join(rng.choice(words) for _ in range(8)) for a, b in
            ((rng.randint(1, 99), rng.randint(1, 99)) for _ in range(n))]


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer(_corpus(), 128)
    assert len(t) > 40
    return t


@pytest.fixture(scope="module")
def model(tok):
    return build_model(len(tok), 64, 2, 2, 128, 256, seed=0).eval()


def test_next_token_entropies_match_unpadded_forward(model):
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    prompts = [rng.integers(4, vocab, size=k).tolist() for k in (3, 7, 1, 5)]
    gens = [rng.integers(4, vocab, size=k).tolist() for k in (6, 2, 9, 0)]
    got = next_token_entropies(model, prompts, gens, batch_size=3)
    spikes = next_token_spike_entropies(model, prompts, gens, 0.25, 2.0, batch_size=2)
    for p, g, e, s in zip(prompts, gens, got, spikes):
        assert len(e) == len(g) == len(s)
        if not g:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([p + g])).logits[0, len(p) - 1 : len(p) + len(g) - 1]
        h, se = entropy_and_spike(logits, 0.25, 2.0)
        np.testing.assert_allclose(e, h.numpy(), atol=1e-5)
        np.testing.assert_allclose(s, se.numpy(), atol=1e-5)


def _engine_rollouts(model, tok, wm, n_tokens=40):
    engine = HFRolloutEngine(model, tok, batch_size=8)
    prompts = [f"{a}+{b}=" for a, b in ((12, 30), (7, 81), (55, 4), (90, 9))]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=n_tokens, seed=0, stop_on_eos=False)
    table = engine.generate(prompts, [f"p{i}" for i in range(len(prompts))], params,
                            logits_processors=[wm] if wm is not None else None)
    return table.column("prompt_token_ids").to_pylist(), table.column("token_ids").to_pylist()


@pytest.mark.parametrize("cls", [KGW, Unigram, SWEET, EWD], ids=lambda c: c.__name__)
def test_engine_watermark_is_detected(model, tok, cls):
    V_model = model.config.vocab_size
    kwargs = dict(entropy_threshold=1.0) if cls is SWEET else {}
    wm = cls(V_model, KEY, gamma=0.25, delta=4.0, **kwargs)
    prompts, gens = _engine_rollouts(model, tok, wm)
    extra = {"model": model} if cls in (SWEET, EWD) else {}
    rows = wm.detect(prompts, gens, **extra)
    z_key = "z_weighted" if cls is EWD else "z"
    assert np.median([r[z_key] for r in rows]) > 4
    _, plain = _engine_rollouts(model, tok, None)
    rows0 = wm.detect(prompts, plain, **extra)
    assert np.median([r[z_key] for r in rows0]) < 3


def _hf_detector(model, seeding, h, ignore):
    from transformers import WatermarkDetector, WatermarkingConfig
    cfg = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, hashing_key=KEY, seeding_scheme=seeding,
                             context_width=h)
    return cfg, WatermarkDetector(model.config, "cpu", cfg, ignore_repeated_ngrams=ignore)


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("selfhash", 2)])
def test_transformers_generation_detected_with_the_same_z(model, tok, seeding, h):
    """transformers' watermark -> our detector gives WatermarkDetector's counts and z.

    WatermarkDetector scores ``input_ids`` as given: it drops a leading BOS, then scores every
    n-gram (n = h + 1, or h for selfhash) inside the sequence, prompt included. Our detector sees
    the same tokens with an empty prompt (so it also skips the first ``context_len`` tokens); and,
    in the intended use, the prompt as context and the generated tokens only, which
    WatermarkDetector reproduces when given the last ``context_len`` prompt tokens + the output.
    """
    from transformers import WatermarkDetector  # noqa: F401
    torch.manual_seed(0)
    enc = tok(["12+30=", "17+81="], return_tensors="pt", padding=True)
    assert enc["attention_mask"].all()  # equal prompt lengths: no padding inside the scored ids
    prompt_len = enc["input_ids"].shape[1]
    for ignore in (False, True):
        cfg, detector = _hf_detector(model, seeding, h, ignore)
        out = model.generate(**enc, watermarking_config=cfg, do_sample=True, max_new_tokens=30,
                             min_new_tokens=30, pad_token_id=tok.pad_token_id)
        theirs = detector(out, return_dict=True)
        assert out[0, 0] == BOS
        gl = KGW(model.config.vocab_size, KEY, 0.25, 2.0, seeding, h).green_list
        ours = score_sequences(gl, [[], []], out[:, 1:].tolist(), ignore_repeated_ngrams=ignore)
        np.testing.assert_array_equal([r["num_tokens_scored"] for r in ours], theirs.num_tokens_scored)
        np.testing.assert_array_equal([r["num_green"] for r in ours], theirs.num_green_tokens)
        np.testing.assert_allclose([r["z"] for r in ours], theirs.z_score, atol=1e-6)
        # Prompt as context, generated tokens scored.
        need = gl.context_len
        ours_gen = score_sequences(gl, out[:, :prompt_len].tolist(), out[:, prompt_len:].tolist(),
                                   ignore_repeated_ngrams=ignore)
        theirs_gen = detector(out[:, prompt_len - need :], return_dict=True)
        np.testing.assert_allclose([r["z"] for r in ours_gen], theirs_gen.z_score, atol=1e-6)
        assert min(r["num_tokens_scored"] for r in ours_gen) >= (30 if not ignore else 1)


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("selfhash", 2)])
def test_engine_generation_detected_by_transformers_with_our_z(model, tok, seeding, h):
    """Our engine + KGW processor -> transformers' WatermarkDetector gives our z, per sequence
    (it gets the last ``context_len`` prompt tokens + the generated tokens)."""
    wm = KGW(model.config.vocab_size, KEY, 0.25, 2.0, seeding, h)
    prompts, gens = _engine_rollouts(model, tok, wm, n_tokens=30)
    ours = wm.detect(prompts, gens, ignore_repeated_ngrams=False)
    _, detector = _hf_detector(model, seeding, h, False)
    need = wm.green_list.context_len
    theirs = [float(detector(torch.tensor([p[len(p) - need :] + g]), return_dict=True).z_score[0])
              for p, g in zip(prompts, gens)]
    np.testing.assert_allclose([r["z"] for r in ours], theirs, atol=1e-6)
    assert np.median(theirs) > 2
