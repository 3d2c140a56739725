"""Typed run configuration (model/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mimea.model.config import MODALITIES, ConfigError, MIMEAConfig, load_config

SETTINGS = {"model": {"hidden_dim": 64, "ot_alignment": False, "modalities": {"visual": False}},
            "training": {"epochs": 7, "lr": 0.002}}


TOML = ("[model]\nhidden_dim = 64\not_alignment = false\n[model.modalities]\nvisual = false\n"
        "[training]\nepochs = 7\nlr = 0.002\n")
FILE_TEXTS = {".toml": TOML, ".yaml": yaml.safe_dump(SETTINGS), ".yml": yaml.safe_dump(SETTINGS),
              ".json": json.dumps(SETTINGS)}


def test_defaults_are_valid() -> None:
    config = load_config()
    assert isinstance(config, MIMEAConfig)
    assert config == MIMEAConfig()
    assert config.model.modalities.enabled() == ["structure", "attribute", "visual"]


def test_config_round_trips_through_json() -> None:
    config = load_config(None, ["model.hidden_dim=32", "model.beta_prior=[1.5, 3]"])
    assert MIMEAConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("suffix", sorted(FILE_TEXTS))
def test_load_file(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"run{suffix}"
    path.write_text(FILE_TEXTS[suffix], encoding="utf-8")
    config = load_config(path)
    assert config.model.hidden_dim == 64
    assert config.model.ot_alignment is False
    assert config.model.modalities.enabled() == ["structure", "attribute"]
    assert (config.training.epochs, config.training.lr) == (7, 0.002)
    assert config.loss == MIMEAConfig().loss  # untouched sections keep their defaults


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == MIMEAConfig()


@pytest.mark.parametrize(("override", "section", "key", "value"), [
    ("training.lr=0.01", "training", "lr", 0.01),
    ("training.lr=1e-3", "training", "lr", 0.001),
    ("training.epochs=3", "training", "epochs", 3),
    ("model.hidden_dim= 48", "model", "hidden_dim", 48),
    ("model.fusion=false", "model", "fusion", False),
    ("training.iterations=2", "training", "iterations", 2),
    ("loss.negatives=64", "loss", "negatives", 64),
    ("training.device=cpu", "training", "device", "cpu"),
    ("model.beta_prior=[1, 3]", "model", "beta_prior", (1.0, 3.0)),
])
def test_override_values(override: str, section: str, key: str, value: object) -> None:
    config = load_config(None, [override])
    assert getattr(getattr(config, section), key) == value


def test_nested_override() -> None:
    config = load_config(None, ["model.modalities.visual=false"])
    assert config.model.modalities.visual is False
    assert config.model.modalities.enabled() == ["structure", "attribute"]


def test_override_applies_over_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(SETTINGS), encoding="utf-8")
    config = load_config(path, ["training.epochs=9", "model.modalities.visual=true"])
    assert config.training.epochs == 9
    assert config.model.modalities.visual is True
    assert config.model.hidden_dim == 64


def test_later_override_wins() -> None:
    assert load_config(None, ["training.seed=1", "training.seed=5"]).training.seed == 5


@pytest.mark.parametrize(("override", "name"), [
    ("model.hiden_dim=32", "hiden_dim"),
    ("trainig.epochs=3", "trainig"),
    ("model.modalities.audio=true", "audio"),
])
def test_unknown_override_key_rejected(override: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(None, [override])


@pytest.mark.parametrize("override", [
    "model.structure_conv=gat", "model.self_loops=true", "model.propagation_directed=true",
    "loss.joint_loss=lse", "loss.modal_negatives=64", "training.iterative=true",
    "training.pseudo_labels=sinkhorn", "eval.headline=csls",
])
def test_removed_keys_are_unknown_to_a_run(override: str) -> None:
    # Settled experiments left the configuration: even at their old default a run names none.
    with pytest.raises(ConfigError, match=override.partition("=")[0].rsplit(".", 1)[-1]):
        load_config(None, [override])


def test_pseudo_labelling_is_any_round() -> None:
    assert not MIMEAConfig().training.pseudo_labelling
    assert load_config(None, ["training.label_rounds=1"]).training.pseudo_labelling
    assert load_config(None, ["training.iterations=1"]).training.pseudo_labelling


def test_unknown_file_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[training]\nepocs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="epocs") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("override", [
    "training.lr=-0.1", "training.lr=0", "model.hidden_dim=4", "model.dropout=1.0",
    "training.epochs=0", "training.lr_schedule=linear", "training.device=tpu",
    "training.epochs=many",
    "model.ot_epsilon=0",
])
def test_invalid_value_rejected(override: str) -> None:
    key = override.partition("=")[0].rsplit(".", 1)[-1]
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_disabling_every_modality_rejected() -> None:
    overrides = [f"model.modalities.{m}=false" for m in MODALITIES]
    with pytest.raises(ConfigError, match="at least one modality"):
        load_config(None, overrides)


@pytest.mark.parametrize("override", ["training.lr", "=3", "  =1"])
def test_malformed_override_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, [override])


def test_override_through_a_value_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["training.lr=0.1", "training.lr.x=1"])


def test_unsupported_suffix_names_file(tmp_path: Path) -> None:
    path = tmp_path / "run.ini"
    path.write_text("[training]\nepochs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run\.ini") as info:
        load_config(path)
    assert ".toml" in str(info.value)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file_names_file(make: str, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    if make == "directory":
        path.mkdir()
    with pytest.raises(ConfigError, match=r"run\.toml") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("name", "text"), [
    ("bad.toml", "[training\nepochs = 3\n"),
    ("bad.yaml", "training: [1, 2\n"),
    ("bad.json", "{\"training\": }"),
])
def test_malformed_file_names_file(name: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_config(path)


@pytest.mark.parametrize(("name", "text"), [("list.json", "[1, 2]"), ("scalar.yaml", "3\n")])
def test_top_level_must_be_a_mapping(name: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
