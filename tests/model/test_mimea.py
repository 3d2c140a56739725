"""The MIMEA network (model/mimea.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mimea.model.config import MODALITIES, ModelConfig
from mimea.model.mimea import MIMEA, GraphInputs, MIMEAOutput, active_modalities

N = 40  # entities of the graph_inputs fixture
ConfigFactory = Callable[..., ModelConfig]
InputsFactory = Callable[..., GraphInputs]


def build(config: ModelConfig, inputs: GraphInputs) -> MIMEA:
    torch.manual_seed(0)
    dims = {name: int(x.shape[1]) for name, x in inputs.features.items()}
    return MIMEA(config, inputs.num_entities, inputs.num_edge_types, dims,
                 active_modalities(config, inputs))


def test_forward_shapes(model_config: ConfigFactory, graph_inputs: GraphInputs) -> None:
    config = model_config()
    model = build(config, graph_inputs)
    out = model(graph_inputs)
    assert isinstance(out, MIMEAOutput)
    assert model.modalities == list(MODALITIES)
    assert model.structure_features == ["attribute"]
    channels = (2 if config.relation_channel else 1) + 1
    structure_dim = channels * (config.gat_layers + 1) * config.hidden_dim
    assert [h.shape for h in out.modal] == [(N, structure_dim)] + [(N, config.hidden_dim)] * 3
    assert model.out_dims == [structure_dim] + [config.hidden_dim] * 3
    assert out.mask.shape == (N, 4) and out.mask.dtype == torch.bool
    assert out.joint.shape == (N, model.joint_dim) == (N, structure_dim + 3 * config.hidden_dim)
    assert out.fusion.weights.shape == (N, 4)


@pytest.mark.parametrize(("features", "attribute_on", "expected"), [
    (["attribute"], True, ["attribute"]),
    (["attribute", "visual"], True, ["attribute", "visual"]),
    (["attribute"], False, []),  # the modality's ablation also drops its structure stack
])
def test_structure_features_seed_extra_stacks(model_config: ConfigFactory,
                                              graph_inputs: GraphInputs, features: list[str],
                                              attribute_on: bool, expected: list[str]) -> None:
    config = model_config(structure_features=features,
                          modalities={"attribute": attribute_on})
    model = build(config, graph_inputs)
    assert model.structure_features == expected
    plain = build(model_config(structure_features=[], modalities={"attribute": attribute_on}),
                  graph_inputs)
    stack = (config.gat_layers + 1) * config.hidden_dim
    assert model.out_dims[0] == plain.out_dims[0] + len(expected) * stack
    out = model(graph_inputs)
    assert out.modal[0].shape == (N, model.out_dims[0])
    assert torch.isfinite(out.joint).all()


def test_mask_columns_follow_modality_order(model_config: ConfigFactory,
                                            graph_inputs: GraphInputs) -> None:
    model = build(model_config(), graph_inputs)
    out = model(graph_inputs)
    for i, name in enumerate(model.modalities):
        torch.testing.assert_close(out.mask[:, i], graph_inputs.masks[name])
    assert (out.fusion.weights[~out.mask] == 0).all()


def test_every_ablation_builds_and_runs(ablation: dict[str, Any], model_config: ConfigFactory,
                                        graph_inputs: GraphInputs) -> None:
    config = model_config(**ablation)
    model = build(config, graph_inputs)
    out = model(graph_inputs)
    assert out.joint.shape == (N, model.joint_dim)
    assert len(out.modal) == len(model.modalities) == out.mask.shape[1]
    assert torch.isfinite(out.joint).all()
    assert (model.ot is None) == (not config.ot_alignment)


def test_eval_forward_is_deterministic(model_config: ConfigFactory,
                                       graph_inputs: GraphInputs) -> None:
    model = build(model_config(dropout=0.3), graph_inputs).eval()
    torch.testing.assert_close(model(graph_inputs).joint, model(graph_inputs).joint,
                               rtol=0, atol=0)


def test_active_modalities_drops_modalities_absent_from_data(
        model_config: ConfigFactory, make_inputs: InputsFactory) -> None:
    inputs = make_inputs(features=("attribute",))
    assert active_modalities(model_config(), inputs) == ["structure", "attribute"]


def test_active_modalities_drops_disabled_modalities(model_config: ConfigFactory,
                                                     graph_inputs: GraphInputs) -> None:
    config = model_config(modalities={"structure": False, "relation": False})
    assert active_modalities(config, graph_inputs) == ["attribute", "visual"]


def test_active_modalities_keeps_canonical_order(model_config: ConfigFactory,
                                                 make_inputs: InputsFactory) -> None:
    inputs = make_inputs(features=("visual", "relation"))
    assert active_modalities(model_config(), inputs) == ["structure", "relation", "visual"]


def test_model_without_missing_data_modality_runs(model_config: ConfigFactory,
                                                  make_inputs: InputsFactory) -> None:
    inputs = make_inputs(features=("relation",))
    model = build(model_config(), inputs)
    assert model.modalities == ["structure", "relation"]
    assert model(inputs).joint.shape == (N, model.joint_dim)


def test_no_modality_rejected(model_config: ConfigFactory) -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        MIMEA(model_config(), N, 5, {"visual": 4}, [])


def test_graph_inputs_to_device_keeps_content(graph_inputs: GraphInputs) -> None:
    moved = graph_inputs.to("cpu")
    assert moved.num_entities == graph_inputs.num_entities
    assert set(moved.features) == set(graph_inputs.features)
    torch.testing.assert_close(moved.edge_index, graph_inputs.edge_index)


def test_repr(model_config: ConfigFactory, make_inputs: InputsFactory) -> None:
    model = build(model_config(relation_channel=False), make_inputs(features=("visual",)))
    assert repr(model) == "MIMEA(modalities=['structure', 'visual'], joint_dim=64)"
