"""The ``unlearning`` flow, run by the pipeline flow when the config has an ``unlearning`` section:
fine-tune on a fictitious knowledge graph, unlearn, and measure direct and implicit recall
(entroflow/unlearn/; reference §B6).

    generate_data --> unlearn_data[s] --+--> finetune_kg[base,s] --+--> unlearn[setting,s] --> unlearn_evaluate[setting,s] --+
    base model -------------------------+          | (steps taken) |    (one per point of        (reference: the retain          |
                                        +--> finetune_kg[retain,s] |     each method's sweep)      model's evaluation)           |
                                        unlearn_evaluate[noop,s] <-+                                                            |
                                        unlearn_evaluate[retrain,s] (the gold model) ----------------> unlearn_compare <--------+

Per seed (``unlearning.seeds``): its own graph draw, forget set, fine-tuned base and gold retain
model. The two bounds are evaluated as models named ``noop`` (the fine-tuned base) and ``retrain``
(the gold retain model). One MLflow child run per stage; each unlearn stage and its evaluation
carry the setting's hyper-parameters as ``train.*`` params, so the UI groups them by method.
"""
from __future__ import annotations

from entroflow.config import PipelineConfig
from flows.pipeline import run_meta, runtime_section
from tasks.finetune_kg import finetune_kg
from tasks.unlearn import unlearn
from tasks.unlearn_compare import unlearn_compare
from tasks.unlearn_data import unlearn_data
from tasks.unlearn_evaluate import unlearn_evaluate

DATA_KEYS = ("graph", "forget", "holdout_fraction", "closure", "wrong_answers")


def run_unlearning(runner, cfg: PipelineConfig, refs: dict[str, dict]) -> dict:
    u = cfg.unlearning
    ud = cfg.model_dump(mode="json")["unlearning"]
    base_label = cfg.base_stage()
    settings = u.settings()
    parents: dict[str, dict] = {}
    labels: list[str] = []
    for seed in u.seeds:
        def meta(method: str, model: str, **extra) -> dict:
            return run_meta(cfg, "unlearning", method=method, seed=seed, model=model, **extra)

        d_label = f"unlearn_data[s{seed}]"
        data = runner.run(unlearn_data, {"seed": seed, **{k: ud[k] for k in DATA_KEYS},
                                         "max_depth": ud["evaluate"]["max_depth"]},
                          {"generate_data": refs["generate_data"]}, label=d_label,
                          parent_labels=["generate_data"], meta=meta("data", "none"))
        models = {}
        for which in ("base", "retain"):
            label = f"finetune_kg[{which},s{seed}]"
            ps = {"model": refs[base_label], "unlearn_data": data, **({"base": models["base"]} if which == "retain" else {})}
            models[which] = runner.run(
                finetune_kg, {"seed": seed, "which": which, "finetune": ud["finetune"],
                              "runtime": runtime_section(cfg, dtype=False)},
                ps, label=label, parent_labels=[base_label, d_label, *([f"finetune_kg[base,s{seed}]"] if which == "retain" else [])],
                meta=meta("noop" if which == "base" else "retrain", base_label,
                          **{f"train.{k}": v for k, v in ud["finetune"].items()}))
            parents[f"finetune/{which}/{seed}"] = models[which]
            labels.append(label)
        parents[f"data/{seed}"] = data
        eval_cfg = {"evaluate": ud["evaluate"], "llm_judge": ud["llm_judge"], "runtime": runtime_section(cfg, dtype=True)}

        def evaluate(name: str, model_ref: dict, model_label: str, method: str, reference: dict | None, hp: dict) -> dict:
            label = f"unlearn_evaluate[{name},s{seed}]"
            ps = {"model": model_ref, "unlearn_data": data, **({"reference": reference} if reference else {})}
            e = runner.run(unlearn_evaluate, {**eval_cfg, "model": name}, ps, label=label,
                           parent_labels=[model_label, d_label, *([f"unlearn_evaluate[retrain,s{seed}]"] if reference else [])],
                           meta=meta(method, model_label, **hp))
            parents[f"evaluate/{name}/{seed}"] = e
            labels.append(label)
            return e

        ref = evaluate("retrain", models["retain"], f"finetune_kg[retain,s{seed}]", "retrain", None, {})
        evaluate("noop", models["base"], f"finetune_kg[base,s{seed}]", "noop", ref, {})
        for s in settings:
            label = f"unlearn[{s['name']},s{seed}]"
            hp = {"train.steps": s["steps"], "train.lr": s["lr"], "train.batch_size": s["batch_size"],
                  **{f"train.{k}": v for k, v in s["hp"].items()}}
            m = runner.run(unlearn, {"seed": seed, "setting": s, "runtime": runtime_section(cfg, dtype=False)},
                           {"model": models["base"], "unlearn_data": data}, label=label,
                           parent_labels=[f"finetune_kg[base,s{seed}]", d_label], meta=meta(s["method"], label, **hp))
            parents[f"unlearn/{s['name']}/{seed}"] = m
            labels.append(label)
            evaluate(s["name"], m, label, s["method"], ref, hp)
    c = runner.run(unlearn_compare, {"seeds": u.seeds, "models": u.model_names(), "settings": settings,
                                     "forget": ud["forget"], "closure": ud["closure"],
                                     "wrong_answers": ud["wrong_answers"], "title": cfg.report.title},
                   parents, label="unlearn_compare", parent_labels=labels,
                   meta=run_meta(cfg, "unlearning", method="all", seed=",".join(map(str, u.seeds)), model="all"))
    if c is None:  # planning: nothing ran
        return {}
    metrics = runner.store.manifest(c)["metrics"]
    return {"unlearning_metrics": {f"unlearning/{k}": v for k, v in metrics.items()}}
