"""Stage ``generate_data``: the seeded synthetic world (and an optional real dataset) as Parquet."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from entroflow import answers
from entroflow.data import grammar, kg, loaders, ood, reasoning, tables, word_problems
from entroflow.data.tables import WORLD_FILE
from tasks._stage import StageOutput, stage


@stage("generate_data", code=[reasoning, grammar, kg, ood, loaders, word_problems, answers, tables], main_table="reasoning.parquet")
def generate_data(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    seed, data = config["seed"], config["data"]
    r = data["reasoning"]
    levels = [reasoning.Level(lv["operands"], lv["digits"]) for lv in r["levels"]]
    problems = reasoning.generate(levels, r["n_train"], r["n_test"], r["ops"], r["direct_fraction"], seed)
    out.table("reasoning", problems)
    out.log(reasoning_train=r["n_train"], reasoning_test=r["n_test"], levels=len(levels))

    grammar_table = None
    if data["corpus"]["n_sentences"] > 0:
        grammar_table = grammar.generate(data["corpus"]["n_sentences"], seed + 1, data["corpus"]["n_test"])
        out.table("corpus", grammar_table)
        stats = grammar.sentence_entropy_stats(grammar_table)
        out.log(corpus_sentences=grammar_table.num_rows,
                **{f"corpus_{k}": v for k, v in stats.items()})
        if data["corpus"].get("paragraph_sentences"):
            lo, hi = data["corpus"]["paragraph_sentences"]
            paragraphs = grammar.paragraphs(grammar_table, lo, hi, seed + 5)
            out.table("paragraphs", paragraphs)
            out.log(corpus_paragraphs=paragraphs.num_rows)

    kg_tables = None
    if data["kg"]["enabled"]:
        k = data["kg"]
        kg_tables = kg.generate(k["n_persons"], k["n_cities"], k["n_countries"], k["n_orgs"], seed + 2)
        for name, table in kg_tables.items():
            out.table(f"kg_{name}", table)
        violations = kg.check_rules(kg_tables)
        if violations:
            raise ValueError(f"knowledge graph breaks its rules: {violations[0]}")
        out.log(kg_triples=kg_tables["triples"].num_rows, kg_facts=kg_tables["facts"].num_rows)

    ood_table = ood.generate(seed + 3, data["ood"]["n_per_suite"], levels, grammar_table, kg_tables, r["ops"])
    out.table("ood", ood_table)
    out.log(ood_prompts=ood_table.num_rows)

    wp = data.get("word_problems")
    if wp:
        table = word_problems.generate(wp["levels"], wp["n_train"], wp["n_test"], seed + 4)
        out.table("word_problems", table)
        out.log(word_problems_train=wp["n_train"], word_problems_test=wp["n_test"])

    ext, ext_train = data.get("external"), data.get("external_train")
    if ext:
        load = loaders.load_gsm8k if ext["format"] == "gsm8k" else loaders.load_math
        table = load(ext["path"], ext["split"])
        out.log(external_rows=table.num_rows)
        if ext_train:
            # The train split's rows join the same table with split "train" (RL reads them), and
            # ids prefixed "train/" (both files number their rows from gsm8k-000001 when they
            # carry no ids of their own; ids key the gold answers and the sampling seeds).
            train = load(ext_train["path"], ext_train["split"])
            for name, values in (("split", ["train"] * train.num_rows),
                                 ("id", [f"train/{i}" for i in train["id"].to_pylist()])):
                i = train.schema.get_field_index(name)
                train = train.set_column(i, train.schema.field(i), pa.array(values, pa.string()))
            overlap = set(train["prompt"].to_pylist()) & set(table["prompt"].to_pylist())
            if overlap:
                raise ValueError(f"data.external_train: {len(overlap)} problems also appear in data.external "
                                 f"(e.g. {next(iter(overlap))[:60]!r}); a train split must not hold test problems")
            out.log(external_train_rows=train.num_rows)
            table = pa.concat_tables([table, train])
        out.table("external", table)
    eval_table = data.get("evaluate", "auto")
    if eval_table == "auto":
        eval_table = "external" if ext else "reasoning"
    fmt = {"reasoning": "synthetic", "word_problems": "gsm8k"}.get(eval_table) or ext["format"]
    (out.dir / WORLD_FILE).write_text(json.dumps(
        {"answer_format": fmt, "eval_table": eval_table,
         "eval_split": ext["split"] if eval_table == "external" else None}, indent=2))
