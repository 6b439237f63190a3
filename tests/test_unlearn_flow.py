"""The unlearning flow on the smoke world through real Prefect and MLflow: the fictitious graph and
its splits, the fine-tuned base and gold retain models, every method's unlearn stage and every
model's evaluation, the comparison's tables, plots and claims joining the run's claims table, one
MLflow child run per stage with the method's hyper-parameters, and a cached rerun."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, module_workspace

pytestmark = pytest.mark.integration
CONFIG = str(REPO / "configs" / "smoke-unlearning.yaml")


@pytest.fixture(scope="module")
def ws(prefect_server, mlflow_template, tmp_path_factory):
    with module_workspace(tmp_path_factory, mlflow_template, "unlearning") as home:
        yield home


def _metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


def test_unlearning_flow_end_to_end(ws):
    from mlflow.tracking import MlflowClient

    from entroflow import model as model_lib
    from entroflow.config import load_config
    from entroflow.data import kg
    from entroflow.store import Store
    from entroflow.unlearn import evaluate
    from flows.pipeline import plan, pipeline

    cfg = load_config(CONFIG)
    state = pipeline(config_path=CONFIG, return_state=True)
    assert state.is_completed(), state
    res = state.result()
    labels = [x for x in cfg.stage_labels() if x.startswith(("unlearn", "finetune_kg"))]
    assert len(labels) == 1 + 2 + 7 + 9 + 1
    assert all(res[x]["state"] == "Completed" for x in labels), {x: res[x]["state"] for x in labels}
    store = Store(ws / "store")

    # The graph: consistent, with every split and the triple-level roles.
    data = store.resolve(res["unlearn_data[s0]"]["ref"])
    tables = {n: pq.read_table(data / f"kg_{n}.parquet") for n in ("entities", "triples", "facts")}
    assert kg.check_rules(tables) == []
    rows = pq.read_table(data / "splits.parquet").to_pylist()
    assert {r["split"] for r in rows} == {"forget", "retain_local", "retain_global", "world", "holdout"}
    assert {r["role"] for r in rows if r["split"] == "forget"} == {"target", "control"}

    # The gold retain model: same steps as the base, trained without the forget set.
    base = _metrics(store.resolve(res["finetune_kg[base,s0]"]["ref"]))
    gold = _metrics(store.resolve(res["finetune_kg[retain,s0]"]["ref"]))
    n_forget = sum(r["split"] == "forget" for r in rows)
    assert gold["steps_trained"] == base["steps_trained"] and gold["trained_triples"] == base["trained_triples"] - n_forget
    gold_manifest = store.manifest(res["unlearn_evaluate[retrain,s0]"]["ref"])
    assert gold_manifest["parents"]["model"]["key"] == res["finetune_kg[retain,s0]"]["ref"]["key"]

    # No-op forgets nothing: its evaluation is exactly that of the fine-tuned base model.
    noop_dir = store.resolve(res["unlearn_evaluate[noop,s0]"]["ref"])
    model, tok = model_lib.load_model(model_lib.resolve_model_dir(store.resolve(res["finetune_kg[base,s0]"]["ref"])))
    again = evaluate.per_triple(model, tok, tables["facts"], rows, 64).to_pylist()
    stored = pq.read_table(noop_dir / "per_triple.parquet").to_pylist()
    assert [r["recall"] for r in again] == [r["recall"] for r in stored]
    assert max(abs(a["p_mean"] - b["p_mean"]) for a, b in zip(again, stored)) < 1e-5
    noop = _metrics(noop_dir)
    ga = _metrics(store.resolve(res["unlearn_evaluate[grad_ascent,lr=0.001,s0]"]["ref"]))
    assert ga["forget/p_mean"] < noop["forget/p_mean"]  # gradient ascent pushes the forget answers down
    for m in (noop, ga):
        assert m["forget/fsr_k"] <= m["forget/fsr_s"] and 0 <= m["forget/gap"] <= 1  # the invariant
        assert {"forget_quality", "privleak", "mia/loss_auc", "model_utility", "forget_target/gap",
                "forget_control/gap", "retain_local/recall", "world/recall"} <= set(m)
    implicit = pq.read_table(noop_dir / "implicit.parquet").to_pylist()
    assert len(implicit) == n_forget and all(r["explanation"] for r in implicit)

    # The comparison: one row per model, the plots, the page and the run's claims.
    cdir = store.resolve(res["unlearn_compare"]["ref"])
    table = pq.read_table(cdir / "unlearning_metrics.parquet").to_pylist()
    assert [r["model"] for r in table] == cfg.unlearning.model_names()
    assert {"pareto.png", "gap.png", "per_relation.png", "unlearning.md"} <= {p.name for p in cdir.iterdir()}
    page = Path(res["unlearning_path"]).read_text()
    assert "FSR_s" in page and "| grad_ascent,lr=0.001 |" in page
    claims = pq.read_table(store.resolve(res["claims"]["ref"]) / "claims.parquet").to_pylist()
    unl = [c for c in claims if c["flow"] == "unlearning"]
    assert len(unl) == 7 and all(c["paper"].startswith("Wei et al.") and "gap FSR_s-FSR_k" in c["evidence"] for c in unl)

    # MLflow: every unlearn stage a child run with its method and hyper-parameters.
    c = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name(cfg.experiment)
    runs = c.search_runs([exp.experiment_id], "params.flow = 'unlearning' and params.stage = 'unlearn'")
    by_name = {r.info.run_name: r for r in runs}
    assert {f"unlearn[{s['name']},s0]" for s in cfg.unlearning.settings()} <= set(by_name)
    r = by_name["unlearn[grad_ascent,lr=0.001,s0]"]
    assert r.data.params["method"] == "grad_ascent" and float(r.data.params["train.lr"]) == 1e-3
    ev = c.search_runs([exp.experiment_id], "params.flow = 'unlearning' and params.stage = 'unlearn_evaluate'")
    assert any("forget_target/gap" in x.data.metrics for x in ev)

    # A second run plans and comes back all cached.
    rows_plan = plan(cfg)
    assert all(p["status"] == "cached" for p in rows_plan), [p for p in rows_plan if p["status"] != "cached"]
