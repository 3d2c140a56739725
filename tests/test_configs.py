"""The example configuration files stay loadable and in step with the code."""

from __future__ import annotations

from pathlib import Path

from mimea.model.config import MIMEAConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_dbp15k_example_equals_the_defaults() -> None:
    assert load_config(CONFIGS / "dbp15k.toml") == MIMEAConfig()


def test_demo_config_loads() -> None:
    config = load_config(CONFIGS / "demo.toml")
    assert config.model.hidden_dim < MIMEAConfig().model.hidden_dim
