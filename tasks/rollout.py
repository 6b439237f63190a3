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
from entroflow.data import tables
from entroflow.data.tables import EVAL_FILES, eval_problems


@stage("rollout", code=[rollout_lib, lean_lm, model_lib, em_inf_lib, tables], main_table="rollouts.parquet", reads={"generate_data": EVAL_FILES})
def rollout(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    rc, seed, run = config["rollout"], config["seed"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    problems = eval_problems(parents["generate_data"], rc["split"], rc["n_prompts"])
    prompts, ids = problems["prompt"].to_pylist(), problems["id"].to_pylist()
    engine = rollout_lib.HFRolloutEngine(model, tokenizer, batch_size=rc["batch_size"], device=model.device,
                                         prompt_format=rollout_lib.PromptFormat.for_tokenizer(tokenizer, **config["prompt"]))
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
