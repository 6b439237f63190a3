"""Benchmark: one RL step of entroflow's ``RLTrainer`` against TRL's ``GRPOTrainer``, same workload,
side by side in one process on CPU.

Workload (issue 6 item 5), identical on both sides:

* model: Qwen2, hidden 128, 4 layers, 4 heads, MLP 512, random init (seed 0), fp32, tied
  embeddings; the tokenizer is entroflow's digit-level tokenizer trained on the arithmetic world
  (``entroflow.data.reasoning``), the prompts are that world's training prompts (``<bos>`` added
  on both sides);
* per step: 8 prompts x 8 samples = 64 sequences, at most 32 new tokens, temperature 1, top-p 1,
  top-k off, stop at ``<eos>``;
* reward: a cheap label-free function, the share of ``7`` tokens in the completion (entroflow's
  ``token_frequency`` reward; the TRL reward function computes the same from ``completion_ids``);
* loss: token-level (DAPO / TRL ``loss_type="dapo"``), clip eps 0.2 / 0.28, no KL (``beta=0``,
  no reference model), group-normalised advantage (std-scaled), one PPO epoch, one optimizer
  step per RL step (TRL: ``per_device_train_batch_size=64``, ``gradient_accumulation_steps=1``,
  ``steps_per_generation=1``, ``num_iterations=1``; entroflow: mini-batch 64, micro-batch 64),
  AdamW, gradient clipping at 1.0, lr 1e-6 without warm-up;
* entroflow: the ``dapo`` preset with dynamic sampling and the overlong penalty off (TRL has
  neither) and its default dual clip (inactive here: with one mini-batch every ratio is ~1);
  TRL: ``bf16=False`` (its default is True), ``use_cpu=True``, no vLLM, no logging, reporting
  or saving, output dir in a temp dir.

Old log-probs: with ``gradient_accumulation_steps % (steps_per_generation * num_iterations) == 0``
and no vLLM, TRL runs no separate old-log-prob forward: it takes the detached log-probs of the
loss forward as ``pi_old`` (ratio exactly 1; ``trl/trainer/grpo_trainer.py``,
``_generate_and_score_completions`` and ``_compute_loss``). entroflow skips it too here: in fp32,
sampling from the full distribution with the trainer's own weights, the engine's recorded
log-probs are ``pi_old``'s (``RLTrainer._engine_logprobs_are_old``); ``--old-logprob-forward``
runs it anyway, for comparison. Each side does its own other work as it is: TRL's HF
``generate`` decodes every row until all rows end (entroflow drops finished rows), TRL's loss
forward also returns token entropies (entroflow takes them from the sampler), and both compute
their logged metrics.

Timing: wall time between consecutive step ends (everything a step does: sampling, reward,
advantage, loss forward/backward, optimizer, bookkeeping), warm-up steps excluded. A run's s/step
is the median of its step times (robust to another job stealing the CPU for a few steps; mean
and min are printed too); the process CPU time per step is printed beside it. The run order is
TRL, entroflow, entroflow, TRL (``--repeats 2``, default), so a drift of the machine's speed
affects both sides alike. Both sides use the same torch thread count (``--threads``, default
torch's own). On a machine whose cores are shared with other jobs, two OpenMP threads can be
slowed many times over (at every parallel op a thread waits for a descheduled partner), so check
the load averages printed at the start and the end, or use ``--threads 1``. Prints s/step for
both, the ratio, entroflow's split and the mean completion lengths (both sides sample from the
same initial model, so lengths agree in distribution, not token for token: the samplers' noise
differs).

    .venv/bin/python benchmarks/bench_vs_trl.py [--steps 10] [--warmup 2] [--repeats 2]

Needs the ``bench`` extra (``pip install -e .[bench] -c constraints.txt``): TRL is never a
runtime dependency.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from entroflow import model as M  # noqa: E402
from entroflow import tokenizer as T  # noqa: E402
from entroflow.data import reasoning as R  # noqa: E402
from entroflow.rl.trainer import RLTrainer, TrainConfig  # noqa: E402

LEVELS = [R.Level(2, 2), R.Level(3, 1), R.Level(3, 2), R.Level(4, 2)]
PROMPTS, G, MAX_NEW, LR, SEED = 8, 8, 32, 1e-6, 0


def build_world():
    rows = R.generate(LEVELS, 4000, 100, "+", 0.6, seed=0).to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    tok = T.train_tokenizer([r["prompt"] + r["completion"] for r in train], 512)
    model = M.build_model(len(tok), 128, 4, 4, 512, 128, seed=SEED)
    model.eval()
    return tok, model, [{"id": r["id"], "prompt": r["prompt"]} for r in train]


def run_trl(tok, model, prompts, steps: int, warmup: int) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    target = tok.convert_tokens_to_ids("7")

    def seven_share(completion_ids, **_):  # the same quantity as entroflow's token_frequency reward
        return [sum(t == target for t in c) / max(1, len(c)) for c in completion_ids]

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.cpu, self.lengths = [], [], []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.lengths.append(trainer._metrics["train"]["completions/mean_length"][-1])

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, seed=SEED, data_seed=SEED,
            per_device_train_batch_size=PROMPTS * G, gradient_accumulation_steps=1, steps_per_generation=1,
            num_iterations=1, num_generations=G, max_completion_length=MAX_NEW,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
            scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, max_steps=warmup + steps,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, log_completions=False,
        )
        clock = Clock()
        trainer = GRPOTrainer(model=model, reward_funcs=seven_share, args=args,
                              train_dataset=Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
                              processing_class=tok, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # it prints the final log dict
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
    times = np.diff([t0] + clock.ends)[warmup:]
    cpu = np.diff([c0] + clock.cpu)[warmup:]
    return {"s_per_step": float(np.median(times)), "mean": float(times.mean()), "min": float(times.min()),
            "cpu": float(np.median(cpu)),
            "len": float(np.mean(clock.lengths[warmup:])), "threads": torch.get_num_threads()}


def run_entroflow(tok, model, prompts, steps: int, warmup: int, old_forward: bool) -> dict:
    shared = {"steps": warmup + steps, "prompts_per_step": PROMPTS, "group_size": G, "max_new_tokens": MAX_NEW,
              "lr": LR, "warmup_steps": 0, "mini_batch_size": PROMPTS * G, "micro_batch_size": PROMPTS * G,
              "grad_clip": 1.0, "seed": SEED, "checkpoint_every": 10**9}
    over = {"reward": "token_frequency", "target_token": "7", "dynamic_sampling": False, "overlong": False,
            "kl_coef": 0.0, "old_logprob_forward": "always" if old_forward else "auto"}
    cfg = TrainConfig.for_method("dapo", shared, over)
    tr = RLTrainer(model, tok, cfg, prompts)
    ends, cpu = [time.perf_counter()], [time.process_time()]
    for _ in range(cfg.steps):
        tr.train_step()
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
    times = np.diff(ends)[warmup:]
    h = tr.history[warmup:]
    med = lambda k: float(np.median([x.get(k, 0.0) for x in h]))  # noqa: E731
    return {"s_per_step": float(np.median(times)), "mean": float(times.mean()), "min": float(times.min()),
            "cpu": float(np.median(np.diff(cpu)[warmup:])),
            "len": float(np.mean([x["response_length_mean"] for x in h])),
            "rollout": med("rollout_s"), "old_lp": med("old_logprob_s"), "reward": med("reward_s"),
            "update": med("update_s"), "old_lp_forward": bool(h[-1].get("old_logprob_forward", 1.0)),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, ordered TRL, entroflow, entroflow, TRL, ...")
    ap.add_argument("--old-logprob-forward", action="store_true",
                    help="entroflow: always run the no-grad old-log-prob forward (old_logprob_forward=always)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
        if not args.skip_trl:
            sys.exit("TRL is not installed: pip install -e '.[bench]' -c constraints.txt (or pass --skip-trl)")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpus={os.cpu_count()} | load {os.getloadavg()[0]:.2f} | "
          f"torch {torch.__version__} threads={torch.get_num_threads()} | transformers {transformers.__version__} | "
          f"trl {trl_version}")
    tok, base, prompts = build_world()
    n_params = sum(p.numel() for p in base.parameters())
    print(f"workload: Qwen2 hidden 128 x 4 layers ({n_params / 1e6:.2f}M params, vocab {len(tok)}), random init, "
          f"fp32 CPU; {PROMPTS} prompts x {G} samples, <= {MAX_NEW} new tokens, token-level loss, clip 0.2/0.28, "
          f"no KL, one optimizer step per step; {args.warmup} warm-up + {args.steps} timed steps per run")
    order = []
    for r in range(args.repeats):
        order += ["trl", "entroflow"] if r % 2 == 0 else ["entroflow", "trl"]
    res = {"trl": [], "entroflow": []}
    for side in order:
        if side == "trl" and args.skip_trl:
            continue
        model = copy.deepcopy(base)
        torch.manual_seed(SEED)
        if side == "trl":
            r = run_trl(tok, model, prompts, args.steps, args.warmup)
            print(f"  TRL GRPOTrainer     {r['s_per_step']:.3f} s/step (mean {r['mean']:.3f}, min {r['min']:.3f}; "
                  f"CPU {r['cpu']:.3f} s) | mean completion {r['len']:.1f} tokens", flush=True)
        else:
            r = run_entroflow(tok, model, prompts, args.steps, args.warmup, args.old_logprob_forward)
            print(f"  entroflow RLTrainer {r['s_per_step']:.3f} s/step (mean {r['mean']:.3f}, min {r['min']:.3f}; "
                  f"CPU {r['cpu']:.3f} s) | "
                  f"mean completion {r['len']:.1f} tokens | rollout {r['rollout']:.3f} / old-logprob {r['old_lp']:.3f} "
                  f"({'forward' if r['old_lp_forward'] else 'engine log-probs, no forward'}) / "
                  f"reward {r['reward']:.3f} "
                  f"/ update {r['update']:.3f} s", flush=True)
        res[side].append(r)
    ef = float(np.mean([r["s_per_step"] for r in res["entroflow"]]))
    print(f"entroflow: {ef:.3f} s/step (median step time, mean over {len(res['entroflow'])} runs)")
    if res["trl"]:
        tr = float(np.mean([r["s_per_step"] for r in res["trl"]]))
        print(f"TRL:       {tr:.3f} s/step (median step time, mean over {len(res['trl'])} runs)")
        cpu_ratio = np.mean([r["cpu"] for r in res["trl"]]) / np.mean([r["cpu"] for r in res["entroflow"]])
        print(f"ratio TRL / entroflow: {tr / ef:.2f}x (wall); {cpu_ratio:.2f}x (CPU time of this process)")
        print(f"mean completion length: TRL {np.mean([r['len'] for r in res['trl']]):.1f}, "
              f"entroflow {np.mean([r['len'] for r in res['entroflow']]):.1f} tokens")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
