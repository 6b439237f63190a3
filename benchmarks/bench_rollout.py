"""Generated tokens/s of :class:`HFRolloutEngine` vs ``model.generate`` called once per prompt.

Both decode the same prompts with the same model (default size, random weights: throughput does
not depend on what the weights say, only on how many tokens are produced), n=8 samples per
prompt, T=1, no top-k/top-p, 48 new tokens at most, stopping at EOS. ``model.generate`` gets one
call per prompt with ``num_return_sequences=8``, the natural way to use it when every prompt
needs its own samples; the engine batches (prompt, sample) rows across prompts. Each side counts
the tokens it generated up to and including EOS, so the rates are comparable even though the
two samplers draw different completions. Prints measured numbers only.

Usage: ``python benchmarks/bench_rollout.py [--prompts N] [--threads T]``
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import time

import torch
import transformers

from entroflow.data.reasoning import Level, make_problem
from entroflow.model import build_model
from entroflow.rollout import HFRolloutEngine, SamplingParams
from entroflow.tokenizer import train_tokenizer

N_SAMPLES = 8
MAX_NEW = 48
TEMPERATURE, TOP_K, TOP_P = 1.0, 0, 1.0
LEVELS = [Level(2, 1), Level(2, 2), Level(3, 2), Level(4, 2), Level(4, 3)]


def problems(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [make_problem(rng, LEVELS[i % len(LEVELS)], "+-")[:2] for i in range(n)]


def bench_engine(model, tok, prompts: list[str]) -> tuple[int, float]:
    engine = HFRolloutEngine(model, tok, batch_size=256)
    params = SamplingParams(n=N_SAMPLES, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K,
                            max_new_tokens=MAX_NEW, seed=0)
    engine.generate(prompts[:4], [f"w{i}" for i in range(4)], params)  # warm-up
    t0 = time.perf_counter()
    table = engine.generate(prompts, [f"p{i}" for i in range(len(prompts))], params)
    return sum(table.column("n_tokens").to_pylist()), time.perf_counter() - t0


def bench_hf_generate(model, tok, prompts: list[str]) -> tuple[int, float]:
    torch.manual_seed(0)
    kwargs = dict(do_sample=True, num_return_sequences=N_SAMPLES, temperature=TEMPERATURE,
                  top_k=TOP_K, top_p=TOP_P, max_new_tokens=MAX_NEW,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def run(prompt: str) -> int:
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
        n = 0
        for row in out.tolist():
            n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        return n

    with torch.inference_mode():
        for p in prompts[:2]:  # warm-up
            run(p)
        t0 = time.perf_counter()
        total = sum(run(p) for p in prompts)
    return total, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200, help="number of prompts (default 200)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default 0: leave torch's default). On a shared "
                         "machine, fewer threads than cores avoids spin-wait oversubscription")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    texts = [p + s for p, s in problems(3000, seed=1)]
    tok = train_tokenizer(texts, 512)
    model = build_model(len(tok), 128, 2, 4, 512, 128, 0).eval()
    prompts = [p for p, _ in problems(args.prompts, seed=2)]

    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"os.cpu_count={os.cpu_count()} | torch threads={torch.get_num_threads()}")
    print(f"versions: python {platform.python_version()} | torch {torch.__version__} | "
          f"transformers {transformers.__version__}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen2 hidden 128, 2 layers, 4 heads, ffn 512, vocab {len(tok)}, {n_params:,} params")
    print(f"workload: {len(prompts)} prompts x n={N_SAMPLES}, T={TEMPERATURE}, top_k={TOP_K}, "
          f"top_p={TOP_P}, max_new_tokens={MAX_NEW}, stop at EOS")

    e_tok, e_s = bench_engine(model, tok, prompts)
    h_tok, h_s = bench_hf_generate(model, tok, prompts)
    e_rate, h_rate = e_tok / e_s, h_tok / h_s
    print(f"HFRolloutEngine (batch_size=256): {e_tok} tokens in {e_s:.2f} s = {e_rate:,.0f} tokens/s")
    print(f"model.generate per prompt:        {h_tok} tokens in {h_s:.2f} s = {h_rate:,.0f} tokens/s")
    print(f"speed-up: {e_rate / h_rate:.2f}x")


if __name__ == "__main__":
    main()
