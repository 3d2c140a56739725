"""Shared fixtures: a small synthetic KG pair and a writer for tiny hand-made pairs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain `pytest` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

from training.synthetic import SyntheticSpec, write_synthetic_pair  # noqa: E402

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
