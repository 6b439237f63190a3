"""RL training loop (entroflow.rl.trainer) end to end on a tiny arithmetic world on CPU.

One module-scoped world: 1- and 2-digit additions, a 18-token digit tokenizer and a 2-layer
Qwen2 (hidden 64) pretrained for a few seconds so that it answers in the ``...#<answer>`` format
(about 20-25% of its samples are correct). Every test trains its own deep copy of that model.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from entroflow.data.reasoning import Level, generate
from entroflow.model import build_model, make_document, pretrain
from entroflow.rl import objectives as obj
from entroflow.rl.settings import TrainConfig
from entroflow.rl.trainer import RLTrainer
from entroflow.tokenizer import train_tokenizer

# Small steps: 8 prompts x 8 samples, completions of at most 16 tokens, one optimizer step per
# RL step unless a test asks for more.
SHARED = dict(prompts_per_step=8, group_size=8, warmup_steps=1, mini_batch_size=64, micro_batch_size=64,
              max_new_tokens=16, checkpoint_every=1000, seed=0)


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    table = generate([Level(2, 1), Level(2, 2)], n_train=2000, n_test=40, ops="+", seed=0)
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in rows], vocab_size=64)
    docs = [make_document(tok, r["prompt"], r["completion"], "reasoning", predict_prompt=False) for r in train]
    model = build_model(len(tok), 64, 2, 2, 128, 64, seed=0)
    pretrain(model, {"r": docs}, {"r": 1.0}, steps=300, batch_size=32, lr=3e-3, seed=0)
    model.eval()
    prompts = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in train]
    yield {"tok": tok, "model": model, "prompts": prompts, "rows": train}
    torch.set_num_threads(threads)


@pytest.fixture()
def model(world):
    """A private copy of the pretrained model: tests never share weights."""
    return copy.deepcopy(world["model"])


def make_cfg(method: str, **override) -> TrainConfig:
    return TrainConfig.for_method(method, dict(SHARED), override)


def state_max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


# ------------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("lean", [None, False], ids=["lean", "hf"])
def test_rollout_and_trainer_logprobs_agree(world, model, lean):
    """The trainer's no-grad recomputation of old log-probs (left-padded prompts, right-padded
    completions, positions from the attention mask; or the lean packed forward) reproduces the
    rollout engine's per-token log-probs and entropies to 1e-4 for a batch mixing prompts of
    different token lengths and completions of different lengths, split into micro-batches that
    cut across groups. GRPO's reference model (KL 0.04) equals the policy before any update.
    The gap is what the step logs as logp_gap_max: measured by collect() when it runs the
    old-log-prob forward, and on the first mini-batch's update forward when it does not (fp32)."""
    cfg = make_cfg("grpo", micro_batch_size=5)
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"], lean=lean)
    assert (tr.lean is None) == (lean is False) and (tr.engine.lean is None) == (lean is False)
    b = tr._rollout(0, 0, group_offset=0)
    assert len(b) == cfg.prompts_per_step * cfg.group_size
    assert len({len(p) for p in b.prompt_tokens}) > 1, "batch must mix prompt lengths (left padding)"
    assert len({len(t) for t in b.tokens}) > 1, "batch must mix completion lengths (right padding)"
    logps, ents, refs = tr._old_logprobs(b)
    assert cfg.kl_coef == 0.04 and refs is not None  # published GRPO: KL to a frozen reference
    worst = worst_ent = 0.0
    for lp, en, ref, toks, roll, roll_en in zip(logps, ents, refs, b.tokens, b.rollout_logprobs,
                                                b.rollout_entropies):
        assert lp.shape == en.shape == ref.shape == (len(toks),)
        assert torch.isfinite(lp).all() and (lp <= 0).all() and (en >= 0).all()
        assert torch.allclose(ref, lp, atol=1e-6)
        worst = max(worst, float((lp - torch.from_numpy(roll)).abs().max()))
        worst_ent = max(worst_ent, float((en - torch.from_numpy(roll_en)).abs().max()))
    assert worst < 1e-4, f"trainer/rollout log-prob gap {worst}"
    assert worst_ent < 1e-4, f"trainer/rollout entropy gap {worst_ent}"
    # The same quantity is what collect() logs as logp_gap_max when it runs the forward ...
    always = RLTrainer(copy.deepcopy(world["model"]), world["tok"], make_cfg("grpo", old_logprob_forward="always"),
                       world["prompts"], lean=lean)
    _, _, stats, *_ = always.collect(0)
    assert stats["old_logprob_forward"] == 1.0 and 0 < stats["logp_gap_max"] < 1e-4
    # ... and what the update measures on its first mini-batch when the forward is skipped.
    s = tr.train_step()
    assert s["old_logprob_forward"] == 0.0 and 0 < s["logp_gap_max"] < 1e-4


