"""Knowledge probes (entroflow.unlearn.probes) on a tiny from-scratch model and tokenizer."""
from __future__ import annotations

import math

import pytest
import torch

from entroflow.data import kg
from entroflow.model import build_model
from entroflow.tokenizer import BOS, EOS, PAD, train_tokenizer
from entroflow.unlearn import probes

PERSONS = ["Kaloru", "Bimesa", "Tovuna", "Ralidek"]
CITIES = ["Zenapol", "Mirat", "Hokubasen", "Dule"]
BORN = [tpl for tpl in kg.TEMPLATES["born_in"]]
YN = "{statement} true or false ? answer :"


def _texts():
    out = []
    for p, c in zip(PERSONS, CITIES):
        for tpl in BORN:
            out.append(kg.render(tpl["template"], p, c)[0])
    for w in ("yes", "no", "unknown"):
        out += [YN.format(statement=s) + " " + w for s in out[:6]]
    return out


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_texts(), vocab_size=200)


def _model(tok, seed=0):
    return build_model(len(tok), 32, 2, 2, 64, 64, seed=seed).eval()


def _direct(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits.float()[0]
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)


def _prompt(p, i=0):
    return kg.render(BORN[i]["template"], p, "X")[1]


def test_answer_token_logps_matches_direct_forward(tok):
    model = _model(tok)
    prompts = [_prompt(PERSONS[0], 0), _prompt(PERSONS[1], 2), kg.render(BORN[5]["template"], "Tovuna", "X")[1]]
    answers = [CITIES[0], CITIES[2], "Dule"]
    logps, mask = probes.answer_token_logps(model, tok, prompts, answers, batch_size=2)
    assert logps.shape == mask.shape and logps.dtype == torch.float32 and mask.dtype == torch.bool
    lens = set()
    for b, (p, a) in enumerate(zip(prompts, answers)):
        p_ids = tok.encode(p)
        ids = tok.encode(p + " " + a)
        assert ids[:len(p_ids)] == p_ids and p_ids[0] == BOS
        L = len(ids) - 1
        lens.add(L)
        assert torch.allclose(logps[b, :L], _direct(model, ids), atol=1e-5)
        expect = torch.zeros(logps.shape[1], dtype=torch.bool)
        expect[len(p_ids) - 1:L] = True  # targets ids[len(p_ids):] = the answer tokens
        assert torch.equal(mask[b], expect)
        assert tok.decode(ids[len(p_ids):]).strip() == a
        assert float(logps[b, L:].abs().sum()) == 0.0
    assert len(lens) > 1  # rows of different lengths really were padded


class _MergingTokenizer:
    """Character-level, except that "n K" is one token: merges across the prompt/answer boundary."""
    pad_token_id = PAD

    def __init__(self):
        chars = [chr(i) for i in range(32, 127)]
        self.vocab = {c: i + 4 for i, c in enumerate(chars)}
        self.vocab["n K"] = len(self.vocab) + 4

    def encode(self, text):
        ids, i = [BOS], 0
        while i < len(text):
            if text.startswith("n K", i):
                ids.append(self.vocab["n K"])
                i += 3
            else:
                ids.append(self.vocab[text[i]])
                i += 1
        return ids


def test_boundary_merge_puts_merged_token_in_answer():
    mt = _MergingTokenizer()
    model = build_model(len(mt.vocab) + 4, 32, 2, 2, 64, 64, seed=0).eval()
    prompts, answers = ["Tovu was born in", "Tovu was born in"], ["Kal", "Mo"]
    ids, start = probes.answer_span(mt, prompts[0], answers[0])
    assert ids[start] == mt.vocab["n K"] and start == len(mt.encode(prompts[0])) - 1
    logps, mask = probes.answer_token_logps(model, mt, prompts, answers)
    assert mask[0].sum() == 3 and mask[0, start - 1] and not mask[0, start - 2]  # "n K", "a", "l"
    assert mask[1].sum() == 3 and mask[1, len(mt.encode(prompts[1])) - 1]  # " ", "M", "o": no merge
    assert torch.allclose(logps[0, :len(ids) - 1], _direct(model, ids), atol=1e-5)


