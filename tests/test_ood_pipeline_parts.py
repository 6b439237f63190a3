"""The OOD flow's parts below the stages: one-pass feature extraction (against one pass per layer),
the ID/OOD rows an evaluation embeds, the per-model evaluation (selection from ID data only), and
the cross-model claims and RL table on hand numbers."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from entroflow.claims import FAILS, HOLDS, UNTESTABLE
from entroflow.data import grammar, kg, ood, reasoning
from entroflow.data.tables import WORLD_FILE
from entroflow.model import build_model
from entroflow.ood import compare, evaluate, features, suites
from entroflow.ood.detectors import LOGIT_DETECTORS, logit_scores
from entroflow.tokenizer import train_tokenizer

TEXTS = ["3+4:", "37+5-12:", "the old king sees a river .", "81-6+15+2:", "a bird sings",
         "Ada lives in Pisa .", "9+90:", "12+13-4-7:", "xq zz 7", "the river is calm and the king sleeps ."]


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    corpus = [f"{rng.randint(1, 99)}+{rng.randint(1, 99)}-{rng.randint(1, 9)}:" for _ in range(200)] + TEXTS * 20
    return train_tokenizer(corpus, 96)


@pytest.fixture(scope="module")
def model(tok):
    return build_model(len(tok), 32, 3, 2, 64, 64, seed=0).eval()


def _rows(texts, split="test"):
    return [{"id": f"r{i}", "split": split, "suite": "s", "shift": 0, "domain": "text", "text": t}
            for i, t in enumerate(texts)]


def test_one_pass_features_equal_per_layer_forwards(model, tok, tmp_path):
    path = tmp_path / "f.parquet"
    info = features.extract(model, tok, _rows(TEXTS), path, batch_size=4)
    assert info["layers"] == 3 and info["rows"] == len(TEXTS)
    rows = features.read_rows(path).to_pylist()
    order = [int(r["id"][1:]) for r in rows]  # the file is in length order, ids say which text
    ids = features.tokenize(tok, [TEXTS[i] for i in order], 128)
    for layer in range(4):
        got_mean = features.read_matrix(path, features.feature_column("mean", layer))
        got_last = features.read_matrix(path, features.feature_column("last", layer))
        for j, seq in enumerate(ids):
            x = torch.tensor([seq])
            h = features.forward_to_layer(model, x, torch.ones_like(x), layer)[0].float()
            # mean leaves out the leading <bos>; last is the final token
            assert np.allclose(got_mean[j], h[1:].mean(0).numpy(), atol=1e-5)
            assert np.allclose(got_last[j], h[-1].numpy(), atol=1e-5)


def test_batching_and_padding_do_not_change_features(model, tok, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    features.extract(model, tok, _rows(TEXTS), a, batch_size=1)
    features.extract(model, tok, _rows(TEXTS), b, batch_size=16)
    for col in (features.feature_column("mean", 2), features.feature_column("last", 3)):
        assert np.allclose(features.read_matrix(a, col), features.read_matrix(b, col), atol=1e-5)
    for s in LOGIT_DETECTORS:
        assert np.allclose(features.read_matrix(a, features.logit_column(s, 1)),
                           features.read_matrix(b, features.logit_column(s, 1)), atol=1e-5)
    assert np.allclose(features.read_rows(a)["nll"].to_numpy(), features.read_rows(b)["nll"].to_numpy(), atol=1e-5)


def test_logit_lens_of_the_last_layer_is_the_models_prediction(model, tok, tmp_path):
    path = tmp_path / "f.parquet"
    features.extract(model, tok, _rows(TEXTS[:3]), path, batch_size=8)
    rows = features.read_rows(path).to_pylist()
    for j, r in enumerate(rows):
        seq = features.tokenize(tok, [TEXTS[int(r["id"][1:])]], 128)[0]
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1:]
        want = logit_scores(logits)
        for s in LOGIT_DETECTORS:
            assert features.read_matrix(path, features.logit_column(s, 3))[j] == pytest.approx(float(want[s][0]), abs=1e-4)
        # nll: the mean next-token NLL of the text
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1], -1)
        nll = -lp.gather(1, torch.tensor(seq[1:])[:, None]).mean()
        assert r["nll"] == pytest.approx(float(nll), abs=1e-4)


def test_kept_probabilities_are_distributions_and_exact_for_a_small_vocabulary(model, tok, tmp_path):
    info = features.extract(model, tok, _rows(TEXTS), tmp_path / "f.parquet", batch_size=3,
                            keep_probs=lambda r: r["id"] in ("r0", "r4"), top_m=10_000)
    p = info["probs"]
    assert p.shape == (2, 4, len(tok) + 1) and sorted(info["prob_ids"]) == ["r0", "r4"]
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5) and np.allclose(p[..., -1], 0.0, atol=1e-6)
    small = features.extract(model, tok, _rows(TEXTS), tmp_path / "g.parquet", keep_probs=lambda r: True, top_m=5)
    assert small["probs"].shape[-1] == 6 and np.allclose(small["probs"].sum(-1), 1.0, atol=1e-5)


def test_extract_errors(model, tok, tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        features.extract(model, tok, [], tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="pooling: unknown 'max'"):
        features.extract(model, tok, _rows(TEXTS), tmp_path / "f.parquet", poolings=["max"])
    assert not (tmp_path / "f.parquet").exists()


def test_extraction_writes_one_batch_at_a_time(model, tok, tmp_path):
    """Streaming: the writer gets one batch at a time, so the features are never held (peak
    memory itself is measured by benchmarks/bench_ood.py)."""
    import pyarrow.parquet as pq_mod

    sizes = []
    real = pq_mod.ParquetWriter.write_table

    def spy(self, table, *a, **k):
        sizes.append(table.num_rows)
        return real(self, table, *a, **k)

    pq_mod.ParquetWriter.write_table = spy
    try:
        features.extract(model, tok, _rows(TEXTS * 5), tmp_path / "f.parquet", batch_size=8)
    finally:
        pq_mod.ParquetWriter.write_table = real
    assert max(sizes) <= 8 and sum(sizes) == 50


# ---------------------------------------------------------------------------------------------
# The rows an evaluation embeds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    levels = [reasoning.Level(2, 1), reasoning.Level(2, 2)]
    pq.write_table(reasoning.generate(levels, 300, 20, "+", 0.5, 0), d / "reasoning.parquet")
    corpus = grammar.generate(300, 1, 40)
    pq.write_table(corpus, d / "corpus.parquet")
    world = kg.generate(12, 4, 3, 3, 2)
    pq.write_table(world["facts"], d / "kg_facts.parquet")
    pq.write_table(ood.generate(3, 12, levels, corpus, world, "+"), d / "ood.parquet")
    (d / WORLD_FILE).write_text(json.dumps({"answer_format": "synthetic", "eval_table": "reasoning", "eval_split": None}))
    return d


def test_rows_fit_val_test_are_disjoint_and_ood_is_never_fitted(data_dir):
    rows = suites.build_rows(data_dir, 0, 40, 20)
    by = {s: [r for r in rows if r["split"] == s] for s in ("fit", "val", "test")}
    assert {r["domain"] for r in by["fit"]} == {"reasoning", "text", "kg"}
    for dom in ("reasoning", "text", "kg"):
        assert sum(r["domain"] == dom for r in by["val"]) == 20
    texts = {s: {r["text"] for r in v} for s, v in by.items()}
    assert not texts["fit"] & texts["val"] and not texts["fit"] & texts["test"] and not texts["val"] & texts["test"]
    domains = suites.id_domains(rows)
    assert all(suites.is_id(r, domains) for r in by["fit"] + by["val"])
    ood_suites = suites.ood_suites(rows, domains)
    assert "near_reasoning" in ood_suites and "id_text" not in ood_suites and "far_random" in ood_suites
    # a suite is compared with the ID controls of its domain; far_random (mixed) with all of them
    pool = {rows[i]["suite"] for i in suites.id_pool(rows, "near_text", domains)}
    assert pool == {"id_text"}
    assert {rows[i]["suite"] for i in suites.id_pool(rows, "far_random", domains)} == {"id_reasoning", "id_text", "id_kg"}
    # the trained operators only: this world has '+' alone
    assert all("-" not in r["text"] for r in by["test"] if r["suite"] in ("id_reasoning", "near_reasoning"))
    assert suites.build_rows(data_dir, 0, 40, 20) == rows
    assert suites.build_rows(data_dir, 1, 40, 20) != rows


# ---------------------------------------------------------------------------------------------
# One model's evaluation


def _synthetic_scores(seed=0):
    """Rows and per-layer scores where layer 1 separates the OOD suite and layer 2 (the last) less."""
    rng = np.random.default_rng(seed)
    rows = ([{"id": f"v{i}", "split": "val", "suite": "id_val", "shift": 0, "domain": "text"} for i in range(60)]
            + [{"id": f"i{i}", "split": "test", "suite": "id_text", "shift": 0, "domain": "text"} for i in range(50)]
            + [{"id": f"o{i}", "split": "test", "suite": "near_text", "shift": 1, "domain": "text"} for i in range(50)]
            + [{"id": f"f{i}", "split": "test", "suite": "far_random", "shift": 3, "domain": "mixed"} for i in range(50)])
    is_ood = np.array([r["shift"] > 0 for r in rows])
    scores = {"mahalanobis/mean": {0: rng.normal(size=len(rows)),
                                   1: rng.normal(size=len(rows)) + 2.0 * is_ood,
                                   2: rng.normal(size=len(rows)) + 0.5 * is_ood}}
    probs = rng.dirichlet(np.ones(6), size=(60, 3))
    return rows, scores, probs


def test_evaluate_metrics_and_fused_sets():
    rows, scores, probs = _synthetic_scores()
    metrics, selections = evaluate.evaluate(rows, scores, {"text"}, probs)
    table = compare.shift_table([{**m, "model": "m"} for m in metrics])
    assert table[("m", "mahalanobis/mean", "layer:1", "near")] > table[("m", "mahalanobis/mean", "last", "near")] + 0.2
    assert table[("m", "mahalanobis/mean", "oracle/near", "near")] >= table[("m", "mahalanobis/mean", "last", "near")]
    last = [m for m in metrics if m["selector"] == "last"]
    assert {m["layer_set"] for m in last} == {"2"} and {m["suite"] for m in last} == {"near_text", "far_random"}
    assert all(m["n_id"] == 50 and m["n_ood"] == 50 for m in metrics)
    assert {s["criterion"] for s in selections} == {"mean_softmax_entropy", "score_entropy"}
    assert sum(s["chosen"] for s in selections if s["criterion"] == "score_entropy") == 1
    # fusion over the last layer alone is the last layer
    one = [m for m in metrics if m["selector"] == "layer" and m["layer"] == 2]
    for a, b in zip(sorted(one, key=lambda m: m["suite"]), sorted(last, key=lambda m: m["suite"])):
        assert a["auroc"] == pytest.approx(b["auroc"])


def test_layer_selection_never_reads_ood_labels():
    rows, scores, probs = _synthetic_scores()
    _, sel = evaluate.evaluate(rows, scores, {"text"}, probs)
    # Shuffle which test rows are ID and which OOD (suite, shift, domain together): the oracle and
    # the metrics move, the ID-only selections do not.
    rng = random.Random(0)
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    labels = [(rows[i]["suite"], rows[i]["shift"], rows[i]["domain"]) for i in test]
    rng.shuffle(labels)
    shuffled = [dict(r) for r in rows]
    for i, (s, sh, d) in zip(test, labels):
        shuffled[i].update(suite=s, shift=sh, domain=d)
    m2, sel2 = evaluate.evaluate(shuffled, scores, {"text"}, probs)
    assert sel2 == sel
    m1, _ = evaluate.evaluate(rows, scores, {"text"}, probs)
    assert [m["auroc"] for m in m2] != [m["auroc"] for m in m1]


def test_layer_scores_fit_on_fit_rows_only(model, tok, tmp_path):
    rows = [{"id": f"f{i}", "split": "fit", "suite": "id_fit", "shift": 0, "domain": "text", "text": t}
            for i, t in enumerate(TEXTS * 2)]
    rows += [{"id": f"v{i}", "split": "val", "suite": "id_val", "shift": 0, "domain": "text", "text": t}
             for i, t in enumerate(TEXTS[:6])]
    rows += [{"id": f"t{i}", "split": "test", "suite": "far_random", "shift": 3, "domain": "mixed", "text": t}
             for i, t in enumerate(["zz zz", "q 7 7 q"])]
    path = tmp_path / "f.parquet"
    features.extract(model, tok, rows, path)
    got, scores, domains = evaluate.layer_scores(path, ["mahalanobis", "knn", "msp", "nll"], ["mean"],
                                                 {"knn": {"k": 3}})
    assert domains == {"text"} and all(r["split"] != "fit" for r in got) and len(got) == 8
    assert set(scores) == {"mahalanobis/mean", "knn/mean", "msp/lens", "nll/seq"}
    assert sorted(scores["mahalanobis/mean"]) == [0, 1, 2, 3] and list(scores["nll/seq"]) == [3]
    assert all(np.isfinite(s).all() and len(s) == 8 for by in scores.values() for s in by.values())
    features.extract(model, tok, rows, tmp_path / "m.parquet", poolings=["mean"])
    with pytest.raises(ValueError, match="ood.pooling: 'last' was not extracted"):
        evaluate.layer_scores(tmp_path / "m.parquet", ["knn"], ["last"])


# ---------------------------------------------------------------------------------------------
# Claims and the RL table on hand numbers


def test_claims_on_hand_numbers():
    models = [{"name": f"base,s{s}", "kind": "base", "seed": s} for s in (0, 1, 2)]
    t = {}
    for i, m in enumerate(models):
        for shift in ("near", "far"):
            t[(m["name"], "x/mean", "last", shift)] = 0.70
            t[(m["name"], "x/mean", "layer:2", shift)] = 0.70
            t[(m["name"], "x/mean", "layer:1", shift)] = 0.80 + 0.01 * i if shift == "near" else 0.70 + 0.02 * (i - 1)
            t[(m["name"], "x/mean", "layer:0", shift)] = 0.50
            t[(m["name"], "x/mean", "mean_softmax_entropy", shift)] = 0.70
            t[(m["name"], "x/mean", "score_entropy", shift)] = 0.75
            t[(m["name"], "x/mean", f"oracle/{shift}", shift)] = 0.85
    rows = compare.claims(t, models, {m["name"]: 2 for m in models}, ["x/mean"])
    verdicts = {(r["claim"].split(":")[0], "layer" if "intermediate" in r["claim"] else r["claim"].split("(")[1].split(")")[0]): r["verdict"]
                for r in rows}
    assert verdicts[("x/mean, near shift", "layer")] == HOLDS  # +0.11 ± 0.01
    assert verdicts[("x/mean, far shift", "layer")] == FAILS  # +0.00 ± 0.02
    assert verdicts[("x/mean, near shift", "mean_softmax_entropy")] == FAILS  # no gain
    assert verdicts[("x/mean, near shift", "score_entropy")] == HOLDS  # +0.05, no spread
    assert "layer 1" in rows[0]["evidence"] and "3 base models" in rows[0]["evidence"]
    missing = compare.claims({}, models, {m["name"]: 2 for m in models}, ["x/mean"])
    assert {r["verdict"] for r in missing} == {UNTESTABLE}


def test_rl_effect_is_policy_minus_its_base():
    models = [{"name": "base,s0", "kind": "base", "seed": 0}, {"name": "grpo,s0", "kind": "grpo", "seed": 0},
              {"name": "grpo,s1", "kind": "grpo", "seed": 1}]
    t = {("base,s0", "x/mean", "layer:1", "near"): 0.6, ("grpo,s0", "x/mean", "layer:1", "near"): 0.7,
         ("grpo,s1", "x/mean", "layer:1", "near"): 0.8}
    rows = compare.rl_effect(t, models, "base,s0", 1, ["x/mean"])
    assert len(rows) == 1 and rows[0]["method"] == "grpo" and rows[0]["layer"] == "1"
    assert rows[0]["delta"] == pytest.approx(0.15) and rows[0]["delta_sd"] == pytest.approx(math.sqrt(0.005))


def test_fast_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 30).astype(float)
        want = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[a, b])
        assert evaluate._auroc(a, b) == pytest.approx(want, abs=1e-12)
