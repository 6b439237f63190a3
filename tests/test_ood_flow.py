"""The OOD flow on the smoke world through real Prefect and MLflow: features and detection for
every model of the run (two pretraining seeds of the base and a GRPO policy), the metrics table,
plots, the claims joining the run's claims table, one MLflow child run per model, and a cached
rerun that `entroflow stages` plans exactly."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, module_workspace

pytestmark = pytest.mark.integration
CONFIG = str(REPO / "configs" / "smoke-ood.yaml")
MODELS = ["base,s0", "base,s1", "grpo,s0"]


@pytest.fixture(scope="module")
def ws(prefect_server, mlflow_template, tmp_path_factory):
    with module_workspace(tmp_path_factory, mlflow_template, "ood") as home:
        yield home


def test_ood_flow_end_to_end(ws):
    from mlflow.tracking import MlflowClient

    from entroflow.config import load_config
    from entroflow.ood import features
    from entroflow.store import Store
    from flows.pipeline import plan, pipeline

    state = pipeline(config_path=CONFIG, return_state=True)
    assert state.is_completed(), state
    res = state.result()
    assert res["pretrain_base[s1]"]["state"] == "Completed"
    for m in MODELS:
        assert res[f"ood_features[{m}]"]["state"] == "Completed" and res[f"ood_detect[{m}]"]["state"] == "Completed"
    store = Store(ws / "store")

    # Features: every layer of one pass, both poolings, logit-lens scores; fit/val/test rows.
    fdir = store.resolve(res["ood_features[base,s0]"]["ref"])
    L, poolings = features.file_layers(fdir / "features.parquet")
    assert L == 2 and poolings == ["mean", "last"]
    names = set(pq.read_schema(fdir / "features.parquet").names)
    assert {f"{p}/{layer}" for p in poolings for layer in range(L + 1)} <= names
    assert {f"logit/msp/{layer}" for layer in range(L + 1)} <= names
    rows = features.read_rows(fdir / "features.parquet").to_pylist()
    assert {r["split"] for r in rows} == {"fit", "val", "test"}
    assert (fdir / "val_probs.safetensors").exists()

    # The cross-model table: (model, layer, detector, suite, shift, metrics), both FPR conventions.
    cdir = store.resolve(res["ood_compare"]["ref"])
    metrics = pq.read_table(cdir / "metrics.parquet").to_pylist()
    assert {m["model"] for m in metrics} == set(MODELS)
    assert {"layer", "detector", "pooling", "suite", "shift", "auroc", "aupr_in", "aupr_out",
            "fpr95_id_pos", "fpr95_ood_pos"} <= set(metrics[0])
    assert {m["detector"] for m in metrics} == {"mahalanobis", "rmd", "knn", "msp", "max_logit", "energy",
                                                "entropy", "nll"}
    assert {m["selector"] for m in metrics} >= {"layer", "last", "all", "mean_softmax_entropy", "score_entropy",
                                                 "oracle/near", "oracle/far"}
    assert all(0.0 <= m["auroc"] <= 1.0 for m in metrics)
    effect = pq.read_table(cdir / "rl_effect.parquet").to_pylist()
    assert {e["method"] for e in effect} == {"grpo"}

    # The page, its figures (a heatmap and a bar chart per model) and the run's claims table.
    page = Path(res["ood_path"]).read_text()
    assert "How RL training changed OOD separability" in page and "| grpo | msp/lens | 2 |" in page
    out = Path(res["ood_path"]).parent
    figs = {p.name for p in out.iterdir()}
    for m in MODELS:
        assert {f"layers_{m.replace(',', '_')}.png", f"fusion_{m.replace(',', '_')}.png"} <= figs
    claims = pq.read_table(store.resolve(res["claims"]["ref"]) / "claims.parquet").to_pylist()
    ood_claims = [c for c in claims if c["flow"] == "ood"]
    assert len(ood_claims) == 12 and all(c["paper"].startswith("Mysteries of the Deep") for c in ood_claims)
    assert "Mysteries of the Deep" in Path(res["claims_path"]).read_text()

    # MLflow: a child run per stage; the detect run of each model carries its kind and metrics.
    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("entroflow")
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{res['mlflow_parent_run_id']}'")
    by_name = {r.info.run_name: r for r in kids}
    for m in MODELS:
        run = by_name[f"ood_detect[{m}]"]
        assert run.data.params["flow"] == "ood" and run.data.params["method"] == m.split(",")[0]
        assert "msp/lens/last/auroc_far" in run.data.metrics
    assert by_name["ood_detect[grpo,s0]"].data.params["model"] == "train_rl[grpo,s0]"

    # Cached rerun; the planner lists exactly the run's stages.
    again = pipeline(config_path=CONFIG)
    assert all(v["state"] == "Cached" for v in again.values() if isinstance(v, dict) and "state" in v)
    cfg = load_config(CONFIG)
    planned = plan(cfg)
    assert [r["stage"] for r in planned] == cfg.stage_labels()
    assert all(r["status"] == "cached" for r in planned)
    forced = {r["stage"]: r["status"] for r in plan(cfg, ["ood_detect[grpo,s0]"])}
    assert forced["ood_detect[grpo,s0]"] == "run" and forced["ood_detect[base,s0]"] == "cached"
    assert forced["ood_compare"] == "run"