def test_candidate_softmax_matches_hand_computation(tok):
    model = _model(tok)
    prompt = _prompt(PERSONS[0])
    res = probes.candidate_confidence(model, tok, prompt, CITIES)
    assert math.isclose(sum(res["probs"]), 1.0, rel_tol=1e-9)
    logps, mask = probes.answer_token_logps(model, tok, [prompt] * 4, CITIES)
    mean = [float(logps[i][mask[i]].double().mean()) for i in range(4)]
    z = [math.exp(m) for m in mean]
    hand = [v / sum(z) for v in z]
    assert res["probs"] == pytest.approx(hand, abs=1e-9)
    assert res["argmax"] == max(range(4), key=lambda i: hand[i])
    assert res["entropy"] == pytest.approx(-sum(p * math.log2(p) for p in hand), abs=1e-9)
    batched = probes.candidate_confidence(model, tok, [prompt, _prompt(PERSONS[1])], [CITIES, CITIES[:2]])
    assert batched[0]["probs"] == pytest.approx(res["probs"], abs=1e-6) and len(batched[1]["probs"]) == 2
    rows = [{"prompt": prompt, "answer": CITIES[1], "wrong": [CITIES[0], CITIES[2], CITIES[3]]}]
    tc = probes.triple_confidence(model, tok, rows)[0]
    order = [1, 0, 2, 3]
    assert tc["p_true"] == pytest.approx(hand[1], abs=1e-6)
    assert tc["correct"] == (hand[1] > max(hand[i] for i in order[1:]))
    assert probes.candidate_softmax([[0.0, 0.0]]).tolist() == [[0.5, 0.5]]


def test_aggregate_phrasings_hand_numbers():
    agg = probes.aggregate_phrasings(["a", "b", "a", "a", "b"], [0.9, 0.2, 0.3, 0.6, 0.4])
    assert agg["a"] == pytest.approx({"mean": 0.6, "worst": 0.3, "max": 0.9, "n": 3})
    assert agg["b"] == pytest.approx({"mean": 0.3, "worst": 0.2, "max": 0.4, "n": 2})
    assert list(agg) == ["a", "b"]


def test_belief_rule_hand_logits():
    # log-probs of (yes, no, unknown); renormalised over the three
    r = probes.belief_from_logps([[math.log(0.8), math.log(0.1), math.log(0.1)]])[0]
    h = -(0.8 * math.log2(0.8) + 2 * 0.1 * math.log2(0.1))  # 0.9219 bits
    assert r["p_yes"] == pytest.approx(0.8) and r["entropy"] == pytest.approx(h) and r["believed"]
    assert not probes.belief_from_logps([[math.log(0.8), math.log(0.1), math.log(0.1)]], threshold=0.9)[0]["believed"]
    # the same with un-normalised logits (shifted by a constant)
    r2 = probes.belief_from_logps([[math.log(8.0), math.log(1.0), math.log(1.0)]])[0]
    assert r2["p_yes"] == pytest.approx(0.8) and r2["entropy"] == pytest.approx(h)
    # yes is not the argmax -> not believed even with low entropy
    r3 = probes.belief_from_logps([[0.0, 10.0, 0.0]])[0]
    assert not r3["believed"] and r3["entropy"] < 0.1
    # uniform -> log2 3, a tie -> not believed
    r4 = probes.belief_from_logps([[1.0, 1.0, 1.0]])[0]
    assert r4["entropy"] == pytest.approx(math.log2(3)) and not r4["believed"]
    # confident yes but entropy above threshold (0.6/0.2/0.2 -> 1.37 bits)
    r5 = probes.belief_from_logps([[math.log(0.6), math.log(0.2), math.log(0.2)]])[0]
    assert r5["entropy"] > 1.0 and not r5["believed"]


def test_yes_no_belief_distribution(tok):
    model = _model(tok)
    stmts = [kg.render(BORN[0]["template"], p, c)[0] for p, c in zip(PERSONS, CITIES)]
    res = probes.yes_no_belief(model, tok, stmts, template=YN)
    assert len(res) == 4
    for r in res:
        assert math.isclose(r["p_yes"] + r["p_no"] + r["p_unknown"], 1.0, rel_tol=1e-9)
        assert -1e-12 <= r["entropy"] <= math.log2(3) + 1e-12
    # consistent with the first answer token's log-prob at the next position
    prompt = YN.format(statement=stmts[0])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok.encode(prompt)])).logits[0, -1].float()
    lp = torch.log_softmax(logits, -1)
    first = [tok.encode(prompt + " " + w)[len(tok.encode(prompt))] for w in ("yes", "no", "unknown")]
    expect = torch.softmax(lp[first].double(), -1).tolist()
    assert [res[0]["p_yes"], res[0]["p_no"], res[0]["p_unknown"]] == pytest.approx(expect, abs=1e-6)


