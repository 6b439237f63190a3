"""One RL training loop for GRPO, DAPO, EMPO, EM-RL and EM-FT.

Every method is the same loop with different pieces switched on (see :data:`entroflow.rl.settings.METHOD_PRESETS`);
the math lives in :mod:`entroflow.rl.objectives`. One step ``k``:

1. **prompts**: a seeded permutation of the training prompts is read in consecutive slices of
   ``prompts_per_step``, so the data order is a function of (seed, step) and a resumed run sees
   exactly the prompts it would have seen (:meth:`RLTrainer._prompts_for`: batch ``k`` without a
   filter; with dynamic sampling or EMPO's filter, block ``k`` of ``max_gen_rounds`` batches, one
   per generation round);
2. **rollout**: ``G`` samples per prompt from the current policy through the spine's rollout
   engine, seeded per (step, round, prompt, sample);
3. **old log-probs** ``pi_old``: the log-probs of the policy that sampled, before any update.
   Where the engine's recorded log-probs provably *are* those (fp32, the engine runs on the
   trainer's own weights, sampling from the full tempered distribution: temperature > 0, top-p 1,
   top-k off, no logits processors; :meth:`RLTrainer._engine_logprobs_are_old`) they are used
   as they are, and the no-grad forward is skipped (as TRL does when generation and optimisation
   are aligned); the gap between them and the trainer's own log-probs is then measured on the
   first mini-batch's update forward, which computes the same log-probs before any optimizer
   step. Otherwise (bf16, top-p < 1, ``old_logprob_forward="always"``) one no-grad trainer
   forward over every sequence *before* any update gives them (as verl does; ratio exactly 1 on
   the first mini-batch), and the gap is measured there. Either way it is logged as
   ``logp_gap_*`` (a rollout/trainer misalignment shows up there first). The reference model's
   log-probs for the KL term come from one no-grad pass at the same point;
4. **reward**: correctness (+1/-1, DAPO Eq. 7), EMPO cluster probability (no labels), EM-RL
   sequence log-prob or negative token entropy, or a trivial token-frequency reward used to
   prove the trainer; plus DAPO's soft overlong penalty when on;
5. **filter**: DAPO dynamic sampling drops groups whose rewards are all equal and samples
   further rounds of fresh prompts until ``prompts_per_step`` informative groups are kept or
   ``max_gen_rounds`` is reached (then it trains on what it has and warns, never crashes);
   EMPO's optional band filter keeps groups with ``empo_low <= p_max < 1``;
6. **advantage**: group-normalised (GRPO/DAPO/EMPO), Dr.GRPO (no std) or RLOO (EM-RL);
7. **update**: ``ppo_epochs`` passes over shuffled mini-batches; each mini-batch is one AdamW
   step, accumulated over micro-batches with the mini-batch's *global* token (or sequence)
   count as normaliser, so the gradient does not depend on the micro-batch split. The policy
   loss has verl's dual clip (``clip_ratio_c``) on by default. EM-FT replaces the policy loss by
   the token entropy of the sampled outputs.

Forward passes (update, old and reference log-probs) go through :class:`entroflow.lean_lm.LeanLM`
when it supports the architecture: the same function as the Hugging Face forward on the same
weights, but with every matmul on the distinct tokens only (no padding, and a prompt shared by
the ``G`` samples of a group is computed once). The rollout engine uses it for decoding.

Checkpoints (Hugging Face model + optimiser + RNG + history) are written atomically every
``checkpoint_every`` steps into a work dir that outlives a killed process; a new trainer on the
same work dir resumes from the last one and continues exactly as the uninterrupted run would.
A non-finite loss stops training with :class:`FloatingPointError`, keeping the last good
checkpoint.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from entroflow import answers, lean_lm
from entroflow.model import runtime_device
from entroflow.rl import objectives as obj
from entroflow.rl.settings import TrainConfig
from entroflow.rollout import HFRolloutEngine, SamplingParams

log = logging.getLogger(__name__)

@dataclass
class Batch:
    """The sequences of one RL step, one entry per (prompt, sample)."""

    prompt_ids: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    sample_idx: list[int] = field(default_factory=list)
    prompt_tokens: list[list[int]] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    rollout_logprobs: list[np.ndarray] = field(default_factory=list)
    rollout_entropies: list[np.ndarray] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    answer: list[str | None] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    gen_round: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, idx: list[int]) -> "Batch":
        return Batch(**{k: [getattr(self, k)[i] for i in idx] for k in self.__dataclass_fields__})

    def extend(self, other: "Batch") -> None:
        for k in self.__dataclass_fields__:
            getattr(self, k).extend(getattr(other, k))


def sequence_logits(model, prompt_tokens: list[list[int]], tokens: list[list[int]], pad_id: int,
                    lean: lean_lm.LeanLM | None = None):
    """Logits that predict each completion token, ``[B, C, V]`` float32, the completion tokens
    ``[B, C]`` and the completion mask ``[B, C]`` (positions past a completion hold 0 logits and
    ``pad_id``).

    HF layout: prompts left-padded to P, completions right-padded to C, so row ``b`` is
    ``[pad.. prompt | completion ..pad]`` and the logits at positions ``P-1 .. P+C-2`` predict
    completion tokens ``0 .. C-1``. Position ids come from the attention-mask cumsum, exactly as
    in the rollout engine, so left padding does not shift RoPE positions and the trainer's
    log-probs match the sampler's. With ``lean`` (a :class:`entroflow.lean_lm.LeanLM` of
    ``model``) the same logits come from its packed forward (no padding, shared prompts).
    """
    B = len(tokens)
    C = max(1, max(len(t) for t in tokens))
    device = next(model.parameters()).device
    if lean is not None:
        pack = lean_lm.Packed(prompt_tokens, tokens, device)
        lengths = torch.tensor([len(t) for t in tokens], device=device)
        mask = torch.arange(C, device=device)[None, :] < lengths[:, None]
        flat = lean.score(pack).float()  # [M, V], row-major over the mask's True entries
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        logits = flat.new_zeros(B * C, flat.shape[-1]).index_copy(0, rows, flat).view(B, C, -1)
        targets = torch.full((B * C,), pad_id, dtype=torch.long, device=device).index_copy(0, rows, pack.targets)
        return logits, targets.view(B, C), mask
    P = max(len(p) for p in prompt_tokens)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + C), dtype=torch.long)
    for b, (p, t) in enumerate(zip(prompt_tokens, tokens)):
        ids[b, P - len(p):P] = torch.tensor(p)
        attn[b, P - len(p):P] = 1
        if t:
            ids[b, P:P + len(t)] = torch.tensor(t)
            attn[b, P:P + len(t)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device))
    logits = out.logits[:, P - 1:P + C - 1].float()
    mask = attn[:, P:P + C].bool().to(device)
    return logits, ids[:, P:P + C].to(device), mask


def _step_seed(seed: int, *parts) -> int:
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)


class RLTrainer:
    """Trains ``model`` in place on ``prompts`` (dicts with id, prompt and, for diagnostics and
    the correctness reward, answer) with the method described by ``cfg``."""

    def __init__(self, model, tokenizer, cfg: TrainConfig, prompts: list[dict], work_dir: Path | None = None,
                 eval_prompts: list[dict] | None = None, step_callback: Callable[[int, dict], None] | None = None,
                 lean: bool | None = None, prompt_format=None):
        """``lean``: run forwards through :class:`entroflow.lean_lm.LeanLM` (None: wherever it
        supports the model; False: always the Hugging Face forward). ``prompt_format``
        (:class:`entroflow.rollout.PromptFormat`) renders prompts for the engine, e.g. through a
        chat template; the update reuses the engine's prompt and completion tokens as they are."""
        self.cfg, self.tok, self.prompts = cfg, tokenizer, prompts
        # A fixed random subset (the same for every method and seed): the test split is ordered
        # by difficulty level, so its head would be all easy problems.
        pool = list(eval_prompts or [])
        self.eval_prompts = random.Random(0).sample(pool, min(cfg.eval_prompts, len(pool)))
        self.device = torch.device(runtime_device(cfg.device))
        self.model = model.to(self.device)
        self.pad_id = tokenizer.pad_token_id
        use_lean = lean is not False and lean_lm.supports(self.model)
        self.engine = HFRolloutEngine(self.model, tokenizer, batch_size=cfg.rollout_batch_size, device=self.device,
                                      lean=use_lean, prompt_format=prompt_format)
        self.lean = lean_lm.LeanLM(self.model) if use_lean else None
        self.ref_model = copy.deepcopy(model).eval() if cfg.kl_coef > 0 else None
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)
        self.ref_lean = lean_lm.LeanLM(self.ref_model) if use_lean and self.ref_model is not None else None
        # The fused kernel (one op per parameter instead of ~10) computes the same update.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay, fused=self.device.type in ("cpu", "cuda"))
        self.work_dir = Path(work_dir) if work_dir else None
        self.step_callback = step_callback
        self.history: list[dict] = []
        self.evals: list[dict] = []  # held-out accuracy at step 0 and every eval_every steps
        self.step = 0
        if not prompts:
            raise ValueError("RL has no training prompts (the data has no 'train' split; a test-only "
                             "data.external file cannot be trained on)")
        self.has_labels = all("answer" in p for p in prompts)
        if cfg.reward == "correct" and not self.has_labels:
            raise ValueError("the 'correct' reward needs an answer for every training prompt")
        self.target_id = tokenizer.convert_tokens_to_ids(cfg.target_token) if cfg.reward == "token_frequency" else None
        order = list(range(len(prompts)))
        random.Random(cfg.seed).shuffle(order)
        self.order = order
        self.rng = random.Random(_step_seed(cfg.seed, "minibatch-shuffle"))
        torch.manual_seed(cfg.seed)
        if self.work_dir:
            self._resume()

    # ---------------------------------------------------------------- data and rollouts
    def _prompts_for(self, step: int, rnd: int) -> list[dict]:
        """Deterministic prompts of (step, round): consecutive slices of ``prompts_per_step`` (P)
        prompts of the seeded permutation, wrapping around at its end.

        Without a group filter a step has one round and takes batch ``k``: prompts
        ``[k P, (k + 1) P)``, so consecutive steps read consecutive prompts and none is skipped.
        With dynamic sampling or EMPO's band filter, step ``k`` owns the block of
        ``R = max_gen_rounds`` batches ``[k R P, (k + 1) R P)`` and round ``r`` takes the ``r``-th
        batch of it; the rounds a step does not need are skipped (its prompts are not trained on
        in that pass over the data), which keeps the prompts of every (step, round) fixed whatever
        earlier steps kept, so a resumed run sees the same data.
        """
        n, P = len(self.order), self.cfg.prompts_per_step
        start = (step * self._rounds + rnd) * P
        return [self.prompts[self.order[(start + i) % n]] for i in range(P)]

    @property
    def _rounds(self) -> int:
        """Generation rounds a step may use: ``max_gen_rounds`` with a group filter, else 1."""
        return self.cfg.max_gen_rounds if self.cfg.dynamic_sampling or self.cfg.empo_filter else 1

    def _engine_logprobs_are_old(self) -> bool:
        """Whether the engine's recorded log-probs and entropies are exactly what the no-grad
        old-log-prob forward would compute, so that forward is redundant.

        The engine records ``log q(token)`` and ``H(q)`` of its sampling distribution ``q``
        (entroflow.rollout). The forward computes ``log_softmax(z / T)`` and its entropy with
        the trainer's weights. They are the same quantities when

        * the engine runs the trainer's own model (same weights: sampling happens before any
          update of the step, for every round, so this holds for every mini-batch and epoch);
        * ``q`` is the full tempered distribution: ``T > 0`` (greedy records ``T = 1``
          log-probs), top-p 1 and top-k off (the trainer never passes either, nor logits
          processors) -- with truncation ``q`` is renormalised over the kept support and its
          log-prob differs from the trainer's;
        * fp32: in bf16 autocast the two forwards round differently (batch shapes differ), by
          far more than fp32's ~1e-6, so the ratio would not start at 1.

        ``old_logprob_forward="always"`` keeps the forward regardless.
        """
        cfg = self.cfg
        return (cfg.old_logprob_forward == "auto" and cfg.dtype == "fp32" and cfg.temperature > 0
                and cfg.top_p >= 1.0 and self.engine.model is self.model)

    def _tempered(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the distribution the tokens were sampled from (verl divides by the rollout
        temperature in both the old and the new log-probs; a no-op at T = 1)."""
        t = self.cfg.temperature
        return logits / t if t not in (0.0, 1.0) else logits

    def _autocast(self):
        if self.cfg.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _rollout(self, step: int, rnd: int, group_offset: int) -> Batch:
        cfg = self.cfg
        prompts = self._prompts_for(step, rnd)
        params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                max_new_tokens=cfg.max_new_tokens, seed=_step_seed(cfg.seed, "rollout", step, rnd))
        ids = [f"{p['id']}@{step}.{rnd}.{i}" for i, p in enumerate(prompts)]  # unique even if a prompt repeats
        with self._autocast():
            table = self.engine.generate([p["prompt"] for p in prompts], ids, params)
        by_id = {i: (g + group_offset, p) for g, (i, p) in enumerate(zip(ids, prompts))}
        cols = {k: table.column(k) for k in ("prompt_id", "sample_idx", "prompt_token_ids", "token_ids", "text",
                                             "finish_reason")}
        cols = {k: v.to_pylist() for k, v in cols.items()}
        lps, ens = _split_list_column(table.column("logprobs")), _split_list_column(table.column("entropies"))
        b = Batch()
        for j in range(table.num_rows):
            g, p = by_id[cols["prompt_id"][j]]
            text = cols["text"][j]
            ans = answers.extract(text, cfg.answer_format)
            b.prompt_ids.append(p["id"]), b.group.append(g), b.sample_idx.append(cols["sample_idx"][j])
            b.prompt_tokens.append(cols["prompt_token_ids"][j]), b.tokens.append(cols["token_ids"][j])
            b.text.append(text), b.finish.append(cols["finish_reason"][j])
            b.rollout_logprobs.append(lps[j]), b.rollout_entropies.append(ens[j])
            b.answer.append(ans)
            # Correctness is computed for every method as a diagnostic; only the `correct`
            # reward reads it (label-free methods never see it: see _rewards).
            b.correct.append(ans is not None and "answer" in p and answers.is_correct(ans, p["answer"], cfg.answer_format))
            b.gen_round.append(rnd)
        return b

    @torch.no_grad()
    def _old_logprobs(self, b: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
        """Per-sequence token log-probs and entropies of the current policy (and the reference's
        log-probs), from one no-grad forward per micro-batch."""
        logps, ents = [], []
        if self.lean is None:
            self.model.eval()
        for i in range(0, len(b), self.cfg.micro_batch_size):
            sl = slice(i, i + self.cfg.micro_batch_size)
            with self._autocast():
                logits, targets, mask = sequence_logits(self.model, b.prompt_tokens[sl], b.tokens[sl], self.pad_id,
                                                        self.lean)
            logits = self._tempered(logits)
            logps += _unpad(obj.token_logprobs(logits, targets), mask)
            ents += _unpad(obj.token_entropy(logits), mask)
        return logps, ents, self._ref_logprobs(b)

    @torch.no_grad()
    def _ref_logprobs(self, b: Batch) -> list[torch.Tensor] | None:
        """Per-sequence token log-probs of the frozen reference model (None without KL)."""
        if self.ref_model is None:
            return None
        refs = []
        for i in range(0, len(b), self.cfg.micro_batch_size):
            sl = slice(i, i + self.cfg.micro_batch_size)
            with self._autocast():
                logits, targets, mask = sequence_logits(self.ref_model, b.prompt_tokens[sl], b.tokens[sl],
                                                        self.pad_id, self.ref_lean)
            refs += _unpad(obj.token_logprobs(self._tempered(logits), targets), mask)
        return refs

    def _rewards(self, b: Batch, logps, ents) -> tuple[torch.Tensor, dict]:
        """Scalar reward per sequence. Only the `correct` reward reads labels (``b.correct``)."""
        cfg, info = self.cfg, {}
        if cfg.reward == "correct":
            r = torch.tensor([1.0 if c else -1.0 for c in b.correct])
        elif cfg.reward == "empo":
            r, sem_h, p_max = obj.empo_rewards(b.answer, b.group, cfg.answer_format)
            info["semantic_entropy"], info["p_max"] = sem_h, p_max
        elif cfg.reward == "em_sequence":
            r = obj.em_rl_rewards("sequence", logps)
        elif cfg.reward == "em_token":
            r = obj.em_rl_rewards("token", ents)
        elif cfg.reward == "token_frequency":
            r = torch.tensor([sum(t == self.target_id for t in toks) / max(1, len(toks)) for toks in b.tokens])
        else:
            r = torch.zeros(len(b))
        # Dynamic sampling filters on the outcome score alone (DAPO: 0 < #correct < G; verl's
        # filter metric is accuracy): length differences must not make a group look informative.
        info["filter_metric"] = r.float()
        if cfg.overlong:
            pen = obj.overlong_penalty(torch.tensor([len(t) for t in b.tokens]), cfg.max_new_tokens,
                                       cfg.overlong_cache, cfg.overlong_factor)
            info["overlong_penalty"] = float(pen.mean())
            r = r + pen
        return r.float(), info

    def collect(self, step: int) -> tuple[Batch, torch.Tensor, dict, list, list, list | None]:
        """Rollouts, rewards and filtering for one step (several rounds under dynamic sampling)."""
        cfg = self.cfg
        kept = Batch()
        kept_r, kept_lp, kept_en, kept_ref = [], [], [], []
        stats = {"gen_rounds": 0, "groups_seen": 0, "zero_std_groups": 0, "rollout_s": 0.0, "old_logprob_s": 0.0,
                 "reward_s": 0.0, "sequences_generated": 0}
        from_engine = self._engine_logprobs_are_old()
        stats["old_logprob_forward"] = 0.0 if from_engine else 1.0
        sem, pmax, logp_gap, all_correct, all_rewards, overlong = [], [], [], [], [], []
        self.generated = []  # every round's sequences, kept or filtered, for the step's Parquet
        for rnd in range(self._rounds):
            t0 = time.perf_counter()
            b = self._rollout(step, rnd, group_offset=rnd * cfg.prompts_per_step)
            t1 = time.perf_counter()
            if from_engine:
                lps = [torch.from_numpy(x) for x in b.rollout_logprobs]
                ens = [torch.from_numpy(x) for x in b.rollout_entropies]
                refs = self._ref_logprobs(b)
            else:
                lps, ens, refs = self._old_logprobs(b)
                for i in range(len(b)):
                    if len(lps[i]):
                        logp_gap.append(float((lps[i] - torch.from_numpy(b.rollout_logprobs[i])).abs().max()))
            t2 = time.perf_counter()
            r, info = self._rewards(b, lps, ens)
            stats["rollout_s"] += t1 - t0
            stats["old_logprob_s"] += t2 - t1
            stats["reward_s"] += time.perf_counter() - t2
            stats["gen_rounds"] += 1
            stats["sequences_generated"] += len(b)
            all_correct += b.correct
            all_rewards += r.tolist()
            if "overlong_penalty" in info:
                overlong.append(info["overlong_penalty"])
            gids = torch.tensor(b.group)
            informative = obj.keep_informative_groups(info["filter_metric"], gids)
            groups = sorted(set(b.group))
            stats["groups_seen"] += len(groups)
            stats["zero_std_groups"] += sum(1 for g in groups if not bool(informative[gids == g].any()))
            keep = informative if cfg.dynamic_sampling else torch.ones(len(b), dtype=torch.bool)
            if cfg.reward == "empo":
                sem += list(info["semantic_entropy"].values())
                pmax += list(info["p_max"].values())
                if cfg.empo_filter:
                    band = obj.empo_keep(info["p_max"], low=cfg.empo_low)
                    keep = keep & torch.tensor([g in band for g in b.group])
            need = cfg.prompts_per_step - len(set(kept.group))
            keep_groups = [g for g in groups if bool(keep[gids == g].all())][:need]
            idx = [i for i in range(len(b)) if b.group[i] in keep_groups]
            self.generated.append((b, r, lps, ens, set(idx)))
            kept.extend(b.select(idx))
            kept_r += [r[i] for i in idx]
            kept_lp += [lps[i] for i in idx]
            kept_en += [ens[i] for i in idx]
            if refs is not None:
                kept_ref += [refs[i] for i in idx]
            if len(set(kept.group)) >= cfg.prompts_per_step:
                break
        else:
            if cfg.dynamic_sampling or cfg.empo_filter:
                warnings.warn(f"step {step}: only {len(set(kept.group))}/{cfg.prompts_per_step} informative groups "
                              f"after {cfg.max_gen_rounds} generation rounds; training on what was kept",
                              RuntimeWarning, stacklevel=2)
        rewards = torch.stack(kept_r) if kept_r else torch.zeros(0)
        lengths = [len(t) for t in kept.tokens] or [0]
        ent_all = torch.cat(kept_en) if kept_en and sum(len(e) for e in kept_en) else torch.zeros(1)
        q = torch.quantile(ent_all.float(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        stats.update({
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "accuracy": float(np.mean(all_correct)) if self.has_labels else None,
            "frac_zero_std_groups": stats["zero_std_groups"] / max(1, stats["groups_seen"]),
            "kept_prompt_ratio": len(set(kept.group)) / max(1, stats["groups_seen"]),
            "kept_sequences": len(kept), "response_length_mean": float(np.mean(lengths)),
            "response_length_max": float(max(lengths)),
            "response_clip_ratio": float(np.mean([f == "length" for f in kept.finish])) if len(kept) else 0.0,
            "token_entropy_mean": float(ent_all.mean()), "token_entropy_p10": q[0], "token_entropy_p50": q[1],
            "token_entropy_p90": q[2],
        })
        if not from_engine:  # else measured by update() on its first mini-batch
            stats["logp_gap_max"] = max(logp_gap) if logp_gap else 0.0
            stats["logp_gap_mean"] = float(np.mean(logp_gap)) if logp_gap else 0.0
        if overlong:
            stats["overlong_penalty"] = float(np.mean(overlong))
        if sem:
            stats["semantic_entropy"], stats["empo_p_max"] = float(np.mean(sem)), float(np.mean(pmax))
        return kept, rewards, stats, kept_lp, kept_en, (kept_ref if self.ref_model is not None else None)

    # ---------------------------------------------------------------- update
    def _lr(self, step: int) -> float:
        w = self.cfg.warmup_steps
        return self.cfg.lr * min(1.0, (step + 1) / w) if w > 0 else self.cfg.lr

    def update(self, b: Batch, advantages: torch.Tensor, old_lp: list, refs: list | None,
               measure_gap: bool = False) -> dict:
        """PPO epochs over shuffled mini-batches, one AdamW step each.

        With ``measure_gap`` it also logs ``logp_gap_max``/``logp_gap_mean`` (per sequence, the
        largest ``|trainer - engine|`` token log-prob difference; max and mean over sequences)
        from the first mini-batch's forward, which runs before any optimizer step: the
        rollout/trainer agreement check when no old-log-prob forward ran (collect() measures it
        otherwise)."""
        cfg = self.cfg
        if self.lean is None:  # the lean forward has no dropout and ignores the mode (and HF's train() is slow)
            self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self._lr(self.step)
        n = len(b)
        keys = ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl", "kl_ref")
        sums = {"loss": 0.0, "grad_norm": 0.0, "entropy_loss": 0.0, **dict.fromkeys(keys, 0.0)}
        dual_c = cfg.clip_ratio_c or None  # None or 0 switch the dual clip off
        gaps: list[float] = []
        n_updates = 0
        for _ in range(cfg.ppo_epochs):
            order = list(range(n))
            self.rng.shuffle(order)
            for s in range(0, n, cfg.mini_batch_size):
                mb = order[s:s + cfg.mini_batch_size]
                n_tok = sum(len(b.tokens[i]) for i in mb)
                normalizer = float(n_tok if cfg.loss_agg == "token-mean" else sum(1 for i in mb if b.tokens[i]))
                if normalizer == 0:
                    continue
                self.opt.zero_grad(set_to_none=True)
                mb_loss, mb_stats = 0.0, dict.fromkeys(keys, 0.0)
                for m in range(0, len(mb), cfg.micro_batch_size):
                    idx = mb[m:m + cfg.micro_batch_size]
                    with self._autocast():
                        logits, targets, mask = sequence_logits(self.model, [b.prompt_tokens[i] for i in idx],
                                                                [b.tokens[i] for i in idx], self.pad_id, self.lean)
                    logits = self._tempered(logits)
                    frac = mask.sum().item() / max(1, n_tok)  # token share of this micro-batch, for stats
                    logp = obj.token_logprobs(logits, targets)
                    old = _pad([old_lp[i] for i in idx], mask.shape[1]).to(logp.device)
                    if measure_gap and n_updates == 0:  # first mini-batch: no optimizer step yet
                        eng = _pad([b.rollout_logprobs[i] for i in idx], mask.shape[1]).to(logp.device)
                        d = torch.where(mask, (logp.detach() - eng).abs(), torch.zeros_like(eng)).amax(-1)
                        gaps += d[mask.any(-1)].tolist()
                    if cfg.objective == "entropy":
                        loss = obj.entropy_loss(logits, mask, normalizer=float(n_tok))
                        mb_stats["entropy_loss"] = mb_stats.get("entropy_loss", 0.0) + loss.item()
                    else:
                        adv = advantages[idx].to(logp.device)
                        loss, st = obj.policy_loss(logp, old, adv, mask, cfg.eps_low, cfg.eps_high, cfg.loss_agg,
                                                   normalizer=normalizer, dual_clip_c=dual_c,
                                                   max_len=cfg.max_new_tokens)
                        for k in ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl"):
                            mb_stats[k] += st[k] * frac
                        if refs is not None and cfg.kl_coef > 0:
                            ref = _pad([refs[i] for i in idx], mask.shape[1]).to(logp.device)
                            kl = obj.aggregate_tokens(obj.kl_k3(logp, ref), mask, cfg.loss_agg, normalizer,
                                                      max_len=cfg.max_new_tokens)
                            mb_stats["kl_ref"] += kl.item()
                            loss = loss + cfg.kl_coef * kl
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{cfg.method}: non-finite loss {loss.item()} at step {self.step}; "
                                                 f"the last good checkpoint is kept")
                    loss.backward()
                    mb_loss += loss.item()
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if not torch.isfinite(gn):
                    raise FloatingPointError(f"{cfg.method}: non-finite gradient norm at step {self.step}")
                self.opt.step()
                n_updates += 1
                sums["loss"] += mb_loss
                sums["grad_norm"] += float(gn)
                for k, v in mb_stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        if self.lean is None:
            self.model.eval()
        out = {k: v / max(1, n_updates) for k, v in sums.items()}
        out["updates"] = n_updates
        out["lr"] = self._lr(self.step)
        if measure_gap:
            out["logp_gap_max"] = max(gaps) if gaps else 0.0
            out["logp_gap_mean"] = float(np.mean(gaps)) if gaps else 0.0
        return out

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict:
        cfg, k = self.cfg, self.step
        b, rewards, stats, old_lp, ents, refs = self.collect(k)
        adv = torch.zeros(0)
        if len(b) == 0:
            stats.update({"loss": 0.0, "updates": 0, "lr": self._lr(k)})
        else:
            gids = torch.tensor(b.group)
            if cfg.advantage == "rloo":
                adv = obj.rloo_advantages(rewards, gids)
            else:
                adv = obj.group_advantages(rewards, gids, scale_by_std=cfg.scale_by_std)
            t0 = time.perf_counter()
            stats.update(self.update(b, adv, old_lp, refs, measure_gap=stats["old_logprob_forward"] == 0.0))
            stats["update_s"] = time.perf_counter() - t0
        self._write_rollouts(k, adv)
        stats = {k2: v for k2, v in stats.items() if v is not None}
        stats["step"] = k
        if cfg.eval_every and ((k + 1) % cfg.eval_every == 0 or k + 1 == cfg.steps):
            ev = self.evaluate(k + 1)
            stats.update(ev)
            self.evals.append({"step": k + 1, **ev})
        self.history.append(stats)
        self.step += 1
        if self.work_dir and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
            self.save_checkpoint()
        if self.step_callback:
            self.step_callback(k, stats)
        return stats

    def train(self) -> list[dict]:
        if self.cfg.eval_every and self.step == 0 and not self.evals:
            self.evals.append({"step": 0, **self.evaluate(0)})  # the starting point of the curve
        while self.step < self.cfg.steps:
            self.train_step()
        return self.history

    @torch.no_grad()
    def evaluate(self, at_step: int) -> dict:
        """Held-out greedy and sampled (T=1) accuracy, for the training curve."""
        if not self.eval_prompts:
            return {}
        out = {}
        texts = [p["prompt"] for p in self.eval_prompts]
        ids = [p["id"] for p in self.eval_prompts]
        fmt = self.cfg.answer_format
        for name, params in (("greedy", SamplingParams(n=1, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)),
                             ("sampled", SamplingParams(n=self.cfg.eval_samples, temperature=1.0,
                                                        max_new_tokens=self.cfg.max_new_tokens,
                                                        seed=_step_seed(self.cfg.seed, "eval", at_step)))):
            with self._autocast():
                t = self.engine.generate(texts, ids, params)
            gold = {p["id"]: p["answer"] for p in self.eval_prompts}
            ok = [answers.is_correct(answers.extract(x, fmt), gold[i], fmt)
                  for x, i in zip(t["text"].to_pylist(), t["prompt_id"].to_pylist())]
            out[f"eval_{name}_acc"] = float(np.mean(ok))
        return out

    # ---------------------------------------------------------------- persistence
    def _write_rollouts(self, step: int, kept_adv: torch.Tensor) -> None:
        """Every sequence generated in the step, kept or filtered out, so any reward or advantage
        can be recomputed later. ``kept_adv`` holds the advantages of the kept rows in order."""
        if not self.work_dir:
            return
        cols = {k: [] for k in ("prompt_id", "sample_idx", "gen_round", "token_ids", "text", "answer", "correct",
                                "reward", "advantage", "old_logprobs", "entropies", "finish_reason", "kept")}
        it = iter(kept_adv.tolist())
        for b, r, lps, ens, kept in self.generated:
            for i in range(len(b)):
                cols["prompt_id"].append(b.prompt_ids[i]), cols["sample_idx"].append(b.sample_idx[i])
                cols["gen_round"].append(b.gen_round[i]), cols["token_ids"].append(b.tokens[i])
                cols["text"].append(b.text[i]), cols["answer"].append(b.answer[i])
                cols["correct"].append(b.correct[i] if self.has_labels else None)
                cols["reward"].append(float(r[i])), cols["advantage"].append(next(it) if i in kept else 0.0)
                cols["old_logprobs"].append(lps[i].tolist()), cols["entropies"].append(ens[i].tolist())
                cols["finish_reason"].append(b.finish[i]), cols["kept"].append(i in kept)
        n = len(cols["kept"])
        table = pa.table({
            "step": pa.array([step] * n, pa.int32()), "prompt_id": cols["prompt_id"],
            "sample_idx": pa.array(cols["sample_idx"], pa.int32()), "gen_round": pa.array(cols["gen_round"], pa.int32()),
            "token_ids": pa.array(cols["token_ids"], pa.list_(pa.int32())), "text": cols["text"],
            "answer": pa.array(cols["answer"], pa.string()), "correct": pa.array(cols["correct"], pa.bool_()),
            "reward": pa.array(cols["reward"], pa.float32()), "advantage": pa.array(cols["advantage"], pa.float32()),
            "old_logprobs": pa.array(cols["old_logprobs"], pa.list_(pa.float32())),
            "entropies": pa.array(cols["entropies"], pa.list_(pa.float32())),
            "finish_reason": cols["finish_reason"], "kept": pa.array(cols["kept"], pa.bool_()),
            "weight_version": pa.array([step] * n, pa.int32()),  # the policy that sampled them: before update k
        })
        d = self.work_dir / "rollouts"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".step-{step:06d}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(d / f"step-{step:06d}.parquet")

    def save_checkpoint(self) -> Path:
        root = self.work_dir / "checkpoints"
        tmp = root / f".tmp-{self.step:06d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(str(tmp / "model"))
        torch.save({"optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "rng": self.rng.getstate()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "history": self.history, "evals": self.evals}))
        final = root / f"step-{self.step:06d}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _resume(self) -> None:
        ckpts = sorted((self.work_dir / "checkpoints").glob("step-*")) if (self.work_dir / "checkpoints").exists() else []
        if not ckpts:
            return
        last = ckpts[-1]
        state = json.loads((last / "state.json").read_text())
        self.model.load_state_dict(load_file(str(last / "model" / "model.safetensors")), strict=False)
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()
        blob = torch.load(last / "trainer.pt", weights_only=False)
        self.opt.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["torch_rng"])
        self.rng.setstate(blob["rng"])
        self.step, self.history, self.evals = state["step"], state["history"], state.get("evals", [])
        # Rollouts of steps after the checkpoint belong to the lost attempt: they are redone.
        for f in (self.work_dir / "rollouts").glob("step-*.parquet") if (self.work_dir / "rollouts").exists() else []:
            if int(f.stem.split("-")[1]) >= self.step:
                f.unlink()
        log.info("resumed %s from %s at step %d", self.cfg.method, last, self.step)


def _pad(seqs: list[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pad 1-D float tensors with zeros to ``[len(seqs), width]`` float32."""
    out = torch.zeros((len(seqs), width), dtype=torch.float32)
    if seqs:
        lengths = torch.tensor([len(x) for x in seqs])
        keep = torch.arange(width)[None, :] < lengths[:, None]
        out[keep] = torch.cat([torch.as_tensor(x, dtype=torch.float32) for x in seqs])
    return out


def _unpad(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Rows of ``values [B, C]`` cut to their mask, as CPU tensors (one split, not B copies)."""
    return list(torch.split(values[mask].cpu(), mask.sum(-1).tolist()))


def _split_list_column(col) -> list[np.ndarray]:
    """A (chunked) Arrow list<float> column as one float32 numpy array per row, sharing one buffer."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    offsets = arr.offsets.to_numpy()
    flat = np.array(arr.values.to_numpy(zero_copy_only=False), dtype=np.float32)  # writable copy
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(arr))]
