"""Watermark benchmarks: detection throughput vs transformers, and watermarked generation overhead.

(a) KGW detection of the same random sequences (T = 200 tokens each) by our batch detector
    (``entroflow.watermark.detect.score_sequences``; seedings "hash" and "lefthash") and by
    transformers' ``WatermarkDetector`` (lefthash; it loops over sequences and n-grams in Python and
    draws one ``randperm(V)`` per n-gram missing from its 128-entry LRU cache). Both count every
    n-gram (``ignore_repeated_ngrams=False``, transformers' default). Where transformers would take
    minutes (V = 49152) it runs on a prefix of the sequences and its rate is sequences/s on that
    prefix; ours runs on the same prefix too for the ratio of the lefthash rows.
(b) Generation with the same HFRolloutEngine and sampling, with and without the KGW processor
    ("hash", h = 1), on a tiny Qwen2 (V = 512) and a ~3.3M-parameter one with V = 49152.

Prints measured numbers; asserts nothing. ``python benchmarks/bench_watermark.py [--quick]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entroflow.model import build_model  # noqa: E402
from entroflow.rollout import HFRolloutEngine, SamplingParams  # noqa: E402
from entroflow.watermark.detect import score_sequences  # noqa: E402
from entroflow.watermark.green import GreenList  # noqa: E402
from entroflow.watermark.kgw import KGW  # noqa: E402

KEY = 15485863


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_detection(vocab: int, n_seq: int, hf_seq: int) -> list[tuple]:
    from transformers import Qwen2Config, WatermarkDetector, WatermarkingConfig

    rng = np.random.default_rng(0)
    seqs = rng.integers(4, vocab, size=(n_seq, 201))  # 1 seeding token + 200 scored
    rows = []
    # lefthash draws one randperm(V) per distinct previous token (~4 ms each at V = 49152 here), so
    # at large V it runs on the transformers subset only.
    lefthash_runs = (("lefthash", n_seq), ("lefthash", hf_seq)) if hf_seq < n_seq and vocab <= 4096 else (("lefthash", hf_seq),)
    for seeding, n in (("hash", n_seq),) + lefthash_runs:
        gl = GreenList(vocab, 0.25, KEY, seeding, 1)
        if seeding == "lefthash":
            from entroflow.watermark import green
            green._randperm_mask.cache_clear()  # no warm cache from an earlier row
        _, dt = _timed(lambda: score_sequences(gl, seqs[:n, :1].tolist(), seqs[:n, 1:].tolist(),
                                               ignore_repeated_ngrams=False))
        rows.append((vocab, f"ours {seeding}", n, n / dt))
    cfg = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, hashing_key=KEY, seeding_scheme="lefthash",
                             context_width=1)
    model_config = Qwen2Config(vocab_size=vocab, bos_token_id=1)
    detector = WatermarkDetector(model_config, "cpu", cfg, ignore_repeated_ngrams=False)
    ids = torch.tensor(seqs[:hf_seq])
    _, dt = _timed(lambda: [detector(ids[i : i + 1], return_dict=True) for i in range(hf_seq)])
    rows.append((vocab, "transformers lefthash", hf_seq, hf_seq / dt))
    return rows


def bench_generation(vocab: int, hidden: int, layers: int, n_prompts: int, n: int, new_tokens: int,
                     batch_size: int) -> list[tuple]:
    from entroflow.tokenizer import train_tokenizer

    tok = train_tokenizer([f"{a}+{b}={a + b}" for a in range(40) for b in range(40)], 64)
    model = build_model(vocab, hidden, layers, 2, 2 * hidden, 512, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    engine = HFRolloutEngine(model, tok, batch_size=batch_size)
    prompts = [f"{a}+{b}=" for a, b in zip(range(n_prompts), range(3, 3 + n_prompts))]
    ids = [f"p{i}" for i in range(n_prompts)]
    # stop_on_eos=False: both runs decode the same number of tokens.
    params = SamplingParams(n=n, temperature=0.7, max_new_tokens=new_tokens, seed=0, stop_on_eos=False)
    wm = KGW(vocab, KEY, gamma=0.25, delta=2.0, seeding="hash")
    engine.generate(prompts[:2], ids[:2], params)  # warm-up (lazy init, allocator)
    engine.generate(prompts[:2], ids[:2], params, logits_processors=[wm])
    out = []
    for label, procs in (("plain", None), ("KGW hash", [wm])) * 3:
        engine.generate(prompts, ids, params, logits_processors=procs)
        out.append((f"{n_params / 1e6:.2f}M V={vocab}", label, engine.tokens_per_second))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n_seq = 100 if args.quick else 1000

    print(f"torch threads: {torch.get_num_threads()}")
    print("\n(a) detection, T = 200 tokens per sequence, ignore_repeated_ngrams=False")
    print(f"{'V':>6}  {'detector':<24} {'seqs':>5} {'seq/s':>10}")
    for vocab, hf_seq in ((512, min(n_seq, 1000)), (49152, 50)):
        rows = bench_detection(vocab, n_seq, hf_seq)
        for v, name, n, rate in rows:
            print(f"{v:>6}  {name:<24} {n:>5} {rate:>10.1f}")
        hf_rate = rows[-1][3]
        print(f"{'':>6}  ratio vs transformers: hash {rows[0][3] / hf_rate:.0f}x, "
              f"lefthash {rows[-2][3] / hf_rate:.1f}x (same {rows[-2][2]} sequences)")

    print("\n(b) generation, same engine and sampling (T=0.7), tokens/s, three alternating runs each")
    print(f"{'model':<18} {'run':<10} {'tok/s':>10}")
    configs = [(512, 64, 2, 32, 4, 64, 128)]
    configs.append((49152, 64, 2, 16 if args.quick else 32, 4, 32, 128))
    for cfg in configs:
        res = bench_generation(*cfg)
        for m, label, tps in res:
            print(f"{m:<18} {label:<10} {tps:>10.1f}")
        # The machine is shared: the best of three alternating runs is the least disturbed one.
        plain = max(r[2] for r in res if r[1] == "plain")
        marked = max(r[2] for r in res if r[1] != "plain")
        print(f"{'':<18} best-of-3 watermarked / plain = {marked / plain:.3f}")


if __name__ == "__main__":
    main()
