"""Stage ``claims``: the run's one claims table across flows (entroflow/claims.py), from the
``claims.parquet`` of each flow's compare stage (parents named by flow)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entroflow import claims as claims_lib
from tasks._stage import StageOutput, stage


@stage("claims", code=[claims_lib], main_table="claims.parquet")
def claims(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    rows = []
    for flow, d in parents.items():
        rows += claims_lib.normalise(pq.read_table(d / "claims.parquet").to_pylist(), flow)
    out.table("claims", pa.Table.from_pylist(rows))
    (out.dir / "claims.md").write_text(claims_lib.render(rows, config["title"]))
    out.log(claims_total=len(rows), **{f"claims_{v.replace(' ', '_')}": sum(r["verdict"] == v for r in rows)
                                       for v in (claims_lib.HOLDS, claims_lib.FAILS, claims_lib.UNTESTABLE)})
