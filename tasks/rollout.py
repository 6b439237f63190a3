"""Stage ``rollout``: greedy and sampled completions of the evaluation prompts (Parquet)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from entroflow import model as model_lib
from entroflow import lean_lm
from entroflow import rollout as rollout_lib
from entroflow.rl import em_inf as em_inf_lib
from entroflow.progress import progress_bar
from entroflow.rl.em_inf import EMInfProcessor
from tasks._stage import StageOutput, stage
from tasks.generate_data import EVAL_FILES, read_eval_table, read_world


def eval_problems(data_dir: Path, split: str, n_prompts: int | None) -> pa.Table:
    """The prompts a run evaluates: ``split`` of the evaluated table (an external dataset's rows
    are its configured split, whatever ``split`` says). ``n_prompts`` takes the first problems of
    every level in turn, so a small evaluation still covers each difficulty level."""
    world = read_world(data_dir)
    table = read_eval_table(data_dir)
    table = table.filter(pa.compute.equal(table["split"], world.get("eval_split") or split))
    if not n_prompts or n_prompts >= table.num_rows:
        return table
    by_level: dict[int, list[int]] = {}
    for i, lv in enumerate(table["level"].to_pylist()):
        by_level.setdefault(lv, []).append(i)
    picked = sorted(_round_robin(list(by_level.values()))[:n_prompts])
    return table.take(picked)


def _round_robin(groups: list[list[int]]) -> list[int]:
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def prompt_format(tokenizer, prompt_cfg: dict) -> rollout_lib.PromptFormat:
    """The config's ``prompt`` section for this model's tokenizer (chat template or plain)."""
    return rollout_lib.PromptFormat.for_tokenizer(tokenizer, prompt_cfg["chat_template"], prompt_cfg["system"],
                                                  prompt_cfg["template"])


@stage("rollout", code=[rollout_lib, lean_lm, model_lib, em_inf_lib], main_table="rollouts.parquet", reads={"generate_data": EVAL_FILES})
def rollout(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    rc, seed, run = config["rollout"], config["seed"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    problems = eval_problems(parents["generate_data"], rc["split"], rc["n_prompts"])
    prompts, ids = problems["prompt"].to_pylist(), problems["id"].to_pylist()
    engine = rollout_lib.HFRolloutEngine(model, tokenizer, batch_size=rc["batch_size"], device=model.device,
                                         prompt_format=prompt_format(tokenizer, config["prompt"]))
    decodings = {
        "greedy": rollout_lib.SamplingParams(n=1, temperature=0.0, top_p=1.0, top_k=0,
                                             max_new_tokens=rc["max_new_tokens"], seed=seed),
        "sampled": rollout_lib.SamplingParams(n=rc["n_samples"], temperature=rc["temperature"],
                                              top_p=rc["top_p"], top_k=rc["top_k"],
                                              max_new_tokens=rc["max_new_tokens"], seed=seed),
    }
    processors = []
    if rc.get("em_inf"):
        # EM-INF (arXiv 2505.15134 §4): entropy-minimising logit optimisation before sampling.
        e = rc["em_inf"]
        processors.append(EMInfProcessor(delta=e["delta"], n_steps=e["n_steps"], lr=e["lr"], kl_weight=e["kl_weight"]))
    tables = []
    for name, params in decodings.items():
        with progress_bar(f"rollout {name}", total=len(prompts) * params.n, unit="seq") as advance:
            t = engine.generate(prompts, ids, params, logits_processors=processors or None, progress=advance)
        tables.append(t.append_column("decoding", pa.array([name] * t.num_rows, pa.string())))
        out.log(**{f"{name}_tokens_per_s": engine.tokens_per_second})
    table = pa.concat_tables(tables)
    out.table("rollouts", table)
    n_tok = pa.compute.sum(table["n_tokens"]).as_py()
    out.log(completions=table.num_rows, prompts=len(prompts), generated_tokens=n_tok,
            mean_length=n_tok / max(1, table.num_rows),
            length_clip_ratio=pa.compute.mean(pa.compute.equal(table["finish_reason"], "length")).as_py())
