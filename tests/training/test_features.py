"""Model inputs built from a KG pair (training/features.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mimea.model.config import DataConfig
from mimea.training.data import load_kg_pair
from mimea.training.features import ModalInputs, build_modal_inputs, local_name, parse_number

PairWriter = Callable[..., Path]


@pytest.fixture
def tiny(write_pair: PairWriter) -> ModalInputs:
    return build_modal_inputs(load_kg_pair(write_pair()))


@pytest.fixture(scope="module")
def synthetic(synthetic_dir: Path) -> ModalInputs:
    return build_modal_inputs(load_kg_pair(synthetic_dir))


def test_shapes_and_dtypes(synthetic: ModalInputs) -> None:
    n = synthetic.num_entities
    assert synthetic.edge_index.dtype == torch.long and synthetic.edge_index.shape[0] == 2
    assert synthetic.edge_type.shape == (synthetic.edge_index.shape[1],)
    assert set(synthetic.features) == {"relation", "attribute", "visual"}
    assert synthetic.modalities == ["structure", "relation", "attribute", "visual"]
    assert set(synthetic.masks) == {"structure", *synthetic.features}
    for name, matrix in synthetic.features.items():
        assert matrix.dtype == torch.float32 and matrix.shape[0] == n
        assert synthetic.masks[name].dtype == torch.bool and synthetic.masks[name].shape == (n,)
    for name in ("relation", "attribute"):
        assert len(synthetic.feature_names[name]) == synthetic.features[name].shape[1]


def test_edges_symmetric_with_inverse_types(synthetic: ModalInputs) -> None:
    src, dst = synthetic.edge_index.tolist()
    types = synthetic.edge_type.tolist()
    half = synthetic.num_edge_types // 2
    edges = set(zip(src, dst, types, strict=True))
    assert len(edges) == len(types)  # no duplicates
    for s, d, t in edges:
        inverse = t + half if t < half else t - half
        assert (d, s, inverse) in edges
    assert min(types) >= 0 and max(types) < synthetic.num_edge_types


def test_tiny_graph_edges(tiny: ModalInputs) -> None:
    # triples_1 has a duplicate triple, triples_2 a self-loop (12 5 12): both disappear.
    assert tiny.num_edge_types == 8
    edges = sorted(zip(*tiny.edge_index.tolist(), tiny.edge_type.tolist(), strict=True))
    assert edges == [(0, 1, 0), (1, 0, 4), (1, 2, 1), (2, 1, 5), (4, 5, 2), (5, 4, 6), (5, 6, 3),
                     (6, 5, 7)]
    assert not (tiny.edge_index[0] == tiny.edge_index[1]).any()
    assert tiny.masks["structure"].tolist() == [True, True, True, False, True, True, True]


def test_self_loop_only_entity_has_no_structure(write_pair: PairWriter) -> None:
    inputs = build_modal_inputs(load_kg_pair(write_pair(triples_2="10\t0\t11\n12\t5\t12\n")))
    assert not inputs.masks["structure"][6] and inputs.masks["relation"][6]
    assert not (inputs.edge_index == 6).any()


def test_relation_bag_normalised_and_masked(tiny: ModalInputs) -> None:
    relation = tiny.features["relation"]
    norms = relation.norm(dim=1)
    mask = tiny.masks["relation"]
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())))
    assert mask.tolist() == [True, True, True, False, True, True, True]  # self-loop counts here
    assert not relation[3].any()
    # row 0 is head of relation (kg1, 0) twice: log1p(2) in the single column -> normalised 1
    assert tiny.feature_names["relation"][relation[0].argmax()] == "kg1:0:out"


def test_relation_top_k_limits_columns(write_pair: PairWriter) -> None:
    inputs = build_modal_inputs(load_kg_pair(write_pair()), DataConfig(relation_top_k=2))
    assert inputs.features["relation"].shape[1] == 2
    # the most frequent feature (kg1 relation 0 as head, twice) comes first
    assert inputs.feature_names["relation"][0] == "kg1:0:out"


def test_attribute_bag_shares_local_names(tiny: ModalInputs) -> None:
    attribute = tiny.features["attribute"]
    names = tiny.feature_names["attribute"]
    assert names == ["birthDate", "name", "height"]  # by frequency, then name
    assert tiny.masks["attribute"].tolist() == [True, True, False, False, True, False, True]
    assert not attribute[3].any() and not attribute[2].any()
    torch.testing.assert_close(attribute[0], torch.tensor([1.0, 1.0, 0.0]) / np.sqrt(2))
    # KG1's birthDate and KG2's <.../birthDate> land in the same column
    assert attribute[4].argmax() == names.index("birthDate")


def test_numeric_values_are_standardised_columns(write_pair: PairWriter) -> None:
    kg1_uris = [f"http://kg1.org/resource/{c}" for c in "ABCD"]
    lines = [f"{u}\tbirthDate\t19{50 + 10 * i}-05-03" for i, u in enumerate(kg1_uris)]
    lines += ["/m/0a\t<http://kg2.org/birthDate>\t\"1999\"^^<xsd:gYear>", "/m/0b\tname\tBob"]
    inputs = build_modal_inputs(load_kg_pair(write_pair(attr_triples_1="\n".join(lines[:4]),
                                                        attr_triples_2="\n".join(lines[4:]))))
    names = inputs.feature_names["attribute"]
    assert "birthDate=value" in names and "name=value" not in names
    column = inputs.features["attribute"][:, names.index("birthDate=value")]
    assert column[:4].tolist() == sorted(column[:4].tolist())  # order of the years kept
    assert column.abs().max() <= 3.0 and column[5] == 0.0
    assert abs(float(column[[0, 1, 2, 3, 4]].mean())) < 1e-5
    off = build_modal_inputs(load_kg_pair(write_pair()), DataConfig(use_attribute_values=False))
    assert not any(n.endswith("=value") for n in off.feature_names["attribute"])


def test_visual_passthrough(synthetic: ModalInputs, synthetic_dir: Path) -> None:
    data = load_kg_pair(synthetic_dir)
    assert data.visual is not None and data.visual_mask is not None
    np.testing.assert_array_equal(synthetic.features["visual"].numpy(), data.visual)
    np.testing.assert_array_equal(synthetic.masks["visual"].numpy(), data.visual_mask)


def test_no_attribute_modality_without_attribute_files(write_pair: PairWriter) -> None:
    inputs = build_modal_inputs(load_kg_pair(write_pair(training_attrs_1=None,
                                                        training_attrs_2=None)))
    assert set(inputs.features) == {"relation"}


@pytest.mark.parametrize(("text", "expected"),
                         [("<http://dbpedia.org/property/birthDate>", "birthDate"),
                          ("http://xmlns.com/foaf/0.1/name", "name"),
                          ("http://www.w3.org/2000/01/rdf-schema#label", "label"),
                          ("date_of_birth", "date_of_birth"), ("http://x.org/", "http://x.org/")])
def test_local_name(text: str, expected: str) -> None:
    assert local_name(text) == expected


@pytest.mark.parametrize(("text", "expected"),
                         [("2011.75", 2011.75), ("-77.08", -77.08), ("6.7e+14", 6.7e14),
                          ("1982-01-01", 1982.0), ("2003-4-1", 2003.25),
                          ('"1990"^^<http://www.w3.org/2001/XMLSchema#gYear>', 1990.0),
                          ("Bob", None), ("nan", None), ("", None)])
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == (pytest.approx(expected) if expected is not None else None)


def test_to_device_copies(tiny: ModalInputs) -> None:
    moved = tiny.to("cpu")
    assert moved.features.keys() == tiny.features.keys() and moved.num_edge_types == 8
