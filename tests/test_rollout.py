"""Tests of the rollout engine: exactness against a plain forward loop, seed semantics, schema.

The model is a tiny random-weight Qwen2: correctness of the decoding loop does not need a trained
model, and a random model has high-entropy next-token distributions, which makes sampled
completions diverse (a good probe of seeding) and argmax ties vanishingly unlikely.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import DynamicCache

from entroflow.model import build_model
from entroflow.rollout import (
    SCHEMA,
    HFRolloutEngine,
    RolloutEngine,
    SamplingParams,
    gumbel_noise,
    sample_seed,
)
from entroflow.tokenizer import EOS, train_tokenizer

PROMPTS = ["3+4:", "37+5-12:", "81-6+15+2:", "9+90:", "12+13-4-7:"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 40)
        out.append(f"{a}+{b}-{c}:{a}+{b}={a + b},{a + b}-{c}={a + b - c}#{a + b - c}")
    return out


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_corpus(), 64)


@pytest.fixture(scope="module")
def model(tok):
    return build_model(len(tok), 64, 2, 2, 128, 128, seed=0)


def _engine(model, tok, batch_size=256, lean=None) -> HFRolloutEngine:
    return HFRolloutEngine(model, tok, batch_size=batch_size, lean=lean)


# The engine's two forward paths: the lean one (entroflow.lean_lm, the default for Qwen2) and the
# Hugging Face model with a DynamicCache. Tests of the decoding loop run on both.
PATHS = pytest.mark.parametrize("lean", [True, False], ids=["lean", "hf"])


def _by_key(table) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample_idx"]): r for r in table.to_pylist()}


class ForceEosAfter:
    """HF-style processor: EOS forbidden for the first ``k`` steps, then the only allowed token.

    It counts its own calls (one per decoding step), so it works whatever the prompt padding.
    """

    def __init__(self, k: int):
        self.k = k
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        if self.calls < self.k:
            out[:, EOS] = float("-inf")
        else:
            out[:] = float("-inf")
            out[:, EOS] = 0.0
        self.calls += 1
        return out


class NoEos:
    def __call__(self, input_ids, scores):
        out = scores.clone()
        out[:, EOS] = float("-inf")
        return out


def _reference_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    """Argmax continuation by a plain unbatched loop: full forward of the whole prefix, no cache."""
    ids = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            if nxt == EOS:
                break
    return out


def test_engine_satisfies_protocol(model, tok):
    assert isinstance(_engine(model, tok), RolloutEngine)


@PATHS
def test_greedy_matches_unbatched_full_forward_loop(model, tok, lean):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    table = _engine(model, tok, lean=lean).generate(PROMPTS, IDS, params)
    # Prompts of different lengths share one left-padded batch.
    assert len({len(p) for p in table.column("prompt_token_ids").to_pylist()}) > 1
    for row in table.to_pylist():
        ref = _reference_greedy(model, tok, row["prompt"], 12)
        assert row["token_ids"] == ref
        assert row["n_tokens"] == len(ref)
        assert row["finish_reason"] == ("stop" if ref[-1] == EOS else "length")
        assert row["text"] == tok.decode(ref, skip_special_tokens=True)


def test_rows_ordered_and_schema(model, tok):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=4, seed=5)
    table = _engine(model, tok, batch_size=4).generate(PROMPTS, IDS, params)
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table.schema.metadata[b"table"] == b"rollouts"
    assert table.column("prompt_id").to_pylist() == [i for i in IDS for _ in range(3)]
    assert table.column("sample_idx").to_pylist() == [0, 1, 2] * len(PROMPTS)
    assert table.column("seed").to_pylist() == [sample_seed(5, i, s) for i in IDS for s in range(3)]
    for row in table.to_pylist():
        assert row["prompt_token_ids"] == tok(row["prompt"])["input_ids"]
        assert len(row["logprobs"]) == len(row["entropies"]) == len(row["token_ids"]) == row["n_tokens"]
        assert row["temperature"] == 1.0 and row["top_p"] == 1.0 and row["top_k"] == 0


@PATHS
def test_sampling_independent_of_batch_size_and_order(model, tok, monkeypatch, lean):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    # Count cache compactions, so the test is known to cover rows leaving a batch early (on the
    # HF path also through the DynamicCache method that does it).
    compactions = []
    original = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, idx: (compactions.append(len(idx)), original(self, idx))[1])
    eng = _engine(model, tok, batch_size=7, lean=lean)
    big = eng.generate(PROMPTS, IDS, params)
    assert eng.compactions > 0, "no row finished early: pick another seed"
    assert bool(compactions) == (not lean)
    single = _engine(model, tok, batch_size=1, lean=lean).generate(PROMPTS, IDS, params)
    rev = _engine(model, tok, batch_size=7, lean=lean).generate(PROMPTS[::-1], IDS[::-1], params)
    a, b, c = _by_key(big), _by_key(single), _by_key(rev)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert a[k]["token_ids"] == b[k]["token_ids"] == c[k]["token_ids"], k
        np.testing.assert_allclose(a[k]["logprobs"], b[k]["logprobs"], atol=1e-4)
    # Alone in a call: the same completion as inside a batch of other prompts.
    alone = _engine(model, tok, lean=lean).generate([PROMPTS[2]], [IDS[2]], params)
    for row in alone.to_pylist():
        assert row["token_ids"] == a[(IDS[2], row["sample_idx"])]["token_ids"]
    # A different base seed gives different completions.
    reseeded = SamplingParams(**{**params.__dict__, "seed": 12})
    other = _by_key(_engine(model, tok, lean=lean).generate(PROMPTS, IDS, reseeded))
    assert any(other[k]["token_ids"] != a[k]["token_ids"] for k in a)


def test_samples_of_one_prompt_differ(model, tok):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0)
    table = _engine(model, tok).generate([PROMPTS[1]], [IDS[1]], params)
    assert len(set(table.column("seed").to_pylist())) == 4
    assert len({tuple(t) for t in table.column("token_ids").to_pylist()}) > 1


@PATHS
def test_logprobs_and_entropies_match_full_forward(model, tok, lean):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=3)
    table = _engine(model, tok, batch_size=3, lean=lean).generate(PROMPTS, IDS, params)
    with torch.no_grad():
        for row in table.to_pylist():
            p, g = row["prompt_token_ids"], row["token_ids"]
            logits = model(input_ids=torch.tensor([p + g])).logits[0]
            logq = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(g)].double(), -1)
            ref_lp = logq.gather(-1, torch.tensor(g)[:, None]).squeeze(-1)
            ref_ent = -(logq.exp() * logq).sum(-1)
            np.testing.assert_allclose(row["logprobs"], ref_lp.numpy(), atol=1e-4)
            np.testing.assert_allclose(row["entropies"], ref_ent.numpy(), atol=1e-4)


@PATHS
def test_stop_at_eos_and_length(model, tok, lean):
    eng = _engine(model, tok, lean=lean)
    forced = eng.generate(PROMPTS, IDS, SamplingParams(n=2, max_new_tokens=8), [ForceEosAfter(3)])
    assert forced.column("n_tokens").to_pylist() == [4] * 10
    assert set(forced.column("finish_reason").to_pylist()) == {"stop"}
    assert all(t[-1] == EOS and EOS not in t[:-1] for t in forced.column("token_ids").to_pylist())
    assert all(lp[-1] == pytest.approx(0.0, abs=1e-6) for lp in forced.column("logprobs").to_pylist())

    free = eng.generate(PROMPTS, IDS, SamplingParams(n=2, max_new_tokens=5), [NoEos()])
    assert free.column("n_tokens").to_pylist() == [5] * 10
    assert set(free.column("finish_reason").to_pylist()) == {"length"}

    ignore = eng.generate(PROMPTS[:1], IDS[:1], SamplingParams(max_new_tokens=6, stop_on_eos=False),
                          [ForceEosAfter(3)])
    row = ignore.to_pylist()[0]
    assert row["n_tokens"] == 6 and row["finish_reason"] == "length"


def test_top_k_one_equals_greedy(model, tok):
    eng = _engine(model, tok)
    greedy = eng.generate(PROMPTS, IDS, SamplingParams(temperature=0.0, max_new_tokens=8))
    top1 = eng.generate(PROMPTS, IDS, SamplingParams(temperature=1.3, top_k=1, max_new_tokens=8, seed=9))
    assert greedy.column("token_ids").to_pylist() == top1.column("token_ids").to_pylist()
    # The sampling distribution of top_k=1 is a point mass: log-prob and entropy are 0.
    assert all(abs(x) < 1e-6 for lp in top1.column("logprobs").to_pylist() for x in lp)
    assert all(abs(x) < 1e-6 for e in top1.column("entropies").to_pylist() for x in e)
    assert eng.tokens_per_second > 0


def test_top_p_restricts_support(model, tok):
    # With top_p tiny only the most likely token survives, so top_p sampling equals greedy.
    eng = _engine(model, tok)
    greedy = eng.generate(PROMPTS, IDS, SamplingParams(temperature=0.0, max_new_tokens=6))
    nucleus = eng.generate(PROMPTS, IDS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=6))
    assert greedy.column("token_ids").to_pylist() == nucleus.column("token_ids").to_pylist()


def test_gumbel_max_matches_softmax():
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0], dtype=torch.float64)
    n = 20_000
    seeds = torch.tensor([sample_seed(0, "chi2", i) for i in range(n)], dtype=torch.int64)
    draws = (torch.log_softmax(logits, -1) + gumbel_noise(seeds, 0, 5)).argmax(-1)
    counts = torch.bincount(draws, minlength=5).numpy()
    expected = torch.softmax(logits, -1).numpy() * n
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # Different steps of one seed give fresh noise (the step is part of the hash).
    g0, g1 = gumbel_noise(seeds[:4], 0, 5), gumbel_noise(seeds[:4], 1, 5)
    assert not torch.allclose(g0, g1)
    assert torch.equal(g0, gumbel_noise(seeds[:4], 0, 5))


def test_sample_seed_is_stable_63_bit():
    s = sample_seed(0, "p0", 0)
    assert s == 5845071987573524983  # pinned: blake2b, not the per-process salted hash()
    assert 0 <= s < 2**63
    assert len({sample_seed(0, "p0", i) for i in range(100)} | {sample_seed(1, "p0", 0)}) == 101


# ------------------------------------------------------------------------------- lean forward


def test_lean_is_used_for_qwen2_and_refused_elsewhere(model, tok):
    from entroflow import lean_lm

    assert lean_lm.supports(model) and _engine(model, tok).lean is not None
    assert _engine(model, tok, lean=False).lean is None
    scaled = build_model(len(tok), 64, 2, 2, 128, 128, seed=0)
    scaled.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert not lean_lm.supports(scaled)
    with pytest.raises(ValueError, match="lean=True"):
        HFRolloutEngine(scaled, tok, lean=True)


def _trained_like(model):
    """The random model with larger weights, so logits spread over several units (a random init at
    std 0.02 has near-uniform logits, on which agreement would say little)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    return m


