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
    for p in (REPO / "configs").glob("*.yaml"):
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
