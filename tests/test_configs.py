"""The example configuration files stay loadable and in step with the code."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mimea.model.config import MIMEAConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_dbp15k_example_equals_the_defaults() -> None:
    assert load_config(CONFIGS / "dbp15k.toml") == MIMEAConfig()


def test_demo_config_loads() -> None:
    config = load_config(CONFIGS / "demo.toml")
    assert config.model.hidden_dim < MIMEAConfig().model.hidden_dim


def _leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of ``model``, nested sections expanded (``model.modalities.visual``)."""
    keys = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= _leaves(kind, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _named(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in table.items():
        keys |= _named(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name}
    return keys


def test_dbp15k_example_names_every_key() -> None:
    # The file is where a user reads what can be set: each key once, none it lacks.
    text = (CONFIGS / "dbp15k.toml").read_text(encoding="utf-8")
    assert _named(tomllib.loads(text)) == _leaves(MIMEAConfig)