def test_lean_logits_equal_hf_logits(model, tok):
    """LeanLM's scoring forward (packed, shared prompts), its prefill and its decoding steps give
    the HF model's logits within 1e-5 (fp32), and the scoring gradient equals the HF gradient."""
    from entroflow.lean_lm import LeanLM, Packed
    from entroflow.rl.trainer import sequence_logits

    m = _trained_like(model)
    lean = LeanLM(m)
    rng = np.random.default_rng(0)
    prompts = [tok(p)["input_ids"] for p in PROMPTS for _ in range(3)]  # groups sharing a prompt
    comps = [rng.integers(4, len(tok), size=int(rng.integers(0, 12))).tolist() for _ in prompts]
    comps[0] = []
    logits, targets, mask = sequence_logits(m, prompts, comps, tok.pad_token_id, lean=None)
    assert float(logits[mask].detach().std()) > 0.5
    pack = Packed(prompts, comps, "cpu")
    assert pack.n_tokens < sum(len(p) + len(c) for p, c in zip(prompts, comps))  # prompts are shared
    out = lean.score(pack)
    assert torch.equal(pack.targets, targets[mask])
    assert float((out - logits[mask]).detach().abs().max()) < 1e-5
    # Gradients of the same scalar through both forwards.
    ref = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0][mask].sum()
    g_hf = torch.autograd.grad(ref, list(m.parameters()))
    g_lean = torch.autograd.grad(torch.log_softmax(out, -1).gather(-1, pack.targets[:, None]).sum(),
                                 list(m.parameters()))
    for a, b in zip(g_hf, g_lean):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(a.abs().max()))

    with torch.no_grad():
        _assert_lean_decoding_equals_hf(m, lean, prompts, 6, lambda full: torch.distributions.Categorical(logits=full).sample())


