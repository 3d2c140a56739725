"""Synthetic KG-pair generator (training/synthetic.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mimea.training.data import load_kg_pair
from mimea.training.features import build_modal_inputs
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair

SPEC = SyntheticSpec(num_entities=400, num_relations=12, num_attributes=20, visual_dim=16, seed=3)
LAYOUT = {"ent_ids_1", "ent_ids_2", "triples_1", "triples_2", "ill_ent_ids", "training_attrs_1",
          "training_attrs_2", "attr_triples_1", "attr_triples_2", "visual_features.npz"}


def test_writes_benchmark_layout(tmp_path: Path) -> None:
    summary = write_synthetic_pair(tmp_path / "pair", SPEC)
    names = {p.name for p in (tmp_path / "pair").iterdir()}
    assert names >= LAYOUT
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder removed
    assert summary["gold_pairs"] == round(SPEC.overlap * SPEC.num_entities)
    assert summary["kg1_entities"] + summary["kg2_entities"] == (
        SPEC.num_entities + summary["gold_pairs"])


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_synthetic_pair(tmp_path / "a", SPEC)
    write_synthetic_pair(tmp_path / "b", SPEC)
    for name in sorted(LAYOUT - {"visual_features.npz"}):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a, b = (np.load(tmp_path / d / "visual_features.npz") for d in "ab")
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_array_equal(a["features"], b["features"])
    write_synthetic_pair(tmp_path / "c", replace(SPEC, seed=4))
    triples = [(tmp_path / d / "triples_1").read_bytes() for d in "ac"]
    assert triples[0] != triples[1]


def test_gold_pairs_valid_and_ids_disjoint(synthetic_dir: Path) -> None:
    data = load_kg_pair(synthetic_dir)
    assert data.warnings == []
    assert (data.kgs[data.gold[:, 0]] == 1).all() and (data.kgs[data.gold[:, 1]] == 2).all()
    assert len(np.unique(data.gold[:, 0])) == len(data.gold) == len(np.unique(data.gold[:, 1]))
    kg1_ids, kg2_ids = data.ids[: data.num_kg1], data.ids[data.num_kg1:]
    assert kg1_ids.tolist() == list(range(data.num_kg1))
    assert kg2_ids.min() == data.num_kg1
    assert all(u.startswith("http://kg1.example.org/") for u in data.uris[: data.num_kg1])
    assert all(u.startswith("/m/0") for u in data.uris[data.num_kg1:])
    # relation ids differ between the KGs, and KG2 merged some relations
    kg1_rel = set(data.relation_sources[data.relation_sources[:, 0] == 1, 1].tolist())
    kg2_rel = set(data.relation_sources[data.relation_sources[:, 0] == 2, 1].tolist())
    assert not kg1_rel & kg2_rel and len(kg2_rel) < len(kg1_rel)


def test_degree_is_skewed(synthetic_dir: Path) -> None:
    inputs = build_modal_inputs(load_kg_pair(synthetic_dir))
    pairs = torch.unique(inputs.edge_index.T, dim=0)
    degree = np.bincount(pairs[:, 0].numpy(), minlength=inputs.num_entities)
    connected = degree[degree > 0]
    assert connected.max() >= 10 * np.median(connected)
    assert (connected <= 2).mean() > 0.2  # many entities with one or two neighbours


@pytest.mark.parametrize("missing", [0.0, 0.2, 0.5])
def test_visual_missing_fraction(tmp_path: Path, missing: float) -> None:
    spec = SyntheticSpec(num_entities=1000, num_relations=8, num_attributes=10, visual_dim=8,
                         visual_missing=missing, seed=1)
    write_synthetic_pair(tmp_path, spec)
    data = load_kg_pair(tmp_path)
    assert data.visual_mask is not None
    assert abs((1.0 - data.visual_mask.mean()) - missing) < 0.04


def test_attribute_missing_fraction(synthetic_dir: Path) -> None:
    inputs = build_modal_inputs(load_kg_pair(synthetic_dir))
    missing = 1.0 - inputs.masks["attribute"].float().mean().item()
    assert 0.05 < missing < 0.3  # 10% dropped per KG, plus entities whose type has none


def test_no_modality_is_perfect_alone(synthetic_dir: Path) -> None:
    """Raw features align some gold pairs but not all: learnable, not trivial."""
    data = load_kg_pair(synthetic_dir)
    inputs = build_modal_inputs(data)
    for name in ("attribute", "visual"):
        features, mask = inputs.features[name], inputs.masks[name]
        both = data.gold[(mask[data.gold[:, 0]] & mask[data.gold[:, 1]]).numpy()]
        left = torch.nn.functional.normalize(features[both[:, 0]], dim=1)
        right = torch.nn.functional.normalize(features[both[:, 1]], dim=1)
        hits1 = (left @ right.T).argmax(dim=1).eq(torch.arange(len(both))).float().mean()
        assert 0.05 < hits1 < 0.95, (name, float(hits1))


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_synthetic_pair(tmp_path, SPEC)
    write_synthetic_pair(tmp_path, SPEC, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine" and (tmp_path / "ent_ids_1").is_file()


@pytest.mark.parametrize("dangling", [0.0, 0.2, 0.5])
def test_dangling_share_of_each_kg(tmp_path: Path, dangling: float) -> None:
    spec = replace(SPEC, num_entities=1000, dangling=dangling)
    summary = write_synthetic_pair(tmp_path, spec)
    data = load_kg_pair(tmp_path)
    for kg in (1, 2):
        alone = summary[f"kg{kg}_entities"] - len(data.gold)
        assert summary[f"kg{kg}_dangling"] == alone
        assert abs(alone / summary[f"kg{kg}_entities"] - dangling) < 0.01
    recorded = json.loads((tmp_path / "synthetic.json").read_text())
    assert recorded["spec"]["dangling"] == dangling
    assert recorded["summary"]["dangling_share"] == pytest.approx(dangling, abs=0.01)


def test_default_spec_records_its_dangling_share(tmp_path: Path) -> None:
    summary = write_synthetic_pair(tmp_path, SPEC)
    assert summary["dangling_share"] == pytest.approx((1 - SPEC.overlap) / (1 + SPEC.overlap),
                                                      abs=0.01)


@pytest.mark.parametrize("bad", [{"overlap": 0.0}, {"edge_noise": 1.0}, {"num_entities": 3},
                                 {"visual_missing": -0.1}, {"num_attributes": 0},
                                 {"dangling": 1.0}, {"dangling": -0.1}])
def test_bad_spec_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(**bad)


def test_coverage_follows_the_entity(tmp_path: Path) -> None:
    # Same rate per KG, but an entity mostly has (or lacks) its image and attributes in both:
    # far fewer gold pairs with a modality on one side only than independent draws give.
    spec = replace(SPEC, num_entities=2000, visual_missing=0.2, attribute_missing=0.2)
    write_synthetic_pair(tmp_path, spec)
    data = load_kg_pair(tmp_path)
    inputs = build_modal_inputs(data)
    for name in ("visual", "attribute"):
        mask = inputs.masks[name].numpy()
        one_sided = (mask[data.gold[:, 0]] ^ mask[data.gold[:, 1]]).mean()
        assert abs((1.0 - mask.mean()) - 0.2) < 0.04, name
        assert one_sided < 0.6 * 2 * 0.2 * 0.8, (name, one_sided)  # independent: 0.32


def test_every_entity_has_something_to_align_by(synthetic_dir: Path) -> None:
    inputs = build_modal_inputs(load_kg_pair(synthetic_dir))
    described = inputs.masks["structure"] | inputs.masks["attribute"] | inputs.masks["visual"]
    assert bool(described.all())
