"""Shared fixtures: a small synthetic KG pair and a writer for tiny hand-made pairs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mimea.model.config import MIMEAConfig, load_config
from mimea.training.pipeline import run_training
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair

SMALL_SPEC = SyntheticSpec(num_entities=400, num_relations=12, num_attributes=20, visual_dim=16,
                           seed=7)

# A tiny valid pair; KG1 and KG2 both use relation id 0 on purpose (as fbdb15k does).
TINY_FILES: dict[str, str] = {
    "ent_ids_1": "0\thttp://kg1.org/resource/A\n1\thttp://kg1.org/resource/B\n"
                 "2\thttp://kg1.org/resource/C\n3\thttp://kg1.org/resource/D\n",
    "ent_ids_2": "10\t/m/0a\n11\t/m/0b\n12\t/m/0c\n",
    "triples_1": "0\t0\t1\n1\t1\t2\n0\t0\t1\n",
    "triples_2": "10\t0\t11\n11\t5\t12\n12\t5\t12\n",
    "ill_ent_ids": "0\t10\n1\t11\n2\t12\n",
    "training_attrs_1": "http://kg1.org/resource/A\thttp://kg1.org/property/birthDate\t"
                        "http://kg1.org/property/name\n"
                        "http://kg1.org/resource/B\thttp://kg1.org/property/name\n",
    "training_attrs_2": "/m/0a\t<http://kg2.org/ontology/birthDate>\n"
                        "/m/0c\t<http://kg2.org/ontology/height>\n",
}

PairWriter = Callable[..., Path]

# End-to-end run: the default synthetic world at 600 entities and a small, fast model.
E2E_SPEC = SyntheticSpec(num_entities=600, seed=1)
# Every modality of the synthetic pair, the relation bag included (off by default).
FAST_OVERRIDES = ["model.hidden_dim=64", "model.modalities.relation=true", "training.epochs=60",
                  "training.lr=0.01", "training.patience=100", "loss.negatives=256",
                  "training.device=cpu"]
# Shortest runs, for determinism and CLI tests.
TINY_OVERRIDES = ["model.hidden_dim=16", "training.epochs=2", "loss.negatives=64",
                  "training.device=cpu"]


@dataclass(frozen=True)
class TrainedRun:
    data_dir: Path
    checkpoint: Path
    config: MIMEAConfig
    metrics: dict[str, Any]
    seconds: float


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic pair written once per session (tests must not modify it)."""
    out = tmp_path_factory.mktemp("synthetic") / "pair"
    write_synthetic_pair(out, SMALL_SPEC)
    return out


@pytest.fixture
def write_pair(tmp_path: Path) -> PairWriter:
    """``write_pair(**overrides)`` writes TINY_FILES with overrides (None deletes a file)."""

    def write(**overrides: str | None) -> Path:
        root = tmp_path / "pair"
        root.mkdir(exist_ok=True)
        for name, text in {**TINY_FILES, **overrides}.items():
            path = root / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text, encoding="utf-8")
        return root

    return write


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One end-to-end training run (synthetic pair → checkpoint), shared by the session."""
    root = tmp_path_factory.mktemp("e2e")
    write_synthetic_pair(root / "pair", E2E_SPEC)
    config = load_config(None, FAST_OVERRIDES)
    start = time.perf_counter()
    metrics = run_training(root / "pair", root / "checkpoint", config, progress=False)
    return TrainedRun(data_dir=root / "pair", checkpoint=root / "checkpoint", config=config,
                      metrics=metrics, seconds=time.perf_counter() - start)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides of the shortest useful training run (a few seconds at most)."""
    return list(TINY_OVERRIDES)