def _train(model, tok, texts, steps=200, lr=1e-2):
    docs = [tok.encode(t) + [EOS] for t in texts]
    n = max(map(len, docs))
    ids = torch.full((len(docs), n), PAD)
    attn = torch.zeros((len(docs), n), dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, :len(d)] = torch.tensor(d)
        attn[i, :len(d)] = 1
    labels = torch.where(attn.bool(), ids, torch.full_like(ids, -100))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        opt.step()
    model.eval()
    return model


def test_training_raises_p_true_over_untrained(tok):
    texts = [kg.render(tpl["template"], p, c)[0] for p, c in zip(PERSONS, CITIES)
             for tpl in BORN if tpl["split"] == "train"]
    facts = [{"triple_id": f"t{i}", "prompt": kg.render(tpl["template"], p, c)[1], "answer": c,
              "template_split": tpl["split"]}
             for i, (p, c) in enumerate(zip(PERSONS, CITIES)) for tpl in BORN]
    wrong = {f"t{i}": [x for x in CITIES if x != c] for i, c in enumerate(CITIES)}
    rows = [{"prompt": f["prompt"], "answer": f["answer"], "wrong": wrong[f["triple_id"]]}
            for f in facts if f["template_split"] == "train"]
    before = probes.triple_confidence(_model(tok), tok, rows)
    trained = _train(_model(tok), tok, texts)
    after = probes.triple_confidence(trained, tok, rows)
    mb = sum(r["p_true"] for r in before) / len(before)
    ma = sum(r["p_true"] for r in after) / len(after)
    assert ma > mb + 0.3, (mb, ma)
    assert sum(r["correct"] for r in after) > sum(r["correct"] for r in before)
    ph = probes.phrasing_confidence(trained, tok, facts, wrong)
    assert set(ph) == set(wrong)
    for v in ph.values():
        assert v["n"] == len(BORN) and v["worst"] <= v["mean"] <= v["max"]
        assert v["mean_train"] is not None and v["mean_paraphrase"] is not None
    # determinism
    assert probes.triple_confidence(trained, tok, rows) == after


def test_errors(tok):
    model = _model(tok)
    p = _prompt(PERSONS[0])
    with pytest.raises(ValueError, match="prompts"):
        probes.answer_token_logps(model, tok, [], [])
    with pytest.raises(ValueError, match="answers"):
        probes.answer_token_logps(model, tok, [p, p], [CITIES[0]])
    with pytest.raises(ValueError, match="answers"):
        probes.answer_token_logps(model, tok, [p], [""])
    with pytest.raises(ValueError, match="candidates"):
        probes.candidate_confidence(model, tok, p, [])
    with pytest.raises(ValueError, match="candidates"):
        probes.candidate_confidence(model, tok, p, [CITIES[0], CITIES[0]])
    with pytest.raises(ValueError, match="candidates"):
        probes.candidate_confidence(model, tok, [p, p], [CITIES])
    with pytest.raises(ValueError, match="rows"):
        probes.triple_confidence(model, tok, [])
    with pytest.raises(ValueError, match="rows"):
        probes.triple_confidence(model, tok, [{"prompt": p, "answer": CITIES[0], "wrong": [CITIES[0], CITIES[1]]}])
    with pytest.raises(ValueError, match="rows"):
        probes.triple_confidence(model, tok, [{"prompt": p, "answer": CITIES[0], "wrong": [CITIES[1], CITIES[1]]}])
    with pytest.raises(ValueError, match="p_true"):
        probes.aggregate_phrasings(["a"], [0.1, 0.2])
    with pytest.raises(ValueError, match="triple_ids"):
        probes.aggregate_phrasings([], [])
    with pytest.raises(ValueError, match="facts_rows"):
        probes.phrasing_confidence(model, tok, [], {})
    with pytest.raises(ValueError, match="wrong_objects"):
        probes.phrasing_confidence(model, tok, [{"triple_id": "t9", "prompt": p, "answer": "Dule",
                                                 "template_split": "train"}], {})
    with pytest.raises(ValueError, match="statements"):
        probes.yes_no_belief(model, tok, [])
    with pytest.raises(ValueError, match="template"):
        probes.yes_no_belief(model, tok, ["x"], template="no slot")
    with pytest.raises(ValueError, match="yes/no/unknown"):
        probes.yes_no_belief(model, tok, ["x"], yes="no", template=YN)
    with pytest.raises(ValueError, match="logps"):
        probes.belief_from_logps([[0.0, 1.0]])
