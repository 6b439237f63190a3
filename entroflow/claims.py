"""One claims table per run, across flows: every seed-paper claim the run tested, with its
verdict (holds / does not hold / not testable here) and the numbers behind it.

Each flow's compare stage writes ``claims.parquet`` with ``paper, claim, evidence`` and either a
``verdict`` or a boolean ``holds`` (the reasoning comparison); this module puts them in one table.
"""
from __future__ import annotations

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable here"


def normalise(rows: list[dict], flow: str) -> list[dict]:
    out = []
    for r in rows:
        verdict = r.get("verdict") or (HOLDS if r.get("holds") else FAILS)
        out.append({"flow": r.get("flow") or flow, "paper": r.get("paper") or "", "claim": r["claim"],
                    "verdict": verdict, "evidence": r.get("evidence", "")})
    return out


def render(rows: list[dict], title: str) -> str:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (HOLDS, FAILS, UNTESTABLE)}
    lines = [f"# {title}: claims of the seed papers at this scale", "",
             f"{len(rows)} claims: {counts[HOLDS]} hold, {counts[FAILS]} do not hold, "
             f"{counts[UNTESTABLE]} not testable here.", "",
             "| flow | paper | claim | verdict | numbers |", "|---|---|---|---|---|"]
    for r in rows:
        v = f"**{r['verdict']}**" if r["verdict"] == FAILS else r["verdict"]
        lines.append(f"| {r['flow']} | {r['paper']} | {r['claim']} | {v} | {r['evidence']} |")
    return "\n".join(lines) + "\n"
