"""The ``ood`` flow, run by the pipeline flow after the other flows when the config has an ``ood``
section: OOD detection from every model the run has.

    base model (per pretraining seed) --+
    RL policies (reasoning flow)  ------+--> ood_features[model] --> ood_detect[model] --+
    oracle LM (watermark flow)    ------+    (one forward pass per   (every detector on  |
                                              batch, all layers)     every layer, fusion)|
                                                                   ood_compare <---------+
                                                                   (table, plots, claims)

The models are the run's own: the spine's base (``base,s<seed>``), one more pretraining per
further ``ood.seeds`` entry (``pretrain_base[s<seed>]``, cached like the base), each
``train_rl[<method>,s<seed>]`` policy (``<method>,s<seed>``) and the watermark flow's oracle
(``oracle``). Every model reads the same texts (drawn with the run's seed), so a difference
between two models is the models'. One MLflow child run per stage (method = the model's kind).
"""
from __future__ import annotations

from entroflow.config import PipelineConfig
from flows.pipeline import MODEL_SIZE_KEYS, run_meta, runtime_section
from tasks.ood_compare import ood_compare
from tasks.ood_detect import ood_detect
from tasks.ood_features import ood_features
from tasks.pretrain_base import pretrain_base

FEATURE_KEYS = ("fit_per_domain", "val_per_domain", "batch_size", "max_tokens", "top_m", "pooling")
DETECT_KEYS = ("detectors", "pooling", "knn_k", "covariance", "exhaustive_max")


def ood_models(runner, cfg: PipelineConfig, refs: dict[str, dict]) -> list[dict]:
    """``[{name, kind, seed, label, ref}]``: the models of this run, in ``cfg.ood_models()`` order
    (``ref`` None while planning a stage that has not run)."""
    d = cfg.model_dump(mode="json")
    base_label = cfg.base_stage()
    out = []
    for s in cfg.ood_base_seeds():
        label, ref = base_label, refs.get(base_label)
        if s != cfg.seed:
            label = f"pretrain_base[s{s}]"
            ref = runner.run(pretrain_base, {"seed": s, "model": {k: d["model"][k] for k in MODEL_SIZE_KEYS},
                                             "pretrain": d["pretrain"]},
                             {"generate_data": refs["generate_data"], "build_tokenizer": refs["build_tokenizer"]},
                             label=label, parent_labels=["generate_data", "build_tokenizer"],
                             meta=run_meta(cfg, "ood", method="base", seed=s, model=label))
        out.append({"name": f"base,s{s}", "kind": "base", "seed": s, "label": label, "ref": ref})
    if cfg.rl is not None:
        for s in cfg.rl.seeds:
            for m in cfg.rl.methods:
                label = f"train_rl[{m},s{s}]"
                out.append({"name": f"{m},s{s}", "kind": m, "seed": s, "label": label,
                            "ref": runner.results.get(label, {}).get("ref")})
    if "oracle" in cfg.ood_models():
        label = "pretrain_base[oracle]"
        out.append({"name": "oracle", "kind": "oracle", "seed": cfg.seed, "label": label,
                    "ref": runner.results.get(label, {}).get("ref")})
    return out


def run_ood(runner, cfg: PipelineConfig, refs: dict[str, dict]) -> dict:
    od = cfg.model_dump(mode="json")["ood"]
    data = refs["generate_data"]
    features_cfg = {k: od[k] for k in FEATURE_KEYS}
    detect_cfg = {k: od[k] for k in DETECT_KEYS}
    parents: dict[str, dict] = {}
    labels: list[str] = []
    models = ood_models(runner, cfg, refs)
    for m in models:
        meta = run_meta(cfg, "ood", method=m["kind"], seed=m["seed"], model=m["label"])
        f_label, d_label = f"ood_features[{m['name']}]", f"ood_detect[{m['name']}]"
        f = runner.run(ood_features, {"seed": cfg.seed, "model": m["name"], "features": features_cfg,
                                      "runtime": runtime_section(cfg, dtype=True)},
                       {"generate_data": data, "model": m["ref"]}, label=f_label,
                       parent_labels=["generate_data", m["label"]], meta=meta)
        det = runner.run(ood_detect, {"model": m["name"], "detect": detect_cfg}, {"features": f}, label=d_label,
                         parent_labels=[f_label], meta=meta)
        parents[f"features/{m['name']}"], parents[f"detect/{m['name']}"] = f, det
        labels += [f_label, d_label]
    c = runner.run(ood_compare, {"models": [{k: m[k] for k in ("name", "kind", "seed")} for m in models],
                                 "claim_series": od["claim_series"], "title": cfg.report.title},
                   parents, label="ood_compare", parent_labels=labels,
                   meta=run_meta(cfg, "ood", method="all", seed=",".join(str(m["seed"]) for m in models), model="all"))
    if c is None:  # planning: nothing ran
        return {}
    metrics = runner.store.manifest(c)["metrics"]
    return {"ood_metrics": {f"ood/{k}": v for k, v in metrics.items()}}
