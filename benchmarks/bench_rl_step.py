"""Benchmark: seconds per RL step on CPU, split into rollout / old log-probs (the no-grad
forward, or 0 where the engine's log-probs are used, plus the reference model's forward for a KL
term) / reward / update, for each method on a fixed workload.

Workload: the default model size (Qwen2 hidden 128, 2 layers, 0.53M parameters) briefly
pretrained on the default arithmetic world so completions have realistic lengths; 16 prompts x
G=8 samples per step, at most 48 new tokens, mini-batch 64, one PPO epoch. Each method runs
with its preset (GRPO with its KL term, so a reference forward). Prints measured numbers only
(per-step medians); asserts nothing. Other jobs on the machine change them a lot: the load
average is printed. The reasoning flow's wall time is measured by running
`entroflow run configs/reasoning.yaml` (see benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/bench_rl_step.py [--steps 10] [--methods grpo,dapo,empo,em_rl,em_ft]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from entroflow import model as M  # noqa: E402
from entroflow import tokenizer as T  # noqa: E402
from entroflow.data import reasoning as R  # noqa: E402
from entroflow.rl.trainer import RLTrainer, TrainConfig  # noqa: E402

LEVELS = [R.Level(2, 2), R.Level(3, 1), R.Level(3, 2), R.Level(4, 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--methods", default="grpo,dapo,empo,em_rl,em_ft")
    args = ap.parse_args()
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpus={os.cpu_count()} | load {os.getloadavg()[0]:.2f} | "
          f"torch {torch.__version__} threads={torch.get_num_threads()}")
    rows = R.generate(LEVELS, 20000, 100, "+", 0.6, seed=0).to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    tok = T.train_tokenizer([r["prompt"] + r["completion"] for r in train], 512)
    docs = [M.make_document(tok, r["prompt"], r["completion"], "reasoning", False) for r in train]
    base = M.build_model(len(tok), 128, 2, 4, 512, 128, seed=0)
    t0 = time.perf_counter()
    M.pretrain(base, {"r": docs}, {"r": 1.0}, args.pretrain_steps, 128, 2e-3, 0, warmup=30)
    print(f"pretrained {args.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    prompts = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in train]
    print(f"workload: 16 prompts x G=8 per step, max_new_tokens 48, mini-batch 64, {args.steps} steps per method")
    print(f"{'method':8s} {'s/step':>7s} {'rollout':>8s} {'old-lp':>7s} {'reward':>7s} {'update':>7s} {'rounds':>6s} "
          f"{'seqs':>5s} {'len':>5s}")
    for method in args.methods.split(","):
        base.load_state_dict(state)
        cfg = TrainConfig.for_method(method, {"steps": args.steps, "prompts_per_step": 16, "group_size": 8,
                                              "lr": 3e-5, "mini_batch_size": 64, "micro_batch_size": 64})
        tr = RLTrainer(base, tok, cfg, prompts)
        ends = [time.perf_counter()]
        for _ in range(args.steps):
            tr.train_step()
            ends.append(time.perf_counter())
        wall = float(np.median(np.diff(ends)))
        h = tr.history
        m = lambda k: float(np.mean([x.get(k, 0.0) for x in h]))  # noqa: E731
        md = lambda k: float(np.median([x.get(k, 0.0) for x in h]))  # noqa: E731
        print(f"{method:8s} {wall:7.3f} {md('rollout_s'):8.3f} {md('old_logprob_s'):7.3f} {md('reward_s'):7.3f} "
              f"{md('update_s'):7.3f} {m('gen_rounds'):6.1f} {m('sequences_generated'):5.0f} {m('response_length_mean'):5.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
