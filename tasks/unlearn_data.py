"""Stage ``unlearn_data``: the unlearning world of one seed (entroflow/unlearn/world.py): a
fictitious knowledge graph whose names the pipeline's own graph does not use, and its splits,
forget roles and wrong answers (``splits.parquet``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from entroflow.data import kg
from entroflow.unlearn import judge, splits, world
from tasks._stage import StageOutput, stage


@stage("unlearn_data", code=[world, splits, judge, kg], main_table="splits.parquet",
       reads={"generate_data": ("kg_entities.parquet",)})
def unlearn_data(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    seed, f = config["seed"], config["forget"]
    spine_kg = parents["generate_data"] / "kg_entities.parquet"
    taken = set(pq.read_table(spine_kg, columns=["entity"]).column("entity").to_pylist()) if spine_kg.exists() else set()
    tables = world.fresh_graph(config["graph"], seed + 11, taken)
    broken = kg.check_rules(tables)
    if broken:
        raise ValueError(f"unlearning graph breaks its own rules: {broken[0]} (and {len(broken) - 1} more)")
    table = world.make_splits(tables, f["kind"], f["fraction"], f["n_targets"], config["holdout_fraction"],
                              config["closure"], config["wrong_answers"], seed, config["max_depth"])
    for name, t in tables.items():
        out.table(f"kg_{name}", t)
    out.table("splits", table)
    rows = table.to_pylist()
    out.log(triples=len(rows), **{f"split_{k}": v for k, v in Counter(r["split"] for r in rows).items()},
            **{f"role_{k}": v for k, v in Counter(r["role"] for r in rows if r["role"]).items()})
