"""Stage ``watermark_generate``: completions of the held-out prompts with one scheme's watermark
(with the run's key, and with another key for the key-specificity negatives), or without one
(scheme ``none``), plus answers to the reasoning test problems under the watermark (task utility).

Completions run to ``max_new_tokens`` (EOS suppressed after the watermark processor), so every
scheme is compared on texts of one length; each (prompt, seed) has its own sampling seed, so the
watermarked and unwatermarked texts of a prompt share their sampling noise.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from entroflow import lean_lm
from entroflow import model as model_lib
from entroflow import rollout as rollout_lib
from entroflow.data import tables
from entroflow.data.tables import WATERMARK_FILES, eval_problems, watermark_prompts
from entroflow.progress import progress_bar
from entroflow.watermark import detect, entropy, ewd, green, keys, kgw, ltw, schemes, sweet, unigram
from tasks._stage import StageOutput, stage


@stage("watermark_generate", code=[rollout_lib, lean_lm, model_lib, tables, schemes, green, kgw, unigram, sweet, ltw,
                                   ewd, entropy, detect, keys],
       main_table="completions.parquet", reads={"generate_data": WATERMARK_FILES})
def watermark_generate(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    gen, scheme, run = config["generate"], config["scheme"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    vocab = model.config.vocab_size
    fmt = rollout_lib.PromptFormat.for_tokenizer(tokenizer, **config["prompt"])
    engine = rollout_lib.HFRolloutEngine(model, tokenizer, batch_size=gen["batch_size"], device=model.device,
                                         prompt_format=fmt)
    held_out = watermark_prompts(parents["generate_data"], config["prompts"], gen["n_prompts"])
    prompts, ids = held_out["prompt"].to_pylist(), held_out["id"].to_pylist()
    no_eos = rollout_lib.SuppressTokens([tokenizer.eos_token_id])
    variants = {"unwatermarked": None} if scheme is None else {"watermarked": config["key"],
                                                                "other_key": config["other_key"]}
    quality = config["quality"]
    task = eval_problems(parents["generate_data"], "test", quality["task_prompts"])
    completions, answers = [], []
    is_ltw = scheme is not None and scheme["name"].startswith("ltw_")
    encoder = schemes.ltw_encoder(config["ltw"], tokenizer, vocab, model.device) if is_ltw else None
    for seed in config["seeds"]:
        ltw = schemes.ltw_parts(config["ltw"], parents["selector"], seed, encoder, tokenizer, model.device) \
            if is_ltw else None

        def procs(fp):
            return [] if fp is None else [schemes.processor(scheme, vocab, keys.lookup(fp), ltw)]

        params = rollout_lib.SamplingParams(n=1, temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"],
                                            max_new_tokens=gen["max_new_tokens"], seed=seed, stop_on_eos=False)
        for variant, fp in variants.items():
            with progress_bar(f"watermark {variant} s{seed}", total=len(prompts), unit="seq") as advance:
                t = engine.generate(prompts, ids, params, logits_processors=procs(fp) + [no_eos], progress=advance)
            completions.append(t.append_column("variant", pa.array([variant] * t.num_rows, pa.string()))
                               .append_column("wm_seed", pa.array([seed] * t.num_rows, pa.int64())))
            out.log(**{f"{variant}/s{seed}/tokens_per_s": engine.tokens_per_second})
        # Task utility: the reasoning test problems answered under the watermark (EOS allowed).
        fp = variants.get("watermarked") if scheme is not None else None
        for decoding, n, temp in (("greedy", 1, 0.0), ("sampled", quality["task_samples"], gen["temperature"])):
            p = rollout_lib.SamplingParams(n=n, temperature=temp, top_p=gen["top_p"], top_k=gen["top_k"],
                                           max_new_tokens=config["rollout"]["max_new_tokens"], seed=seed)
            t = engine.generate(task["prompt"].to_pylist(), task["id"].to_pylist(), p, logits_processors=procs(fp) or None)
            answers.append(t.append_column("decoding", pa.array([decoding] * t.num_rows, pa.string()))
                           .append_column("wm_seed", pa.array([seed] * t.num_rows, pa.int64())))
    table = pa.concat_tables(completions)
    out.table("completions", table)
    out.table("task", pa.concat_tables(answers))
    out.table("prompts", held_out)
    out.log(completions=table.num_rows, prompts=len(prompts), vocab_size=vocab,
            mean_tokens=pa.compute.mean(table["n_tokens"]).as_py())
