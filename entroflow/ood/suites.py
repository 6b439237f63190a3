"""The texts an OOD evaluation embeds: ID data to fit and select on, ID and OOD data to test on.

* ``fit`` (detectors are fitted on these) and ``val`` (per-layer normalisation and the layer
  selection): training prompts of each ID domain, disjoint, drawn with the given seed. For the
  synthetic world the ID domains are the ones the models were trained on: ``reasoning`` (the
  arithmetic prompts of the train split), ``text`` (grammar sentences of the train split) and
  ``kg`` (facts in the training templates). A pretrained model's ID domain is the task the run
  evaluates (``task``: the word problems or the external dataset, its train split).
* ``test``: every row of the OOD suites table (entroflow/data/ood.py), the ID controls among
  them (``shift`` 0 and an ID domain); for a pretrained model the task's held-out prompts
  (``id_task``) are the ID control and every synthetic suite is out of distribution.

No fit/val text equals a test text (the ID controls may repeat training prompts: the small
arithmetic levels have few distinct problems), so a nearest-neighbour detector never finds a test
row in its own fit set. OOD rows are never fit or val rows.

The ID rows a suite is compared with (:func:`id_pool`): the ID controls of the suite's domains,
or every ID control when the suite has no ID domain (``far_random``, or any suite of a
pretrained model's run).
"""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq

from entroflow.data.tables import WORLD_FILE, read_eval_table, read_world

# What build_rows reads of the data stage's output (the ood_features stage's ``reads=``).
OOD_FILES = (WORLD_FILE, "ood.parquet", "reasoning.parquet", "corpus.parquet", "kg_facts.parquet",
             "word_problems.parquet", "external.parquet")

SYNTHETIC_ID = {"reasoning": "id_reasoning", "text": "id_text", "kg": "id_kg"}  # domain -> ID control suite


def build_rows(data_dir: Path, seed: int, fit_per_domain: int, val_per_domain: int) -> list[dict]:
    """Rows ``{id, split, suite, shift, domain, text}`` for one evaluation (see module doc)."""
    ood = pq.read_table(data_dir / "ood.parquet").to_pylist()
    world = read_world(data_dir)
    synthetic = world["eval_table"] == "reasoning"
    test = [{**r, "split": "test"} for r in ood]
    train: dict[str, list[str]] = {}
    if synthetic:
        r = pq.read_table(data_dir / "reasoning.parquet", columns=["split", "prompt"]).to_pylist()
        train["reasoning"] = [x["prompt"] for x in r if x["split"] == "train"]
        if (data_dir / "corpus.parquet").exists():
            c = pq.read_table(data_dir / "corpus.parquet", columns=["split", "text"]).to_pylist()
            train["text"] = [x["text"] for x in c if x["split"] == "train"]
        if (data_dir / "kg_facts.parquet").exists():
            f = pq.read_table(data_dir / "kg_facts.parquet", columns=["template_split", "text"]).to_pylist()
            train["kg"] = [x["text"] for x in f if x["template_split"] == "train"]
    else:
        # The task's prompts: its train split when there is one, else its test split; the ID
        # control is held out of it either way.
        t = read_eval_table(data_dir, ["split", "prompt"]).to_pylist()
        prompts = [x["prompt"] for x in t if x["split"] == "train"]
        held = [x["prompt"] for x in t if x["split"] != "train"]
        n_test = max((sum(r["suite"] == s for r in ood) for s in {r["suite"] for r in ood}), default=100)
        rng = random.Random(f"{seed}/ood/id_task")
        held = rng.sample(held, min(n_test, len(held)))
        if not prompts:
            pool = [x["prompt"] for x in t if x["split"] != "train" and x["prompt"] not in set(held)]
            prompts = pool
        test = [{"id": f"ood-id_task-{i:05d}", "suite": "id_task", "shift": 0, "domain": "task", "text": x,
                 "split": "test"} for i, x in enumerate(held)] + test
        train["task"] = prompts
    seen = {r["text"] for r in test}
    rows: list[dict] = []
    for domain, texts in train.items():
        pool = sorted({t for t in texts if t not in seen})  # sorted: set order is not reproducible
        rng = random.Random(f"{seed}/ood/{domain}")
        picked = rng.sample(pool, min(len(pool), fit_per_domain + val_per_domain))
        n_val = min(val_per_domain, len(picked) // 2)
        for split, part in (("val", picked[:n_val]), ("fit", picked[n_val:])):
            rows += [{"id": f"id-{domain}-{split}-{i:05d}", "split": split, "suite": f"id_{split}", "shift": 0,
                      "domain": domain, "text": t} for i, t in enumerate(part)]
    if not rows:
        raise ValueError("ood: no in-distribution training texts to fit the detectors on")
    return rows + test


def id_domains(rows: list[dict]) -> set[str]:
    return {r["domain"] for r in rows if r["split"] == "fit"}


def is_id(row: dict, domains: set[str]) -> bool:
    """An ID row: fit/val, or a test row of shift 0 in an ID domain (a synthetic suite of a
    pretrained model's run is out of distribution whatever its shift)."""
    return row["split"] != "test" or (row["shift"] == 0 and row["domain"] in domains)


def ood_suites(rows: list[dict], domains: set[str]) -> list[str]:
    return sorted({r["suite"] for r in rows if not is_id(r, domains)})


def id_pool(rows: list[dict], suite: str, domains: set[str]) -> list[int]:
    """Indices of the ID test rows that ``suite``'s rows are compared with (``domains``: the ID
    domains, :func:`id_domains` of the rows with the fit split)."""
    ids = [i for i, r in enumerate(rows) if r["split"] == "test" and is_id(r, domains)]
    domains = {r["domain"] for r in rows if r["suite"] == suite}
    same = [i for i in ids if rows[i]["domain"] in domains]
    return same or ids
