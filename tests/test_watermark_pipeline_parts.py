"""The watermark flow's plain parts: claim verdicts, the claims table, keys, paragraphs, the
held-out prompts and length-bucketed pretraining."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from entroflow import claims as claims_lib
from entroflow.watermark import compare, keys


def _summ(**rows):
    return {name: {k: (v, 0.0, 1) for k, v in r.items()} for name, r in rows.items()}


def test_ltw_claim_holds_only_at_the_operating_point():
    base = {"tpr_1pct": 1.0, "auroc": 1.0, "tokens_to_fpr": 10.0, "task_sampled_acc": 0.5}
    s = _summ(none={"perplexity": 10.0, "task_sampled_acc": 0.5},
              kgw={**base, "perplexity": 20.0, "task_sampled_acc": 0.3},
              ltw_kgw={**base, "perplexity": 13.0, "task_sampled_acc": 0.45})
    rows = {r["claim"]: r for r in compare.claims(s, {}, [0])}
    ppl = next(r for c, r in rows.items() if "perplexity closer" in c)
    util = next(r for c, r in rows.items() if "task utility closer" in c)
    assert ppl["verdict"] == util["verdict"] == compare.HOLDS
    assert "13.00 vs 20.00, unwatermarked 10.00" in ppl["evidence"]
    # LTW below the detectability bar while KGW meets it: the claim fails (it lost detectability).
    s["ltw_kgw"]["tpr_1pct"] = (0.8, 0.0, 1)
    ppl = next(r for r in compare.claims(s, {}, [0]) if "perplexity closer" in r["claim"])
    assert ppl["verdict"] == compare.FAILS
    # Both below it: not testable at this operating point.
    s["kgw"]["tpr_1pct"] = (0.8, 0.0, 1)
    ppl = next(r for r in compare.claims(s, {}, [0]) if "perplexity closer" in r["claim"])
    assert ppl["verdict"] == compare.UNTESTABLE


def test_claim_differences_inside_the_seed_spread_do_not_hold():
    s = {"none": {"perplexity": (10.0, 0.5, 3), "task_sampled_acc": (0.5, 0.01, 3)},
         "kgw": {"perplexity": (12.0, 1.5, 3), "tpr_1pct": (1.0, 0.0, 3), "task_sampled_acc": (0.5, 0.01, 3),
                 "tokens_to_fpr": (9.0, 1.0, 3), "auroc": (1.0, 0.0, 3)},
         "ltw_kgw": {"perplexity": (11.5, 1.0, 3), "tpr_1pct": (1.0, 0.0, 3), "task_sampled_acc": (0.5, 0.01, 3)}}
    ppl = next(r for r in compare.claims(s, {}, [0, 1, 2]) if "perplexity closer" in r["claim"])
    assert ppl["verdict"] == compare.FAILS and "inside the seed spread" in ppl["evidence"]


def test_ewd_and_unigram_verdicts():
    s = _summ(none={"perplexity": 1.0}, kgw={"auroc": 1.0, "tpr_1pct": 1.0, "tokens_to_fpr": 30.0},
              ewd={"auroc": 1.0, "tpr_1pct": 1.0})
    det = {"kgw": {"attack/delete/0.3/tpr_at_fpr_0.01": 0.5}, "unigram": {"attack/delete/0.3/tpr_at_fpr_0.01": 0.9}}
    s["unigram"] = {}
    rows = {r["paper"].split()[0]: r for r in compare.claims(s, det, [0])}
    assert rows["EWD"]["verdict"] == compare.UNTESTABLE and "saturated" in rows["EWD"]["evidence"]
    assert rows["Unigram"]["verdict"] == compare.HOLDS
    assert rows["KGW"]["verdict"] == compare.FAILS  # 30 tokens > 25
    # Saturated on clean text: EWD is compared with KGW on edited text instead.
    det["ewd"] = {"attack/delete/0.3/tpr_at_fpr_0.01": 0.6}
    rows = {r["paper"].split()[0]: r for r in compare.claims(s, det, [0])}
    assert rows["EWD"]["verdict"] == compare.HOLDS and "delete 0.3: 0.600 vs 0.500" in rows["EWD"]["evidence"]


def test_claims_table_merges_flows():
    rows = claims_lib.normalise([{"paper": "EMPO (Zhang et al. 2025)", "claim": "c1", "holds": False, "evidence": "e"}],
                                "reasoning")
    rows += claims_lib.normalise([{"flow": "watermark", "paper": "LTW", "claim": "c2",
                                   "verdict": "not testable here", "evidence": "x"}], "watermark")
    assert [r["verdict"] for r in rows] == ["does not hold", "not testable here"]
    text = claims_lib.render(rows, "t")
    assert "2 claims: 0 hold, 1 do not hold, 1 not testable here." in text
    assert "| reasoning | EMPO (Zhang et al. 2025) | c1 | **does not hold** | e |" in text


def test_keys_are_looked_up_by_fingerprint(monkeypatch):
    fp = keys.fingerprint(123456789)
    assert fp.startswith("sha256:") and "123456789" not in fp and fp != keys.fingerprint(123456780)
    with pytest.raises(KeyError, match="ENTROFLOW_WATERMARK_KEYS"):
        keys.lookup(keys.fingerprint(99991))
    monkeypatch.setenv(keys.ENV, "99991")
    assert keys.lookup(keys.fingerprint(99991)) == 99991
    assert keys.lookup(keys.register(42)) == 42


def test_paragraphs_group_consecutive_sentences_per_split():
    from entroflow.data import grammar

    t = grammar.generate(60, seed=1, n_test=20)
    p = grammar.paragraphs(t, 2, 5, seed=3)
    for split in ("train", "test"):
        sents = t.filter(pa.compute.equal(t["split"], split))["text"].to_pylist()
        paras = p.filter(pa.compute.equal(p["split"], split)).to_pylist()
        assert " ".join(r["text"] for r in paras) == " ".join(sents)
        assert all(r["n_sentences"] <= 5 for r in paras) and all(r["n_sentences"] >= 2 for r in paras[:-1])
    with pytest.raises(ValueError, match="1 <= min <= max"):
        grammar.paragraphs(t, 3, 2, seed=0)


def test_length_buckets_give_the_padded_batch_loss():
    """Pretraining's length buckets: the same mean token loss and gradient as one padded batch."""
    from entroflow.model import Document, build_model, collate, length_buckets

    docs = [Document([1] + [5 + i % 7] * n + [2], [0] + [1] * (n + 1), "x") for i, n in enumerate([3, 4, 3, 40, 5, 38])]
    groups = length_buckets(docs)
    assert len(groups) == 2 and sorted(len(d.ids) for d in groups[1]) == [40, 42]
    model = build_model(64, 32, 1, 2, 64, 64, 0)

    def loss_of(batches):
        model.zero_grad()
        n = sum(int((collate(b, 64)[2] != -100).sum()) for b in batches)
        total = 0.0
        for b in batches:
            ids, attn, labels = collate(b, 64)
            logits = model(input_ids=ids, attention_mask=attn).logits
            part = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1),
                                                     ignore_index=-100, reduction="sum") / n
            part.backward()
            total += part.item()
        return total, model.model.embed_tokens.weight.grad.clone()

    one, g1 = loss_of([docs])
    two, g2 = loss_of(groups)
    assert math.isclose(one, two, rel_tol=1e-5) and torch.allclose(g1, g2, atol=1e-6)


