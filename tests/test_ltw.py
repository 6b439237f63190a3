"""Tests of LTW (entroflow/watermark/ltw.py): MGDA weight, selector, threshold rule, sentence
features, replay detection against the rollout engine, and a few training steps.

The LM is a tiny random-weight Qwen2 (as in tests/test_rollout.py): random weights give
high-entropy next-token distributions, so a green-list bias visibly moves the green fraction. The
sentence model is the packaged all-MiniLM-L6-v2 (no download).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from entroflow.model import build_model
from entroflow.rollout import HFRolloutEngine, SamplingParams
from entroflow.tokenizer import EOS, PAD, train_tokenizer
from entroflow.watermark import ltw

try:  # the base scheme's green list (schemes branch); a small stand-in until it is merged
    from entroflow.watermark.green import GreenList
except ImportError:

    @dataclass(frozen=True)
    class GreenList:  # same API: green_mask(input_ids, scores) -> [B, V]; is_green(context, tokens)
        vocab_size: int
        gamma: float
        key: int
        seeding: str = "hash"
        context_width: int = 1

        def _green(self, prev: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
            x = (prev * 15485863 + self.key) * 2654435761 + tok * 40503
            x = (x ^ (x >> 13)) * 0x5BD1E995
            x = x ^ (x >> 15)
            return (x % 10007).double() / 10007 < self.gamma

        def green_mask(self, input_ids, scores=None):
            prev = input_ids[:, -1:].long() if self.context_width else torch.zeros_like(input_ids[:, :1])
            return self._green(prev, torch.arange(self.vocab_size)[None])

        def is_green(self, context, tokens):
            prev = context[:, -1].long() if self.context_width else torch.zeros_like(tokens)
            return self._green(prev, tokens.long())


from tests.test_rollout import _corpus  # noqa: E402  the rollout tests' arithmetic corpus

PROMPTS = ["3+4:", "37+5-12:", "81-6+15+2:", "9+90:", "12+13-4-7:", "5:", "64-3+1:", "70+7-77+1:"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads oversubscribe and the small
    sentence-model matmuls run up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_corpus(), 64)


@pytest.fixture(scope="module")
def model(tok):
    return build_model(len(tok), 64, 2, 2, 128, 128, seed=0)


@pytest.fixture(scope="module")
def encoder(tok):
    return ltw.ContextEncoder(ltw.PACKAGED_MINILM, tok)  # as the flow builds it


@pytest.fixture(scope="module")
def green(tok):
    return GreenList(vocab_size=len(tok), gamma=0.5, key=15485863)


def _selector(encoder, seed: int = 0) -> ltw.Selector:
    """A random selector made genuinely selective: a random init varies little across inputs, so
    the output layer is rescaled to give the pre-sigmoid value mean 0 and std 1.5 over random
    token windows and entropies (s then straddles the thresholds)."""
    sel = ltw.Selector(384, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, encoder.table.shape[0], (256, 6), generator=g)
    with torch.no_grad():
        emb = encoder.encode_ids(ids, torch.ones_like(ids, dtype=torch.bool))
        H, r = 2.5 + 0.6 * torch.rand(256, generator=g), torch.rand(256, generator=g)
        u = torch.logit(sel(emb, H, r).double().clamp(1e-9, 1 - 1e-9))
        a = 1.5 / float(u.std())
        sel.fc4.weight.mul_(a)
        sel.fc4.bias.copy_(a * sel.fc4.bias - a * float(u.mean()))
    return sel


# ---------------------------------------------------------------------------------------- MGDA


def test_mgda_orthogonal_equal_norm_is_half():
    assert ltw.mgda_weight(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(0.5)


def test_mgda_detect_end_and_floor():
    g_q = torch.tensor([2.0, 0.0])
    g_d = torch.tensor([1.0, 0.0])  # g_D.g_Q = 2 >= g_D.g_D = 1: the min-norm point is g_D
    assert ltw.mgda_weight(g_q, g_d) == 1.0
    # g_D.g_Q = 2 >= g_Q.g_Q = 1 (and < g_D.g_D = 4): alpha = 0, floored at 0.001
    assert ltw.mgda_weight(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == pytest.approx(0.001)
    assert ltw.mgda_weight(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), floor=0.0) == 0.0


def test_mgda_general_case_by_hand_and_min_norm():
    g_q = torch.tensor([3.0, 1.0])
    g_d = torch.tensor([-1.0, 2.0])
    # (g_Q - g_D).g_Q / ||g_Q - g_D||^2 = (4, -1).(3, 1) / 17 = 11/17
    a = ltw.mgda_weight(g_q, g_d)
    assert a == pytest.approx(11 / 17)
    # the combined direction is the min-norm point of the segment
    grid = torch.linspace(0, 1, 10001)
    norms = ((grid[:, None] * g_d + (1 - grid[:, None]) * g_q) ** 2).sum(1)
    assert float(grid[norms.argmin()]) == pytest.approx(a, abs=1e-3)
    d = a * g_d + (1 - a) * g_q
    assert float(d @ (g_q - g_d)) == pytest.approx(0.0, abs=1e-6)  # orthogonal to the segment
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        q, dd = torch.randn(7, generator=rng), torch.randn(7, generator=rng)
        a = ltw.mgda_weight(q, dd, floor=0.0)
        norms = ((grid[:, None] * dd + (1 - grid[:, None]) * q) ** 2).sum(1)
        assert float(grid[norms.argmin()]) == pytest.approx(a, abs=2e-4)


# ------------------------------------------------------------------------- selector, threshold


def test_selector_parameter_count_and_shapes():
    for E in (768, 384):
        sel = ltw.Selector(E)
        assert sum(p.numel() for p in sel.parameters()) == ltw.selector_param_count(E)
    assert ltw.selector_param_count(768) == 205_377
    s = ltw.Selector(384, seed=1)(torch.randn(5, 384), torch.rand(5), torch.rand(5))
    assert s.shape == (5,) and bool(((s > 0) & (s < 1)).all())
    a, b = ltw.Selector(384, seed=3), ltw.Selector(384, seed=3)
    assert ltw.selector_fingerprint(a) == ltw.selector_fingerprint(b)


def test_adaptive_threshold_rule():
    r = torch.tensor([0.0, 0.2499, 0.25, 0.4, 0.6, 0.6001, 1.0])
    tau = ltw.adaptive_threshold(r)
    assert tau.tolist() == pytest.approx([0.4, 0.4, 0.5, 0.5, 0.5, 0.65, 0.65])


def test_save_load_roundtrip(tmp_path):
    sel = ltw.Selector(384, seed=5)
    sha = ltw.save_selector(sel, tmp_path / "sel", {"k": 6, "delta": 2.0})
    back = ltw.load_selector(tmp_path / "sel")
    meta = back.settings
    assert meta["sha256"] == sha == ltw.selector_fingerprint(back) and meta["k"] == 6
    for (n1, p1), (n2, p2) in zip(sel.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    (tmp_path / "sel" / "selector.json").write_text((tmp_path / "sel" / "selector.json").read_text()
                                                    .replace(sha, "0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        ltw.load_selector(tmp_path / "sel")


# ------------------------------------------------------------------------------ sentence features


def test_encoder_matches_sentence_transformers_and_ignores_padding(encoder):
    stm = encoder.st
    text = "the cat sat on the mat"
    ids = stm.tokenizer(text, add_special_tokens=False)["input_ids"]
    word = encoder.bert.get_input_embeddings().weight
    with torch.no_grad():
        ours = encoder.encode_rows(word[ids][None], torch.ones(1, len(ids), dtype=torch.bool))
        ref = stm.encode([text], convert_to_tensor=True)
        padded = encoder.encode_rows(torch.cat([torch.randn(1, 3, 384), word[ids][None]], 1),
                                     torch.tensor([[False] * 3 + [True] * len(ids)]))
    assert torch.allclose(ours, ref.to(ours), atol=1e-5)
    assert torch.allclose(ours, padded, atol=1e-6)


def test_bridge_table_rows(encoder, tok):
    stok = encoder.st.tokenizer
    word = encoder.bert.get_input_embeddings().weight
    assert encoder.table.shape == (len(tok), 384)
    for i in range(len(tok)):
        text = tok.decode([i], skip_special_tokens=True)
        pieces = stok(text, add_special_tokens=False)["input_ids"]
        want = word[pieces].mean(0) if pieces else torch.zeros(384)
        assert torch.allclose(encoder.table[i], want, atol=1e-6), (i, text)
    assert float(encoder.table[PAD].abs().sum()) == 0.0  # special tokens decode to nothing


# ------------------------------------------------------------------------------------- replay


class ForceEosSome:
    """Row-wise processor with per-row state: rows whose prompt has an even number of real tokens
    get EOS forced from step ``k`` on; EOS is banned for the others (so they run to the end)."""

    def __init__(self, k: int):
        self.k = k
        self.reset(0)

    def reset(self, batch_size):
        self.flag, self.calls = None, 0

    def select_rows(self, keep):
        self.flag = self.flag[keep]

    def __call__(self, input_ids, scores):
        if self.flag is None:
            self.flag = (input_ids != PAD).sum(1) % 2 == 0
        out = scores.clone()
        if self.calls >= self.k:
            out[self.flag] = float("-inf")
            out[self.flag, EOS] = 0.0
        out[~self.flag, EOS] = float("-inf")
        self.calls += 1
        return out


def _generate(model, tok, encoder, green, selector, params, batch_size, force=None, delta=2.0):
    record: list[dict] = []
    proc = ltw.LTWProcessor(green, delta, selector, encoder, pad_id=tok.pad_token_id, record=record)
    engine = HFRolloutEngine(model, tok, batch_size=batch_size)
    procs = [proc] + ([force] if force is not None else [])
    table = engine.generate(PROMPTS, IDS, params, logits_processors=procs)
    return table, record, engine


def _records_by_row(table, record):
    """Match the processor's per-row records to table rows: same prompt, samples in order."""
    by_prompt: dict[tuple, list] = {}
    for entry in record:
        by_prompt.setdefault(tuple(entry["prompt_token_ids"]), []).append(entry)
    out = []
    for row in table.to_pylist():
        out.append(by_prompt[tuple(row["prompt_token_ids"])][row["sample_idx"]])
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_replay_decisions_equal_generation(model, tok, encoder, green, temperature):
    sel = _selector(encoder, 0)
    params = SamplingParams(n=2, temperature=temperature, max_new_tokens=20, seed=7)
    table, record, engine = _generate(model, tok, encoder, green, sel, params, batch_size=6,
                                      force=ForceEosSome(5))
    assert engine.compactions > 0  # rows were dropped mid-batch (select_rows exercised)
    rows = table.to_pylist()
    assert {r["n_tokens"] for r in rows} >= {6, 20}
    res = ltw.ltw_detect(model, encoder, sel, green, [r["prompt_token_ids"] for r in rows],
                         [r["token_ids"] for r in rows], batch_size=5)
    n_sel = 0
    for row, rec, det in zip(rows, _records_by_row(table, record), res):
        T = row["n_tokens"]
        want = np.array(rec["decisions"][:T], dtype=bool)
        assert det["num_tokens_generated"] == T
        assert np.array_equal(det["selected"], want), (row["prompt_id"], row["sample_idx"])
        assert det["num_tokens_selected"] == det["num_tokens_scored"] == int(want.sum())
        n_sel += int(want.sum())
    total = sum(r["n_tokens"] for r in rows)
    assert 0.1 * total < n_sel < 0.9 * total  # the selector is genuinely selective