def _assert_lean_decoding_equals_hf(m, lean, prompts, steps, pick):
    """Prefill and ``steps`` decoding steps of the lean path give the HF model's last-position
    logits (recomputed from scratch each step) within 1e-5; ``pick`` chooses each next token."""
    B, L = len(prompts), max(map(len, prompts))
    ids = torch.zeros((B, L), dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):], attn[b, L - len(p):] = torch.tensor(p), 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    lg, state = lean.start(ids, attn, pos, steps)
    nxt = pos[:, -1] + 1
    for _ in range(steps):
        full = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -1]
        assert float((lg - full).abs().max()) < 1e-5
        t = pick(full)
        ids, attn = torch.cat([ids, t[:, None]], 1), torch.cat([attn, torch.ones(B, 1, dtype=torch.long)], 1)
        pos = torch.cat([pos, nxt[:, None]], 1)
        lg = lean.step(state, t, nxt)
        nxt = nxt + 1


@pytest.mark.parametrize("params", [SamplingParams(n=1, temperature=0.0, max_new_tokens=12),
                                    SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7),
                                    SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=12, seed=1)],
                         ids=["greedy", "sampled", "top_p"])
def test_lean_engine_equals_hf_engine(model, tok, params):
    """The lean and the HF decoding paths produce the same tokens (greedy and sampled), with
    log-probs and entropies within 1e-5, on a model with spread-out logits."""
    m = _trained_like(model)
    a = _by_key(_engine(m, tok, batch_size=8, lean=True).generate(PROMPTS, IDS, params))
    b = _by_key(_engine(m, tok, batch_size=8, lean=False).generate(PROMPTS, IDS, params))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["token_ids"] == b[k]["token_ids"], k
        assert a[k]["finish_reason"] == b[k]["finish_reason"]
        np.testing.assert_allclose(a[k]["logprobs"], b[k]["logprobs"], atol=1e-5)
        np.testing.assert_allclose(a[k]["entropies"], b[k]["entropies"], atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2-gqa", "llama"])
def test_lean_logits_equal_hf_for_gqa_and_llama(tok, arch):
    """Grouped-query attention (2 query heads per key/value head) and Llama (no q/k/v bias) go
    through the same lean code: logits of scoring, prefill and decoding equal HF's within 1e-5."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from entroflow.lean_lm import LeanLM, Packed, supports
    from entroflow.rl.trainer import sequence_logits

    torch.manual_seed(0)
    kw = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128, initializer_range=0.2)
    m = (Qwen2ForCausalLM(Qwen2Config(**kw)) if arch == "qwen2-gqa" else LlamaForCausalLM(LlamaConfig(**kw))).eval()
    assert supports(m)
    lean = LeanLM(m)
    rng = np.random.default_rng(1)
    prompts = [tok(p)["input_ids"] for p in PROMPTS for _ in range(2)]
    comps = [rng.integers(4, len(tok), size=int(rng.integers(1, 9))).tolist() for _ in prompts]
    with torch.no_grad():
        logits, _, mask = sequence_logits(m, prompts, comps, tok.pad_token_id)
        assert float((lean.score(Packed(prompts, comps, "cpu")) - logits[mask]).abs().max()) < 1e-5
        _assert_lean_decoding_equals_hf(m, lean, prompts, 4, lambda full: full.argmax(-1))


def test_generate_from_tokens_equals_generate(model, tok):
    """Continuing from exact token ids (the watermark flow's re-generation attack) samples what
    generate samples from the same tokens; a longer prefix continues from where it ends."""
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=3)
    engine = _engine(model, tok)
    ref = engine.generate(PROMPTS, IDS, params)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    got = engine.generate_from_tokens(ids, IDS, params)
    assert got.column("token_ids").to_pylist() == ref.column("token_ids").to_pylist()
    assert got.column("prompt_token_ids").to_pylist() == [i for i in ids for _ in range(2)]
    with pytest.raises(ValueError, match="prompt_ids"):
        engine.generate_from_tokens(ids, IDS[:1], params)
