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


def _engine(model, tok, batch_size=256) -> HFRolloutEngine:
    return HFRolloutEngine(model, tok, batch_size=batch_size)


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


def test_greedy_matches_unbatched_full_forward_loop(model, tok):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    table = _engine(model, tok).generate(PROMPTS, IDS, params)
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


def test_sampling_independent_of_batch_size_and_order(model, tok, monkeypatch):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    # Count cache compactions, so the test is known to cover rows leaving a batch early.
    compactions = []
    original = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, idx: (compactions.append(len(idx)), original(self, idx))[1])
    big = _engine(model, tok, batch_size=7).generate(PROMPTS, IDS, params)
    assert compactions, "no row finished early: pick another seed"
    single = _engine(model, tok, batch_size=1).generate(PROMPTS, IDS, params)
    rev = _engine(model, tok, batch_size=7).generate(PROMPTS[::-1], IDS[::-1], params)
    a, b, c = _by_key(big), _by_key(single), _by_key(rev)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert a[k]["token_ids"] == b[k]["token_ids"] == c[k]["token_ids"], k
        np.testing.assert_allclose(a[k]["logprobs"], b[k]["logprobs"], atol=1e-4)
    # Alone in a call: the same completion as inside a batch of other prompts.
    alone = _engine(model, tok).generate([PROMPTS[2]], [IDS[2]], params)
    for row in alone.to_pylist():
        assert row["token_ids"] == a[(IDS[2], row["sample_idx"])]["token_ids"]
    # A different base seed gives different completions.
    other = _by_key(_engine(model, tok).generate(PROMPTS, IDS, SamplingParams(**{**params.__dict__, "seed": 12})))
    assert any(other[k]["token_ids"] != a[k]["token_ids"] for k in a)


def test_samples_of_one_prompt_differ(model, tok):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0)
    table = _engine(model, tok).generate([PROMPTS[1]], [IDS[1]], params)
    assert len(set(table.column("seed").to_pylist())) == 4
    assert len({tuple(t) for t in table.column("token_ids").to_pylist()}) > 1


def test_logprobs_and_entropies_match_full_forward(model, tok):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=3)
    table = _engine(model, tok, batch_size=3).generate(PROMPTS, IDS, params)
    with torch.no_grad():
        for row in table.to_pylist():
            p, g = row["prompt_token_ids"], row["token_ids"]
            logits = model(input_ids=torch.tensor([p + g])).logits[0]
            logq = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(g)].double(), -1)
            ref_lp = logq.gather(-1, torch.tensor(g)[:, None]).squeeze(-1)
            ref_ent = -(logq.exp() * logq).sum(-1)
            np.testing.assert_allclose(row["logprobs"], ref_lp.numpy(), atol=1e-4)
            np.testing.assert_allclose(row["entropies"], ref_ent.numpy(), atol=1e-4)


def test_stop_at_eos_and_length(model, tok):
    eng = _engine(model, tok)
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
