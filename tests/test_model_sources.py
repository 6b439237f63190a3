"""Model sources (import_model), prompt formats and real-data config checks, on tiny models built
here (no package needed; the real SmolLM2 file is exercised by tests/test_real_model.py)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml

from entroflow import model_import
from entroflow.config import ConfigError, load_config
from tests.conftest import REPO

SMOKE = REPO / "configs" / "smoke.yaml"


def _gguf(path: Path, kvs: list[tuple[str, int, object]]) -> Path:
    """A GGUF header (version 3, no tensors) with the given (key, type, value) pairs."""
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, vtype, value in kvs:
        out += s(key) + struct.pack("<I", vtype)
        if vtype == 8:
            out += s(value)
        elif vtype == 4:
            out += struct.pack("<I", value)
        elif vtype == 9:  # array of strings
            out += struct.pack("<IQ", 8, len(value)) + b"".join(s(v) for v in value)
    path.write_bytes(out)
    return path


def test_gguf_header_reader_skips_to_the_architecture(tmp_path):
    p = _gguf(tmp_path / "m.gguf", [("general.alignment", 4, 32), ("tokenizer.ggml.tokens", 9, ["a", "bb", "<s>"]),
                                    ("general.architecture", 8, "qwen2")])
    assert model_import.architecture(p) == "qwen2"
    assert model_import.check_source("gguf", None, p) == p


@pytest.mark.parametrize("name, model, expected", [
    ("package not installed", {"source": "package", "package": "no-such-model-pkg"},
     "model.package: no-such-model-pkg is not installed; install it with: pip install no-such-model-pkg"),
    ("package missing", {"source": "package"}, "source 'package' needs model.package"),
    ("gguf missing", {"source": "gguf", "path": "/nonexistent/m.gguf"}, "model.path: /nonexistent/m.gguf does not exist"),
    ("not gguf", {"source": "gguf", "path": "SMOKE"}, "is not a .gguf file"),
    ("gguf garbage", {"source": "gguf", "path": "GARBAGE"}, "is not a readable GGUF file (no GGUF magic number)"),
    ("gguf unknown arch", {"source": "gguf", "path": "ALIEN"}, "cannot load GGUF files of architecture 'alien9'"),
    ("hf unknown arch", {"source": "pretrained", "path": "HFALIEN"}, "cannot load causal LMs of architecture 'alien9'"),
    ("hf no config", {"source": "pretrained", "path": "EMPTY"}, "no Hugging Face model (config.json)"),
])
def test_bad_model_source_is_one_line_before_anything_runs(tmp_path, name, model, expected):
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all")
    _gguf(tmp_path / "alien.gguf", [("general.architecture", 8, "alien9")])
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "alien9", "architectures": ["Alien9ForCausalLM"]}))
    (tmp_path / "empty").mkdir()
    paths = {"SMOKE": str(SMOKE), "GARBAGE": str(tmp_path / "garbage.gguf"), "ALIEN": str(tmp_path / "alien.gguf"),
             "HFALIEN": str(tmp_path / "hf"), "EMPTY": str(tmp_path / "empty")}
    if "path" in model:
        model = {**model, "path": paths.get(model["path"], model["path"])}
    raw = yaml.safe_load(SMOKE.read_text())
    raw["model"] = model
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)


def _tiny_hf_model(dir: Path) -> Path:
    from entroflow import model as model_lib
    from entroflow import tokenizer as tok_lib

    tok = tok_lib.train_tokenizer(["1+2=3", "the cat sat", "4+4=8"] * 20, vocab_size=64)
    model = model_lib.build_model(len(tok), 32, 1, 2, 64, 64, seed=0)
    model.save_pretrained(str(dir))
    tok.save_pretrained(str(dir))
    return dir


def test_import_pretrained_directory_round_trips_logits(tmp_path):
    from entroflow import model as model_lib

    src = _tiny_hf_model(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    info = model_import.import_model("pretrained", None, src, None, out)
    assert info["architecture"] == "Qwen2ForCausalLM" and info["sha256"] is None and not info["chat_template"]
    a, tok_a = model_lib.load_model(src)
    b, tok_b = model_lib.load_model(out / "model")
    ids = tok_a("1+2=", return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok_b("1+2=", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_prompt_format_plain_and_chat():
    from entroflow import tokenizer as tok_lib
    from entroflow.rollout import PromptFormat

    tok = tok_lib.train_tokenizer(["1+2=3", "the cat sat"] * 20, vocab_size=64)
    plain = PromptFormat.for_tokenizer(tok)  # no chat template: plain, with <bos>
    assert not plain.chat and plain.render(tok, "1+2:") == "1+2:"
    assert plain.encode(tok, ["1+2:"])[0][0] == tok_lib.BOS
    with pytest.raises(ValueError, match="has no chat template"):
        PromptFormat.for_tokenizer(tok, "on")
    tok.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}:{{ m['content'] }}<eos>{% endfor %}"
                         "{% if add_generation_prompt %}<bos>assistant:{% endif %}")
    chat = PromptFormat.for_tokenizer(tok, "auto", system="sys", template="Q {prompt}")
    text = chat.render(tok, "1+2")
    assert text == "<bos>system:sys<eos><bos>user:Q 1+2<eos><bos>assistant:"
    ids = chat.encode(tok, [text])[0]
    assert ids == tok.apply_chat_template([{"role": "system", "content": "sys"}, {"role": "user", "content": "Q 1+2"}],
                                          tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids.count(tok_lib.BOS) == 3  # the template's own, none added on top
    assert not PromptFormat.for_tokenizer(tok, "off").chat


def _ext(tmp_path: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return p


def test_external_train_config_checks(tmp_path):
    test = _ext(tmp_path, "test.jsonl", [("What is 1+1?", "1+1=<<1+1=2>>2\n#### 2")])
    train = _ext(tmp_path, "train.jsonl", [("What is 2+2?", "#### 4"), ("What is 3+3?", "#### 6")])
    ext = f"data.external={{path: {test}, format: gsm8k}}"
    with pytest.raises(ConfigError, match="add data.external_train"):
        load_config(SMOKE, [ext, "rl={methods: [grpo]}"])
    cfg = load_config(SMOKE, [ext, f"data.external_train={{path: {train}, format: gsm8k}}", "rl={methods: [grpo]}"])
    assert cfg.data.external_train.split == "train" and set(cfg.input_paths()) == {"data.external.path",
                                                                                   "data.external_train.path"}
    # No RL methods (base and EM-INF evaluation only): a test-only file is enough.
    assert load_config(SMOKE, [ext, "rl={methods: []}"]).rl.methods == []
    with pytest.raises(ConfigError, match="external_train: set data.external too"):
        load_config(SMOKE, [f"data.external_train={{path: {train}, format: gsm8k}}"])
    with pytest.raises(ConfigError, match="evaluate: 'word_problems' needs a data.word_problems section"):
        load_config(SMOKE, ["data.evaluate=word_problems"])


def test_eval_problems_take_every_level_in_turn(tmp_path):
    from entroflow.data.reasoning import SCHEMA
    from entroflow.data.tables import WORLD_FILE, eval_problems

    rows = [{"id": f"t{lv}{i}", "split": "test", "level": lv, "n_operands": 0, "n_digits": 0, "prompt": f"p{lv}{i}",
             "solution": "", "completion": "", "style": "worked", "answer": "1", "source": "x"}
            for lv in range(3) for i in range(4)]
    rows.append({**rows[0], "id": "train0", "split": "train"})
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "reasoning.parquet")
    (tmp_path / WORLD_FILE).write_text(json.dumps({"answer_format": "synthetic", "eval_table": "reasoning",
                                                   "eval_split": None}))
    assert eval_problems(tmp_path, "test", 5)["id"].to_pylist() == ["t00", "t01", "t10", "t11", "t20"]
    assert eval_problems(tmp_path, "test", None).num_rows == 12
    assert eval_problems(tmp_path, "train", None)["id"].to_pylist() == ["train0"]


def test_external_train_rows_feed_rl_and_never_collide_with_test_ids(tmp_path):
    """generate_data with data.external + data.external_train: RL's prompts are the train file's
    (ids prefixed, labels only for labelled rewards), the evaluated prompts the test file's."""
    from tasks._stage import StageOutput
    from entroflow.data.tables import read_world
    from tasks.generate_data import generate_data
    from tasks.train_rl import training_prompts

    test = _ext(tmp_path, "test.jsonl", [("What is 1+1?", "#### 2"), ("What is 5+5?", "#### 10")])
    train = _ext(tmp_path, "train.jsonl", [("What is 2+2?", "#### 4"), ("What is 3+3?", "#### 6"),
                                           ("What is 4+4?", "#### 8")])
    cfg = load_config(SMOKE, [f"data.external={{path: {test}, format: gsm8k}}",
                              f"data.external_train={{path: {train}, format: gsm8k}}", "rl={methods: [grpo]}"])
    out = tmp_path / "out"
    out.mkdir()
    generate_data.body(StageOutput(out, tmp_path / "work"), {"seed": 0, "data": cfg.model_dump(mode="json")["data"]}, {})
    assert read_world(out) == {"answer_format": "gsm8k", "eval_table": "external", "eval_split": "test"}
    rl_prompts, held_out = training_prompts(out, with_labels=True)
    assert [p["id"] for p in rl_prompts] == ["train/gsm8k-000001", "train/gsm8k-000002", "train/gsm8k-000003"]
    assert [p["answer"] for p in rl_prompts] == ["4", "6", "8"]
    assert [(p["id"], p["answer"]) for p in held_out] == [("gsm8k-000001", "2"), ("gsm8k-000002", "10")]
    label_free, _ = training_prompts(out, with_labels=False)
    assert all(set(p) == {"id", "prompt"} for p in label_free)
    # A train file that repeats a test problem is refused.
    overlap = _ext(tmp_path, "train2.jsonl", [("What is 5+5?", "#### 10")])
    cfg2 = load_config(SMOKE, [f"data.external={{path: {test}, format: gsm8k}}",
                               f"data.external_train={{path: {overlap}, format: gsm8k}}"])
    out2 = tmp_path / "out2"
    out2.mkdir()
    with pytest.raises(ValueError, match="1 problems also appear in data.external"):
        generate_data.body(StageOutput(out2, tmp_path / "work2"), {"seed": 0, "data": cfg2.model_dump(mode="json")["data"]}, {})