def test_watermarked_z_above_unwatermarked(model, tok, encoder, green):
    sel = _selector(encoder, 1)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=32, seed=3, stop_on_eos=False)
    wm, _, _ = _generate(model, tok, encoder, green, sel, params, batch_size=16, delta=4.0)
    plain = HFRolloutEngine(model, tok).generate(PROMPTS, IDS, params)
    det = {}
    for name, table in (("wm", wm), ("plain", plain)):
        rows = table.to_pylist()
        det[name] = ltw.ltw_detect(model, encoder, sel, green, [r["prompt_token_ids"] for r in rows],
                                   [r["token_ids"] for r in rows])
    z_wm = np.array([d["z"] for d in det["wm"]])
    z_plain = np.array([d["z"] for d in det["plain"]])
    assert z_wm.mean() > z_plain.mean() + 2.0
    assert z_wm.min() > z_plain.max() - 1.0
    from scipy import stats

    for d in det["wm"] + det["plain"]:
        T, G = d["num_tokens_scored"], d["num_green"]
        assert T == d["num_tokens_selected"] == sum(d["selected"])
        assert d["z"] == pytest.approx((G - 0.5 * T) / np.sqrt(T * 0.25))
        assert d["p_value"] == pytest.approx(stats.binom.sf(G - 1, T, 0.5))
    rows = wm.to_pylist()
    dedup = ltw.ltw_detect(model, encoder, sel, green, [r["prompt_token_ids"] for r in rows],
                           [r["token_ids"] for r in rows], ignore_repeated_ngrams=True)
    for a, b in zip(dedup, det["wm"]):
        assert a["selected"] == b["selected"] and a["num_tokens_scored"] <= b["num_tokens_scored"]
    assert sum(a["num_tokens_scored"] for a in dedup) < sum(b["num_tokens_scored"] for b in det["wm"])
    frac = np.mean([d["selected_fraction"] for d in det["wm"]])
    assert 0.15 < frac < 0.85, frac
    for d in det["wm"]:
        assert 0.0 < d["p_value"] <= 1.0
    assert np.median([d["p_value"] for d in det["wm"]]) < 0.01


