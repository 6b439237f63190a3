"""The ``reasoning`` comparison, run by the pipeline flow after the spine when the config has an
``rl`` section:

    base model --+--> rollout/evaluate [base]            (and with EM-INF decoding)
                 +--> train_rl [method, seed] --> rollout/evaluate [method, seed]
                                                          \\--> compare (table, claims, plots)

One cached ``train_rl`` stage per (method, seed); each stage is its own MLflow child run, so the
UI compares methods directly. The base model's evaluation at the spine's seed is the spine's own
``rollout``/``evaluate`` output (same key), so it is not recomputed.
"""
from __future__ import annotations


from entroflow.config import PipelineConfig
from flows.pipeline import rollout_section, run_meta, runtime_section
from tasks.compare import compare
from tasks.evaluate import evaluate
from entroflow.data.tables import read_world
from tasks.rollout import rollout
from tasks.train_rl import train_rl

KEY_HYPERPARAMETERS = ("reward", "advantage", "loss_agg", "eps_low", "eps_high", "clip_ratio_c", "kl_coef",
                       "dynamic_sampling",
                       "lr", "steps", "prompts_per_step", "group_size", "max_new_tokens")


def run_reasoning(runner, cfg: PipelineConfig, refs: dict[str, dict]) -> dict:
    d = cfg.model_dump(mode="json")
    rl = cfg.rl
    base_label = cfg.base_stage()
    data, base = refs["generate_data"], refs[base_label]
    fmt = read_world(runner.store.resolve(data))["answer_format"]
    parents: dict[str, dict] = {}
    labels: list[str] = []

    def evaluate_model(model_ref: dict, model_label: str, seed: int, name: str, em_inf: dict | None = None,
                       meta: dict | None = None) -> dict:
        tag = f"{name},s{seed}"
        meta = {**run_meta(cfg, "reasoning", method=name, seed=seed, model=model_label), **(meta or {})}
        r = runner.run(rollout, rollout_section(cfg, seed, em_inf),
                       {"generate_data": data, "model": model_ref}, label=f"rollout[{tag}]",
                       parent_labels=["generate_data", model_label], meta=meta)
        e = runner.run(evaluate, {"evaluate": d["evaluate"]}, {"generate_data": data, "rollout": r},
                       label=f"evaluate[{tag}]", parent_labels=[f"rollout[{tag}]"], meta=meta)
        labels.append(f"evaluate[{tag}]")
        return e

    for seed in rl.seeds:
        parents[f"evaluate/base/{seed}"] = evaluate_model(base, base_label, seed, "base")
        if rl.eval_em_inf:
            parents[f"evaluate/base+em_inf/{seed}"] = evaluate_model(base, base_label, seed, "base+em_inf",
                                                                     em_inf=d["rl"]["em_inf"])
        for method in rl.methods:
            label = f"train_rl[{method},s{seed}]"
            train_cfg = rl.train_config(method, seed, fmt)
            # The trained model's defining hyper-parameters, under the train_rl run's own param
            # names, also on its rollout/evaluate runs: the UI then splits evaluations by them.
            hp = {f"train.{k}": train_cfg[k] for k in KEY_HYPERPARAMETERS if k in train_cfg}
            meta = run_meta(cfg, "reasoning", method=method, seed=seed, model=label, **hp)
            t = runner.run(train_rl, {"seed": seed, "train": train_cfg, "prompt": d["prompt"],
                                      "runtime": runtime_section(cfg, dtype=False)},
                           {"generate_data": data, "model": base}, label=label,
                           parent_labels=["generate_data", base_label],
                           meta={**meta, "model": base_label})
            labels.append(label)
            parents[f"train/{method}/{seed}"] = t
            parents[f"evaluate/{method}/{seed}"] = evaluate_model(t, label, seed, method, meta=meta)
    c = runner.run(compare, {"rl": d["rl"], "evaluate": d["evaluate"], "rollout": d["rollout"]}, parents,
                   label="compare", parent_labels=labels,
                   meta=run_meta(cfg, "reasoning", method="all", seed=",".join(map(str, rl.seeds)), model="all"))
    if c is None:  # planning (entroflow stages): nothing ran
        return {}
    metrics = runner.store.manifest(c)["metrics"]
    return {"comparison_metrics": {f"compare/{k}": v for k, v in metrics.items()}}
