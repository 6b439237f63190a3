"""Unlearning benchmarks on the default graph (configs/default.yaml ``unlearning``: 60 persons,
about 390 triples, 20 targets + 20 controls): seconds per unlearning run of each method (30 AdamW
steps, 16 forget + 16 retain pairs per step, the default setting), seconds per evaluation (the
per-triple probe over 7 phrasings x 5 candidates per triple, then the rule judge's implicit recall)
and fine-tuning throughput. The model is the default's shape (Qwen2, 128 wide, 2 blocks) with a
tokenizer trained on the graph; its weights are random (speed does not depend on them; the judge's
share grows with what a model believes and stays under a second on a trained one).

Prints measured numbers; asserts nothing. ``python benchmarks/bench_unlearning.py [--quick]``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entroflow.model import build_model  # noqa: E402
from entroflow.tokenizer import train_tokenizer  # noqa: E402
from entroflow.unlearn import evaluate, losses, trainer, world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repeat instead of three")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    g = world.fresh_graph({"n_persons": 60, "n_cities": 15, "n_countries": 5, "n_orgs": 10}, 11, set())
    rows = world.make_splits(g, "triples", 0.1, 20, 0.1, "none", 4, seed=0).to_pylist()
    docs = world.training_documents(g["facts"], rows, {r["triple_id"] for r in rows if r["split"] != "holdout"},
                                    0, True, set())
    tok = train_tokenizer(docs["facts"] + docs["verify"], vocab_size=512)
    model = build_model(len(tok), 128, 2, 4, 512, 128, seed=0)
    split = {r["triple_id"]: r["split"] for r in rows}
    facts = [f for f in g["facts"].to_pylist() if f["template_split"] == "train"]
    forget = [(f["prompt"], f["answer"]) for f in facts if split[f["triple_id"]] == "forget"]
    retain = [(f["prompt"], f["answer"]) for f in facts if split[f["triple_id"]] not in ("forget", "holdout")]
    print(f"graph: {len(rows)} triples, {g['facts'].num_rows} phrasings; forget pairs {len(forget)}, "
          f"retain pairs {len(retain)}; torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    trainer.finetune(copy.deepcopy(model), tok, docs, {"facts": 1.0, "verify": 0.3}, 50, 64, 2e-3, 0, 5)
    ft = (time.perf_counter() - t0) / 50
    print(f"fine-tuning: {ft:.3f} s/step at batch 64 ({64 / ft:.0f} documents/s)")

    print("\nunlearning run (30 steps, batch 16):")
    for method in losses.METHODS:
        times = []
        for _ in range(reps):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            trainer.unlearn(m, tok, method, forget, retain, 30, 3e-4, 16, 0)
            times.append(time.perf_counter() - t0)
        print(f"  {method:12s} {statistics.median(times):6.2f} s   ({1000 * statistics.median(times) / 30:5.1f} ms/step)")

    print("\nevaluation of one model:")
    probe, judge_s = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        table = evaluate.per_triple(model, tok, g["facts"], rows, 256)
        t1 = time.perf_counter()
        inf = evaluate.implicit(table, rows)
        t2 = time.perf_counter()
        evaluate.summarise(table, inf)
        probe.append(t1 - t0)
        judge_s.append(t2 - t1)
    n_pairs = sum(1 + len(r["wrong"]) for r in rows) * 7 + 3 * len(rows)
    print(f"  probe (every triple x 7 phrasings x candidates, {n_pairs} sequences): {statistics.median(probe):.2f} s "
          f"({n_pairs / statistics.median(probe):.0f} sequences/s)")
    print(f"  implicit recall (rule judge over {sum(r['split'] == 'forget' for r in rows)} forget triples): "
          f"{statistics.median(judge_s):.2f} s")


if __name__ == "__main__":
    main()