def test_detect_nothing_selected(model, tok, encoder, green):
    sel = ltw.Selector(384, seed=0)
    with torch.no_grad():
        sel.fc4.bias.fill_(-30.0)  # s ~ 0: never selected
    res = ltw.ltw_detect(model, encoder, sel, green, [[1, 5, 6]], [[7, 8, 9, 2]])
    assert res[0]["num_tokens_scored"] == res[0]["num_tokens_selected"] == 0
    assert res[0]["z"] == 0.0 and res[0]["p_value"] == 1.0 and res[0]["selected"] == [False] * 4


# ------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("feature_grad", [False, True], ids=["hard-features", "soft-features"])
def test_train_selector_three_steps(model, tok, encoder, green, feature_grad):
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    sel0 = _selector(encoder, 2)
    before = {k: v.clone() for k, v in sel0.state_dict().items()}
    seen = []
    sel, hist = ltw.train_selector(model, tok, prompts, green, 2.0, encoder, steps=3, batch_size=3,
                                   new_tokens=8, lr=1e-3, seed=0, entropy_centre=2.0, selector=sel0,
                                   feature_grad=feature_grad,
                                   on_step=seen.append)
    assert len(hist) == 3 and seen == hist
    for row in hist:
        for key in ("loss_quality", "loss_detect", "selected_mean", "soft_z", "cos_sim", "seconds"):
            assert np.isfinite(row[key]), (key, row)
        assert 0.001 <= row["mgda_alpha"] <= 1.0
        assert 0.0 < row["selected_mean"] < 1.0 and -1.0 <= row["cos_sim"] <= 1.0 + 1e-6
    after = sel.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not p.requires_grad for p in encoder.st.parameters())
