"""The watermark flow on the smoke world through real Prefect and MLflow: every scheme's stages,
the tables and plots, the claims table, keys kept out of MLflow, and a cached rerun."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, module_workspace

pytestmark = pytest.mark.integration
CONFIG = str(REPO / "configs" / "smoke-wm.yaml")
SCHEMES = ["kgw", "unigram", "sweet", "ewd", "ltw_kgw", "ltw_unigram"]


@pytest.fixture(scope="module")
def ws(prefect_server, mlflow_template, tmp_path_factory):
    """One workspace for the module, with a copied pre-migrated MLflow DB."""
    with module_workspace(tmp_path_factory, mlflow_template, "wm") as home:
        yield home


def test_watermark_flow_end_to_end(ws):
    from mlflow.tracking import MlflowClient

    from entroflow.store import Store
    from flows.pipeline import pipeline

    state = pipeline(config_path=CONFIG, return_state=True)
    assert state.is_completed(), state
    res = state.result()
    for s in SCHEMES:
        for kind in ("watermark_generate", "watermark_detect"):
            assert res[f"{kind}[{s}]"]["state"] == "Completed"
        # EWD embeds exactly as KGW does (and SWEET does too where every token is uncertain, as
        # in this barely trained model): same text, so their quality stage is KGW's, cached.
        assert res[f"watermark_quality[{s}]"]["state"] in ("Completed", "Cached")
    assert res["watermark_quality[ewd]"]["state"] == "Cached"
    assert res["train_selector[ltw_kgw]"]["state"] == "Completed"
    assert res["pretrain_base[oracle]"]["state"] == "Completed"
    store = Store(ws / "store")

    # One row per sample per variant, with ids, green counts, z and p.
    det = pq.read_table(store.resolve(res["watermark_detect[kgw]"]["ref"]) / "detections.parquet").to_pylist()
    variants = {(r["variant"], r["attack"]) for r in det}
    assert {("watermarked", ""), ("unwatermarked", ""), ("human", ""), ("other_key", "")} <= variants
    assert {a for v, a in variants if v == "attacked"} == {"delete", "substitute", "insert", "copy_paste", "regenerate"}
    for r in det:
        assert len(r["z_at_T"]) == r["num_tokens_generated"] and 0 <= r["p_value"] <= 1
    clean = [r for r in det if r["variant"] == "watermarked"]
    unwm = [r for r in det if r["variant"] == "unwatermarked"]
    assert sum(r["z"] for r in clean) / len(clean) > sum(r["z"] for r in unwm) / len(unwm)
    assert len(clean) == 16 and all(len(r["token_ids"]) == 24 for r in clean)  # EOS suppressed: full length

    # LTW: the selector's training history, replayed at detection (a fraction of tokens scored).
    sel = store.resolve(res["train_selector[ltw_kgw]"]["ref"])
    hist = pq.read_table(sel / "history.parquet").to_pylist()
    assert {"loss_quality", "loss_detect", "mgda_alpha"} <= set(hist[0]) and len(hist) == 2
    ltw = pq.read_table(store.resolve(res["watermark_detect[ltw_kgw]"]["ref"]) / "detections.parquet").to_pylist()
    assert all(0 <= r["scored_fraction"] <= 1 for r in ltw)

    # The comparison page, its plots and the run's one claims table.
    page = Path(res["watermark_path"]).read_text()
    for s in ["none", *SCHEMES]:
        assert f"| {s} |" in page
    out = Path(res["watermark_path"]).parent
    assert {"roc.png", "tradeoff.png", "attacks.png", "length.png", "z_kgw.png"} <= {p.name for p in out.iterdir()}
    claims = Path(res["claims_path"]).read_text()
    assert "LTW (Wang et al. 2025)" in claims and "Unigram (Zhao et al. 2024)" in claims
    rows = pq.read_table(store.resolve(res["claims"]["ref"]) / "claims.parquet").to_pylist()
    assert {r["verdict"] for r in rows} <= {"holds", "does not hold", "not testable here"}

    # MLflow: a child run per stage, method = scheme; the key appears only as a fingerprint.
    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("entroflow")
    parent = c.get_run(res["mlflow_parent_run_id"])
    assert parent.data.params["watermark.key"].startswith("sha256:")
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {r.info.run_name: r for r in kids}
    assert {f"watermark_detect[{s}]" for s in SCHEMES} <= set(names) and "watermark_compare" in names
    d = names["watermark_detect[kgw]"]
    assert d.data.params["method"] == "kgw" and d.data.params["flow"] == "watermark"
    assert "unwatermarked/auroc" in d.data.metrics
    for r in kids:
        assert "15485863" not in " ".join(r.data.params.values())
    for run in (parent, *kids):
        assert all("15485863" not in str(v) for v in run.data.params.values())

    # Everything is cached on a rerun, and `entroflow stages` plans exactly the run's stages.
    again = pipeline(config_path=CONFIG)
    assert all(v["state"] == "Cached" for v in again.values() if isinstance(v, dict) and "state" in v)
    from entroflow.config import load_config
    from flows.pipeline import plan

    cfg = load_config(CONFIG)
    rows = plan(cfg)
    assert [r["stage"] for r in rows] == cfg.stage_labels()
    assert all(r["status"] == "cached" for r in rows), [r for r in rows if r["status"] != "cached"]
    forced = {r["stage"]: r["status"] for r in plan(cfg, ["train_selector[ltw_kgw]"])}
    assert forced["watermark_detect[ltw_kgw]"] == "run" and forced["watermark_detect[kgw]"] == "cached"
