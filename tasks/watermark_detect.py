"""Stage ``watermark_detect``: one scheme's detector on its watermarked text, on attacked copies
of it (a strength sweep per attack) and on three negative pools: the same model's unwatermarked
text, human text (held-out corpus or reference solutions) and text watermarked with another key.

Writes ``detections.parquet`` (one row per sample per variant: token ids, green counts, z, p,
z after each prefix) and logs, per seed and averaged over seeds, AUROC, TPR at 1% / 0.1% FPR
(empirical and from the exact null), best F1, tokens needed to reach 1% FPR, and the same
metrics per attack and strength against the unwatermarked pool.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entroflow import lean_lm
from entroflow import model as model_lib
from entroflow import rollout as rollout_lib
from entroflow.data import tables
from entroflow.data.tables import WATERMARK_FILES
from entroflow.watermark import attacks, detect, entropy, ewd, green, keys, kgw, ltw, metrics, schemes, sweet, unigram
from tasks._stage import StageOutput, stage

ROW_COLUMNS = ("prompt_id", "wm_seed", "variant", "attack", "strength", "token_ids", "num_tokens_generated",
               "num_tokens_scored", "num_green", "green_fraction", "z", "p_value", "score", "score_p", "z_at_T",
               "scored_fraction")


@stage("watermark_detect", code=[model_lib, rollout_lib, lean_lm, tables, schemes, green, kgw, unigram, sweet, ewd, detect, entropy, ltw,
                                 attacks, metrics, keys],
       main_table="detections.parquet", reads={"generate_data": WATERMARK_FILES})
def watermark_detect(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    scheme, gen, run, det = config["scheme"], config["generate"], config["runtime"], config["detect"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    vocab = model.config.vocab_size
    wm_rows = pq.read_table(parents["watermarked"] / "completions.parquet").to_pylist()
    un_rows = pq.read_table(parents["unwatermarked"] / "completions.parquet").to_pylist()
    held_out = {r["id"]: r for r in pq.read_table(parents["watermarked"] / "prompts.parquet").to_pylist()}
    n_new = gen["max_new_tokens"]
    key = keys.lookup(config["key"])
    engine = rollout_lib.HFRolloutEngine(model, tokenizer, batch_size=gen["batch_size"], device=model.device)
    classes = attacks.grammar_classes(tokenizer) if config["prompts"] == "corpus" else {}
    words = sorted({t for ids in classes.values() for t in ids}) or _word_ids(tokenizer)

    # Every text to score: (prompt_id, seed, variant, attack, strength, prompt token ids, token ids).
    texts: list[tuple] = []
    un_by = {(r["prompt_id"], r["wm_seed"]): r for r in un_rows}
    for r in wm_rows:
        texts.append((r["prompt_id"], r["wm_seed"], r["variant"], "", 0.0, r["prompt_token_ids"], r["token_ids"]))
    for r in un_rows:
        texts.append((r["prompt_id"], r["wm_seed"], "unwatermarked", "", 0.0, r["prompt_token_ids"], r["token_ids"]))
    seeds = sorted({r["wm_seed"] for r in un_rows})
    prompt_tokens = {(r["prompt_id"], r["wm_seed"]): r["prompt_token_ids"] for r in un_rows}
    for pid, h in held_out.items():  # human text, cut to the generated length
        human = tokenizer(" " + h["human"].strip() if config["prompts"] == "corpus" else h["human"],
                          add_special_tokens=False)["input_ids"][:n_new]
        for s in seeds:
            texts.append((pid, s, "human", "", 0.0, prompt_tokens[(pid, s)], human))

    clean = [r for r in wm_rows if r["variant"] == "watermarked"]
    if det.get("attack_samples"):  # attacks on the first samples of each seed (prompt order)
        seen: dict[int, int] = {}
        kept = []
        for r in clean:
            seen[r["wm_seed"]] = seen.get(r["wm_seed"], 0) + 1
            if seen[r["wm_seed"]] <= det["attack_samples"]:
                kept.append(r)
        clean = kept
    regen_jobs = []
    for name, strengths in config["attacks"].items():
        if name == "substitute" and not classes:
            continue  # word classes exist for the grammar world only
        for s in strengths:
            for r in clean:
                sid = f"{r['prompt_id']}/s{r['wm_seed']}"
                if name == "regenerate":
                    keep = attacks.regeneration_prefix(r["token_ids"], s)
                    regen_jobs.append((r, s, keep))
                    continue
                ctx = {"classes": classes, "vocab": words,
                       "other": un_by[(r["prompt_id"], r["wm_seed"])]["token_ids"]}
                ids = attacks.apply_attack(name, r["token_ids"], s, r["wm_seed"], sample_id=sid, **ctx)
                texts.append((r["prompt_id"], r["wm_seed"], "attacked", name, s, r["prompt_token_ids"], ids))
    texts += _regenerate(engine, regen_jobs, gen, tokenizer)

    is_ltw = scheme["name"].startswith("ltw_")
    encoder = schemes.ltw_encoder(config["ltw"], tokenizer, vocab, model.device) if is_ltw else None
    rows = []
    for seed in seeds:  # LTW replays the selector of the seed that generated the text
        part = [t for t in texts if t[1] == seed]
        ltw_parts = schemes.ltw_parts(config["ltw"], parents["selector"], seed, encoder, tokenizer,
                                      model.device) if is_ltw else None
        scored = schemes.detect(scheme, vocab, key, [t[5] for t in part], [t[6] for t in part],
                                ignore_repeated_ngrams=det["ignore_repeated_ngrams"], model=model,
                                ltw=ltw_parts, batch_size=gen["batch_size"], device=model.device)
        for t, s in zip(part, scored):
            # Generated tokens needed before the exact binomial p-value reaches the first target
            # FPR (on the per-token green bits: the unweighted statistic, also for EWD).
            need = detect.tokens_to_fpr(s["green"], scheme["gamma"], det["fprs"][0])
            rows.append({"prompt_id": t[0], "wm_seed": t[1], "variant": t[2], "attack": t[3], "strength": float(t[4]),
                         "token_ids": list(t[6]), **{k: s[k] for k in ROW_COLUMNS[6:]}, "tokens_to_fpr": need})
    table = pa.Table.from_pylist(rows)
    out.table("detections", table)
    out.log(**summarise(rows, det, config["attacks"]))


def summarise(rows: list[dict], det: dict, attack_cfg: dict) -> dict[str, float]:
    """Per seed, then mean over seeds: clean watermarked text vs each negative pool, and each
    attack x strength vs the unwatermarked pool."""
    seeds = sorted({r["wm_seed"] for r in rows})
    fprs = det["fprs"]
    per_seed: list[dict[str, float]] = []
    for seed in seeds:
        rs = [r for r in rows if r["wm_seed"] == seed]
        pick = lambda v, a="", s=0.0: [r for r in rs if r["variant"] == v and r["attack"] == a and r["strength"] == s]  # noqa: E731
        pos = pick("watermarked")
        m: dict[str, float] = {}
        for pool in ("unwatermarked", "human", "other_key"):
            neg = pick(pool)
            res = metrics.detection_metrics([r["score"] for r in pos], [r["score"] for r in neg],
                                            [r["score_p"] for r in pos], [r["score_p"] for r in neg], fprs,
                                            z_threshold=det["z_threshold"])
            m.update({f"{pool}/{k}": v for k, v in res.items()})
        neg = [r["score"] for r in pick("unwatermarked")]
        for name, strengths in attack_cfg.items():
            for s in strengths:
                att = [r for r in rs if r["attack"] == name and r["strength"] == s]
                if not att:
                    continue
                res = metrics.detection_metrics([r["score"] for r in att], neg, [r["score_p"] for r in att], None, fprs)
                m.update({f"attack/{name}/{s:g}/{k}": res[k] for k in ("auroc", f"tpr_at_fpr_{fprs[0]:g}")})
        need = [r["tokens_to_fpr"] for r in pos]
        m["tokens_to_fpr"] = float(np.nanmedian([np.nan if n is None else n for n in need])) if need else np.nan
        m["detected_within_length"] = float(np.mean([n is not None for n in need])) if need else np.nan
        m["scored_fraction"] = float(np.mean([r["scored_fraction"] for r in pos])) if pos else np.nan
        m["mean_z"] = float(np.mean([r["z"] for r in pos])) if pos else np.nan
        per_seed.append(m)
    out: dict[str, float] = {}
    for k in per_seed[0]:
        vals = np.array([m[k] for m in per_seed], dtype=float)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        if len(per_seed) > 1:
            out[f"{k}/sd"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else float("nan")
        for seed, v in zip(seeds, vals):
            out[f"s{seed}/{k}"] = float(v)
    return out


def _regenerate(engine, jobs: list[tuple], gen: dict, tokenizer) -> list[tuple]:
    """The re-generation attack: the unwatermarked model continues each kept prefix (same
    sampling settings, EOS suppressed) back to the original length."""
    if not jobs:
        return []
    params = rollout_lib.SamplingParams(n=1, temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"],
                                        max_new_tokens=gen["max_new_tokens"], seed=10_000, stop_on_eos=False)
    prefixes = [list(r["prompt_token_ids"]) + keep for r, _, keep in jobs]
    ids = [f"{r['prompt_id']}/s{r['wm_seed']}/{s:g}" for r, s, _ in jobs]
    t = engine.generate_from_tokens(prefixes, ids, params,
                                    logits_processors=[rollout_lib.SuppressTokens([tokenizer.eos_token_id])])
    out = []
    for (r, s, keep), cont in zip(jobs, t["token_ids"].to_pylist()):
        ids = (keep + cont)[: len(r["token_ids"])]
        out.append((r["prompt_id"], r["wm_seed"], "attacked", "regenerate", s, r["prompt_token_ids"], ids))
    return out


def _word_ids(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]