def test_watermark_prompts_continue_with_the_next_sentences(tmp_path):
    import json

    import pyarrow.parquet as pq

    from entroflow.data import grammar
    from entroflow.data.tables import watermark_prompts

    t = grammar.generate(10, seed=2, n_test=15)
    pq.write_table(t, tmp_path / "corpus.parquet")
    (tmp_path / "world.json").write_text(json.dumps({"answer_format": "synthetic", "eval_table": "reasoning"}))
    p = watermark_prompts(tmp_path, "corpus", 5).to_pylist()
    test = t.filter(pa.compute.equal(t["split"], "test"))["text"].to_pylist()
    assert [r["prompt"] for r in p] == test[:5]
    assert p[0]["human"].startswith(test[1] + " " + test[2])


def test_keys_never_reach_mlflow_params_or_run_names():
    from flows.pipeline import _override_without_key, _without_keys

    assert _override_without_key("watermark.key=12345") == f"watermark.key={keys.fingerprint(12345)}"
    assert _override_without_key("rollout.temperature=0.5") == "rollout.temperature=0.5"
    d = _without_keys({"watermark": {"key": 12345, "other_key": 7, "gamma": 0.25}, "seed": 0})
    assert d["watermark"] == {"key": keys.fingerprint(12345), "other_key": keys.fingerprint(7), "gamma": 0.25}