def test_engine_logprobs_replace_the_old_logprob_forward_exactly_when_valid(world, model):
    """In fp32, sampling from the full distribution (any temperature > 0, top-p 1), the engine's
    log-probs and entropies are pi_old's, so collect() skips the no-grad forward: the old
    log-probs and entropies then agree with the forward's to 1e-5 for every sequence (they are
    used for every mini-batch and epoch, all of which follow the rollout), and the first
    mini-batch's loss and gradient agree with those computed from the forward's log-probs.
    bf16, top-p < 1 and old_logprob_forward='always' keep the forward."""
    base = world["model"]
    over = dict(temperature=0.8, mini_batch_size=64, micro_batch_size=16, lr=1e-4)
    runs = {}
    for mode in ("auto", "always"):
        tr = RLTrainer(copy.deepcopy(base), world["tok"], make_cfg("dapo", old_logprob_forward=mode, **over),
                       world["prompts"])
        grads = []
        tr.opt.register_step_pre_hook(lambda opt, a, k: grads.append([p.grad.clone() for p in tr.model.parameters()]))
        b, rewards, stats, old_lp, ents, _ = tr.collect(0)
        adv = obj.group_advantages(rewards, torch.tensor(b.group))
        up = tr.update(b, adv, old_lp, None, measure_gap=mode == "auto")
        runs[mode] = (b, old_lp, ents, stats, up, grads[0])
    (ba, lpa, ena, sa, ua, ga), (bb, lpb, enb, sb, ub, gb) = runs["auto"], runs["always"]
    assert sa["old_logprob_forward"] == 0.0 and sb["old_logprob_forward"] == 1.0
    assert ba.tokens == bb.tokens and len(ba) > 0
    assert len(lpa) == len(lpb) == len(ena) == len(enb) == len(ba)
    assert float((torch.cat(lpa) - torch.cat(lpb)).abs().max()) < 1e-5
    assert float((torch.cat(ena) - torch.cat(enb)).abs().max()) < 1e-5
    assert ua["loss"] == pytest.approx(ub["loss"], abs=1e-6)
    for x, y in zip(ga, gb):
        assert float((x - y).abs().max()) <= 1e-4 * max(1e-3, float(y.abs().max()))
    assert 0 < ua["logp_gap_max"] < 1e-4

    for over2 in ({"dtype": "bf16"}, {"top_p": 0.9}, {"old_logprob_forward": "always"}):
        tr = RLTrainer(copy.deepcopy(base), world["tok"], make_cfg("dapo", **over2), world["prompts"])
        assert not tr._engine_logprobs_are_old(), over2
    assert RLTrainer(copy.deepcopy(base), world["tok"], make_cfg("dapo", temperature=1.3),
                     world["prompts"])._engine_logprobs_are_old()


def test_dual_clip_setting_reaches_the_loss(world, model):
    """clip_ratio_c (verl's dual clip, default 3) is applied by the trainer: one sequence with
    advantage -1 whose old log-probs are ln(10) below the current ones (ratio 10 on every token)
    has per-token loss -min(r A, clip(r) A) = -min(-10, -1.28) = 10 without dual clip and
    min(10, c |A|) = 3 with c = 3 (token mean, so the loss is exactly that), and then no gradient
    (the capped loss is constant); c = 0 or None switch it off; c must be > 1."""
    with pytest.raises(ValueError, match="clip_ratio_c"):
        make_cfg("dapo", clip_ratio_c=1.0)
    assert make_cfg("dapo").clip_ratio_c == 3.0
    results = {}
    for c in (3.0, 0, None):
        tr = RLTrainer(copy.deepcopy(world["model"]), world["tok"], make_cfg("dapo", clip_ratio_c=c, lr=1e-3),
                       world["prompts"])
        b = tr._rollout(0, 0, group_offset=0)
        i = max(range(len(b)), key=lambda j: len(b.tokens[j]))
        one = b.select([i])
        cur, _, _ = tr._old_logprobs(one)
        old = [cur[0] - math.log(10.0)]
        results[c] = tr.update(one, torch.tensor([-1.0]), old, None)
    assert results[3.0]["loss"] == pytest.approx(3.0, abs=1e-5)
    assert results[3.0]["dual_clip_frac"] == pytest.approx(1.0)
    assert results[3.0]["grad_norm"] == 0.0
    for c in (0, None):
        assert results[c]["loss"] == pytest.approx(10.0, rel=1e-5)
        assert results[c]["dual_clip_frac"] == 0.0 and results[c]["grad_norm"] > 0


