"""The ``watermark`` flow, run by the pipeline flow after the spine when the config has a
``watermark`` section:

    base model --+--> watermark_generate[none]  (unwatermarked text, task answers)
                 +--> train_selector[ltw_*]      (LTW schemes: the selector, per seed)
                 +--> watermark_generate[scheme] (watermarked with the key and with another key,
                 |                                task answers under the watermark)
                 |       \\--> watermark_detect[scheme]  (attacks, detection against unwatermarked,
                 |                                      human and other-key text, metrics)
    oracle LM ---+--> watermark_quality[scheme|none] (perplexity, diversity, task utility)
                                  \\--> watermark_compare (table, plots, claims)

The oracle is a second, larger pretraining of the tiny world (``pretrain_base[oracle]``, cached
like the base); a pretrained generator has no larger sibling here, so it judges its own text.
One cached stage per scheme and step, each its own MLflow child run (method = the scheme).
"""
from __future__ import annotations

from entroflow.config import PipelineConfig
from entroflow.watermark import keys
from flows.pipeline import MODEL_SIZE_KEYS, run_meta, runtime_section
from tasks.pretrain_base import pretrain_base
from tasks.train_selector import train_selector
from tasks.watermark_compare import watermark_compare
from tasks.watermark_detect import watermark_detect
from tasks.watermark_generate import watermark_generate
from tasks.watermark_quality import watermark_quality

NONE = "none"  # the unwatermarked generator


def prompt_source(cfg: PipelineConfig) -> str:
    wm = cfg.watermark
    if wm.prompts != "auto":
        return wm.prompts
    return "corpus" if cfg.model.source == "scratch" and cfg.data.corpus.n_sentences > 0 else "eval"


def watermark_sections(cfg: PipelineConfig) -> dict:
    """What every watermark stage's key covers, with the keys as fingerprints (keys.py)."""
    d = cfg.model_dump(mode="json")
    wm = d["watermark"]
    return {
        "seeds": wm["seeds"], "key": keys.register(cfg.watermark.key),
        "other_key": keys.register(cfg.watermark.other_key), "generate": wm["generate"],
        "prompts": prompt_source(cfg), "prompt": d["prompt"], "runtime": runtime_section(cfg, dtype=True),
    }


def run_watermark(runner, cfg: PipelineConfig, refs: dict[str, dict]) -> dict:
    d = cfg.model_dump(mode="json")
    wm = cfg.watermark
    base_label = cfg.base_stage()
    data, base = refs["generate_data"], refs[base_label]
    common = watermark_sections(cfg)
    meta_all = run_meta(cfg, "watermark", method="all", seed=",".join(map(str, wm.seeds)))

    oracle, oracle_label = base, base_label
    if cfg.model.source == "scratch":
        q = wm.quality
        model = {**{k: d["model"][k] for k in MODEL_SIZE_KEYS}, **q.oracle}
        pre = {**d["pretrain"], **q.oracle_pretrain}
        pre["mix"] = {**d["pretrain"]["mix"], **q.oracle_pretrain.get("mix", {})}
        oracle_label = "pretrain_base[oracle]"
        oracle = runner.run(pretrain_base, {"seed": cfg.seed, "model": model, "pretrain": pre},
                            {"generate_data": data, "build_tokenizer": refs["build_tokenizer"]},
                            label=oracle_label, parent_labels=["generate_data", "build_tokenizer"],
                            meta={**meta_all, "method": "oracle", "model": oracle_label})

    def meta(scheme: str) -> dict:
        return run_meta(cfg, "watermark", method=scheme, seed=",".join(map(str, wm.seeds)), model=base_label)

    def generate(scheme: str, selector: dict | None, selector_label: str | None) -> tuple[dict, str]:
        label = f"watermark_generate[{scheme}]"
        parents = {"generate_data": data, "model": base, **({"selector": selector} if selector else {})}
        task = {k: d["watermark"]["quality"][k] for k in ("task_prompts", "task_samples")}
        section = {**common, "scheme": None if scheme == NONE else wm.scheme(scheme), "quality": task,
                   "rollout": {"max_new_tokens": cfg.rollout.max_new_tokens}}
        if selector:
            section["ltw"] = d["watermark"]["ltw"]
        r = runner.run(watermark_generate, section, parents, label=label,
                       parent_labels=["generate_data", base_label, *([selector_label] if selector_label else [])],
                       meta=meta(scheme))
        return r, label

    def quality(scheme: str, gen: dict, gen_label: str) -> tuple[dict, str]:
        label = f"watermark_quality[{scheme}]"
        r = runner.run(watermark_quality, {"quality": d["watermark"]["quality"], "generate": wm.generate.model_dump()},
                       {"generate_data": data, "generated": gen, "oracle": oracle}, label=label,
                       parent_labels=["generate_data", gen_label, oracle_label], meta=meta(scheme))
        return r, label

    parents: dict[str, dict] = {}
    labels: list[str] = []
    none_gen, none_label = generate(NONE, None, None)
    parents[f"quality/{NONE}"], lbl = quality(NONE, none_gen, none_label)
    labels.append(lbl)
    for scheme in wm.schemes:
        selector, selector_label = None, None
        if scheme.startswith("ltw_"):
            selector_label = f"train_selector[{scheme}]"
            selector = runner.run(train_selector, {**common, "scheme": wm.scheme(scheme), "ltw": d["watermark"]["ltw"]},
                                  {"generate_data": data, "model": base}, label=selector_label,
                                  parent_labels=["generate_data", base_label], meta=meta(scheme))
            parents[f"selector/{scheme}"] = selector
            labels.append(selector_label)
        gen, gen_label = generate(scheme, selector, selector_label)
        det_label = f"watermark_detect[{scheme}]"
        det_parents = {"generate_data": data, "model": base, "watermarked": gen, "unwatermarked": none_gen,
                       **({"selector": selector} if selector else {})}
        parents[f"detect/{scheme}"] = runner.run(
            watermark_detect, {**common, "scheme": wm.scheme(scheme), "detect": d["watermark"]["detect"],
                               "attacks": d["watermark"]["attacks"],
                               **({"ltw": d["watermark"]["ltw"]} if selector else {})},
            det_parents, label=det_label,
            parent_labels=["generate_data", base_label, gen_label, none_label, *([selector_label] if selector else [])],
            meta=meta(scheme))
        labels.append(det_label)
        parents[f"quality/{scheme}"], lbl = quality(scheme, gen, gen_label)
        labels.append(lbl)
    c = runner.run(watermark_compare, {"schemes": [wm.scheme(s) for s in wm.schemes], "detect": d["watermark"]["detect"],
                                       "attacks": d["watermark"]["attacks"], "seeds": wm.seeds,
                                       "oracle": oracle_label, "prompts": common["prompts"]},
                   parents, label="watermark_compare", parent_labels=labels, meta=meta_all)
    if c is None:  # planning: nothing ran
        return {}
    metrics = runner.store.manifest(c)["metrics"]
    return {"watermark_metrics": {f"watermark/{k}": v for k, v in metrics.items()}}