def test_prompt_schedule(world, model):
    """Without a group filter step k trains on batch k of the seeded permutation (consecutive,
    nothing skipped); with dynamic sampling step k owns a block of max_gen_rounds batches, one
    per round."""
    P = SHARED["prompts_per_step"]
    tr = RLTrainer(model, world["tok"], make_cfg("empo"), world["prompts"])
    perm = [world["prompts"][i]["id"] for i in tr.order]
    for k in range(4):
        assert [p["id"] for p in tr._prompts_for(k, 0)] == perm[k * P:(k + 1) * P]
    dapo = RLTrainer(model, world["tok"], make_cfg("dapo", max_gen_rounds=3), world["prompts"])
    assert dapo.order == tr.order
    for k in range(2):
        for r in range(3):
            assert [p["id"] for p in dapo._prompts_for(k, r)] == perm[(3 * k + r) * P:(3 * k + r + 1) * P]
    n = len(perm)  # wraps around at the end of the permutation
    assert [p["id"] for p in tr._prompts_for(n // P + 1, 0)][0] == perm[((n // P + 1) * P) % n]


# ------------------------------------------------------------------------------- learning


def test_trivial_reward_reaches_near_max(world, model):
    """GRPO on the token-frequency reward (share of '7' tokens in the completion) drives the
    policy to emit almost only '7' within 40 steps: the trainer's gradient points uphill."""
    cfg = make_cfg("grpo", reward="token_frequency", target_token="7", max_new_tokens=8, lr=1e-3, steps=40)
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"])
    assert tr.target_id == world["tok"].convert_tokens_to_ids("7") != world["tok"].unk_token_id
    hist = tr.train()
    assert len(hist) == 40 and [h["step"] for h in hist] == list(range(40))
    first = hist[0]["reward_mean"]
    last3 = float(np.mean([h["reward_mean"] for h in hist[-3:]]))
    assert last3 >= 0.8, [round(h["reward_mean"], 3) for h in hist]
    assert last3 > first + 0.5


def test_correctness_reward_rises(world, model):
    """GRPO with the +1/-1 correctness reward on a fixed pool of 16 prompts (all of them in every
    step, so batch accuracy is measured on the same problems throughout) raises accuracy: the
    mean over the last 5 of 30 steps clearly exceeds the mean over the first 5."""
    pool = world["prompts"][:16]
    cfg = make_cfg("grpo", prompts_per_step=16, lr=1e-3, warmup_steps=3, steps=30,
                   mini_batch_size=128, micro_batch_size=128)
    tr = RLTrainer(model, world["tok"], cfg, pool)
    hist = tr.train()
    acc = [h["accuracy"] for h in hist]
    first, last = float(np.mean(acc[:5])), float(np.mean(acc[-5:]))
    assert last > first + 0.05, np.round(acc, 2).tolist()


def test_em_ft_lowers_entropy(world, model):
    """EM-FT (minimise the token entropy of self-sampled outputs) lowers the policy's mean token
    entropy on its own samples within 5 steps."""
    cfg = make_cfg("em_ft", lr=1e-3, steps=5)
    assert cfg.objective == "entropy" and cfg.reward == "none"
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"])
    hist = tr.train()
    ent = [h["token_entropy_mean"] for h in hist]
    assert all(np.isfinite(ent))
    assert ent[-1] < 0.9 * ent[0], ent
    assert all(h["updates"] == 1 and h["entropy_loss"] > 0 for h in hist)


# ------------------------------------------------------------------------------- resume


def test_resume_matches_uninterrupted(world, tmp_path):
    """A run killed after its step-2 checkpoint and resumed by a *new* trainer on a fresh copy of
    the initial model continues exactly as the uninterrupted run: same losses, rewards and
    rollouts at steps 2 and 3 and the same final weights (model, optimizer, mini-batch shuffle
    RNG and data order all restored). Two mini-batches per step exercise the shuffle RNG."""
    base = world["model"]
    cfg = make_cfg("grpo", lr=1e-3, steps=4, checkpoint_every=2, mini_batch_size=32, micro_batch_size=16)

    a = RLTrainer(copy.deepcopy(base), world["tok"], cfg, world["prompts"], work_dir=tmp_path / "a")
    hist_a = a.train()
    assert len(hist_a) == 4 and all(h["updates"] == 2 for h in hist_a)

    b1 = RLTrainer(copy.deepcopy(base), world["tok"], cfg, world["prompts"], work_dir=tmp_path / "b")
    b1.train_step()
    b1.train_step()
    assert (tmp_path / "b" / "checkpoints" / "step-000002").is_dir()
    del b1  # "killed"

    b2 = RLTrainer(copy.deepcopy(base), world["tok"], cfg, world["prompts"], work_dir=tmp_path / "b")
    assert b2.step == 2 and len(b2.history) == 2
    # Resumed weights are the step-2 weights, not the fresh copy's.
    assert state_max_diff(b2.model, base) > 1e-6
    hist_b = b2.train()
    assert [h["step"] for h in hist_b] == [0, 1, 2, 3]
    for k in range(4):
        for key in ("loss", "reward_mean", "accuracy", "grad_norm"):
            assert hist_b[k][key] == pytest.approx(hist_a[k][key], abs=1e-6), (k, key)
    assert state_max_diff(a.model, b2.model) < 1e-5
    for k in (2, 3):
        ra = pq.read_table(tmp_path / "a" / "rollouts" / f"step-{k:06d}.parquet")
        rb = pq.read_table(tmp_path / "b" / "rollouts" / f"step-{k:06d}.parquet")
        assert ra.column("token_ids").to_pylist() == rb.column("token_ids").to_pylist()
        assert ra.column("prompt_id").to_pylist() == rb.column("prompt_id").to_pylist()


# ------------------------------------------------------------------------------- DAPO filter


def _group_rows(b):
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(b.group):
        groups.setdefault(g, []).append(i)
    return groups


def test_dynamic_sampling_filters_and_refills(world, model):
    """DAPO dynamic sampling (overlong penalty off, so the reward is pure correctness): groups
    whose rewards are all equal are dropped and further rounds of fresh prompts refill the step to
    exactly prompts_per_step groups; a step that cannot be filled within max_gen_rounds warns
    (RuntimeWarning) and trains on what it kept, and an all-uninformative step trains on nothing
    without crashing."""
    P, G = SHARED["prompts_per_step"], SHARED["group_size"]
    cfg = make_cfg("dapo", overlong=False, lr=1e-4, steps=3, max_gen_rounds=3)
    assert cfg.dynamic_sampling
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"])

    # One step inspected directly.
    b, rewards, stats, old_lp, ents, refs = tr.collect(0)
    groups = _group_rows(b)
    assert stats["zero_std_groups"] > 0, "the fixture should produce some all-equal groups"
    assert stats["groups_seen"] == P * stats["gen_rounds"]
    assert len(groups) == P and len(b) == P * G == stats["kept_sequences"]
    assert stats["gen_rounds"] > 1 and max(b.gen_round) > 0, "the step must have been refilled"
    for g, idx in groups.items():
        assert len(idx) == G
        assert float(rewards[idx].std()) > 0, f"group {g} has constant rewards"
        assert len({b.gen_round[i] for i in idx}) == 1
    assert len(rewards) == len(old_lp) == len(ents) == len(b) and refs is None

    # Whole steps: every step either fills P groups or says it could not.
    for _ in range(cfg.steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = tr.train_step()
        warned = any(issubclass(w.category, RuntimeWarning) for w in caught)
        assert s["kept_sequences"] == P * G or warned, s
        assert s["groups_seen"] == P * s["gen_rounds"]
    assert any(h["gen_rounds"] > 1 for h in tr.history)

    # One round only: the dropped groups cannot be refilled -> warning, partial batch.
    short = RLTrainer(copy.deepcopy(world["model"]), world["tok"], make_cfg("dapo", overlong=False, max_gen_rounds=1),
                      world["prompts"])
    with pytest.warns(RuntimeWarning, match="informative groups"):
        s = short.train_step()
    assert s["gen_rounds"] == 1 and 0 < s["kept_sequences"] < P * G
    assert s["kept_sequences"] == G * round(s["kept_prompt_ratio"] * P)

    # Impossible: every gold answer is wrong, so every group is all -1 and nothing is kept.
    wrong = [dict(p, answer="99999") for p in world["prompts"]]
    imp = RLTrainer(copy.deepcopy(world["model"]), world["tok"], make_cfg("dapo", overlong=False, max_gen_rounds=2),
                    wrong)
    before = copy.deepcopy(imp.model.state_dict())
    with pytest.warns(RuntimeWarning, match="0/8 informative groups"):
        s = imp.train_step()
    assert s["kept_sequences"] == 0 and s["updates"] == 0 and s["loss"] == 0.0
    assert s["gen_rounds"] == 2 and s["frac_zero_std_groups"] == 1.0 and s["reward_mean"] == -1.0
    assert imp.step == 1
    after = imp.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dapo_dynamic_sampling_filters_on_accuracy_not_overlong_penalty(world, model):
    """DAPO's dynamic-sampling constraint is on correctness (Eq. 11: 0 < #correct < G; verl
    ``filter_groups.metric=acc``; objectives.keep_informative_groups: "the overlong penalty is
    excluded"): with the soft overlong penalty on, a group whose samples are all wrong (or all
    right) but of different lengths is still uninformative and must not be kept."""
    G = SHARED["group_size"]
    cfg = make_cfg("dapo", overlong_cache=8, max_gen_rounds=3)  # L_exp = 16 - 8 = 8 tokens
    assert cfg.overlong and cfg.dynamic_sampling
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"])
    b, rewards, stats, *_ = tr.collect(0)
    assert len(b) > 0
    for g, idx in _group_rows(b).items():
        n_correct = sum(b.correct[i] for i in idx)
        assert 0 < n_correct < G, (f"kept group {g} has {n_correct}/{G} correct; rewards "
                                   f"{[round(float(rewards[i]), 3) for i in idx]}")
    # Uniform-accuracy groups must be counted as zero-std groups.
    assert stats["zero_std_groups"] > 0


# ------------------------------------------------------------------------------- EMPO


def test_empo_never_reads_labels(world, model):
    """EMPO rewards are a function of the sampled answers only: collecting the same step with
    prompts that carry no answer, with the true answers and with answers shuffled across prompts
    gives identical rewards; a trainer on label-free prompts trains (and reports no accuracy),
    while the label-based 'correct' reward refuses label-free prompts."""
    tok = world["tok"]
    true = world["prompts"]
    free = [{"id": p["id"], "prompt": p["prompt"]} for p in true]
    answers = [p["answer"] for p in true]
    shuffled = [dict(p, answer=a) for p, a in zip(true, answers[7:] + answers[:7])]
    cfg = make_cfg("empo", lr=1e-4, steps=1)

    t_free = RLTrainer(model, tok, cfg, free)
    assert not t_free.has_labels
    b1, r1, s1, *_ = t_free.collect(0)
    runs = [RLTrainer(model, tok, cfg, prompts).collect(0) for prompts in (true, shuffled)]
    for b2, r2, s2, *_ in runs:
        assert b1.tokens == b2.tokens and b1.prompt_ids == b2.prompt_ids
        assert torch.equal(r1, r2)
        assert s1["semantic_entropy"] == s2["semantic_entropy"] and s1["empo_p_max"] == s2["empo_p_max"]
        assert s2["accuracy"] is not None
    # The labels did differ in what they say about the samples, so equality is not vacuous.
    assert not any(b1.correct)
    assert runs[0][0].correct != runs[1][0].correct
    assert s1["accuracy"] is None
    assert float(r1.min()) >= 0 and 0 < float(r1.max()) <= 1
    assert len(set(r1.tolist())) > 1  # a non-trivial reward signal

    s = t_free.train_step()
    assert "accuracy" not in s and np.isfinite(s["loss"]) and s["updates"] == 1
    assert "semantic_entropy" in s and "empo_p_max" in s

    with pytest.raises(ValueError, match="answer"):
        RLTrainer(copy.deepcopy(world["model"]), tok, make_cfg("grpo"), free)


# ------------------------------------------------------------------------------- failures


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(world, model, tmp_path):
    """A non-finite loss stops training with a FloatingPointError naming the method and the step,
    and the last good checkpoint (step 1) survives with finite weights that a new trainer can
    resume from."""
    cfg = make_cfg("grpo", lr=1e-4, steps=5, checkpoint_every=1)
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"], work_dir=tmp_path)
    tr.train_step()
    ckpt = tmp_path / "checkpoints" / "step-000001"
    assert ckpt.is_dir()
    with torch.no_grad():
        tr.model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError) as err:
        tr.train_step()
    msg = str(err.value)
    assert "grpo" in msg and "step 1" in msg
    assert tr.step == 1 and len(tr.history) == 1
    assert ckpt.is_dir()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]

    again = RLTrainer(copy.deepcopy(world["model"]), world["tok"], cfg, world["prompts"], work_dir=tmp_path)
    assert again.step == 1
    assert all(torch.isfinite(p).all() for p in again.model.parameters())


# ------------------------------------------------------------------------------- persistence


def test_rollout_parquet_per_step(world, model, tmp_path):
    """With a work dir every step writes rollouts/step-XXXXXX.parquet: one row per (prompt, sample)
    with the documented columns, rewards whose mean is the step's logged reward_mean (no filter),
    group-normalised advantages of those rewards, and per-token old log-probs/entropies aligned
    with the token ids."""
    P, G = SHARED["prompts_per_step"], SHARED["group_size"]
    cfg = make_cfg("grpo", lr=1e-4, steps=2)
    tr = RLTrainer(model, world["tok"], cfg, world["prompts"], work_dir=tmp_path)
    hist = tr.train()
    files = sorted(p.name for p in (tmp_path / "rollouts").glob("*.parquet"))
    assert files == ["step-000000.parquet", "step-000001.parquet"]
    required = {"prompt_id", "sample_idx", "token_ids", "reward", "advantage", "old_logprobs", "entropies",
                "kept", "weight_version"}
    for step, h in enumerate(hist):
        t = pq.read_table(tmp_path / "rollouts" / f"step-{step:06d}.parquet")
        assert required <= set(t.column_names)
        d = t.to_pydict()
        assert t.num_rows == P * G == h["kept_sequences"]
        assert sorted(set(d["prompt_id"])) == sorted(p["id"] for p in tr._prompts_for(step, 0))
        assert len(set(zip(d["prompt_id"], d["sample_idx"]))) == P * G
        assert set(d["sample_idx"]) == set(range(G))
        assert all(d["kept"]) and set(d["weight_version"]) == {step}
        reward = np.asarray(d["reward"], dtype=np.float64)
        assert reward.mean() == pytest.approx(h["reward_mean"], abs=1e-6)
        assert float(np.mean(d["correct"])) == pytest.approx(h["accuracy"], abs=1e-9)
        assert set(np.round(reward, 6)) <= {-1.0, 1.0}
        gid = {p: i for i, p in enumerate(dict.fromkeys(d["prompt_id"]))}
        adv = obj.group_advantages(torch.tensor(d["reward"]), torch.tensor([gid[p] for p in d["prompt_id"]]))
        assert np.allclose(d["advantage"], adv.numpy(), atol=1e-5)
        for toks, lp, en in zip(d["token_ids"], d["old_logprobs"], d["entropies"]):
            assert len(toks) == len(lp) == len(en) > 0
            assert max(lp) <= 0 and min(en) >= 0


def test_no_training_prompts_is_a_clear_error(world, model):
    """A world without a train split (e.g. a test-only external file) stops with a clear error."""
    with pytest.raises(ValueError, match="no training prompts"):
        RLTrainer(model, world["tok"], make_cfg("empo"), [])
