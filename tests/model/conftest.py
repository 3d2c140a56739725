"""Shared fixtures for the model tests: a small synthetic GraphInputs and configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mimea.model.config import MODALITIES, ModelConfig
from mimea.model.mimea import GraphInputs

NUM_ENTITIES = 40
NUM_EDGE_TYPES = 5
FEATURE_DIMS = {"relation": 6, "attribute": 8, "visual": 10}

# Every on/off switch of ModelConfig (read from the model, so a new switch is covered), one
# flag off per ablation, plus each modality off.
SWITCHES = [name for name, field in ModelConfig.model_fields.items()
            if field.annotation is bool and field.default is True]
ABLATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    **{flag: {flag: False} for flag in SWITCHES},
    **{f"no_{m}": {"modalities": {m: False}} for m in MODALITIES},
}


def build_graph_inputs(num_entities: int = NUM_ENTITIES, *, num_edges: int = 80,
                       features: tuple[str, ...] = ("relation", "attribute", "visual"),
                       seed: int = 0) -> GraphInputs:
    """Random union graph; attribute and visual rows partly masked (features zeroed there)."""
    gen = torch.Generator().manual_seed(seed)
    heads = torch.randint(num_entities, (num_edges,), generator=gen)
    tails = (heads + 1 + torch.randint(num_entities - 1, (num_edges,), generator=gen))
    tails = tails % num_entities
    edge_index = torch.stack([torch.cat([heads, tails]), torch.cat([tails, heads])])
    types = torch.randint(NUM_EDGE_TYPES, (num_edges,), generator=gen)
    edge_type = torch.cat([types, types])
    masks: dict[str, torch.Tensor] = {"structure": torch.ones(num_entities, dtype=torch.bool)}
    feats: dict[str, torch.Tensor] = {}
    missing = {"relation": 0.0, "attribute": 0.15, "visual": 0.3}
    for name in features:
        x = torch.rand(num_entities, FEATURE_DIMS[name], generator=gen)
        mask = torch.rand(num_entities, generator=gen) >= missing[name]
        mask[:2] = True  # a few rows with every modality present
        if name == "visual":
            mask[2] = False  # at least one missing image
        x[~mask] = 0.0
        feats[name] = x
        masks[name] = mask
    return GraphInputs(num_entities=num_entities, edge_index=edge_index, edge_type=edge_type,
                       num_edge_types=NUM_EDGE_TYPES, features=feats, masks=masks)


@pytest.fixture(params=list(ABLATIONS.values()), ids=list(ABLATIONS))
def ablation(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ModelConfig overrides of one ablation (parametrised over all of them)."""
    return dict(request.param)


@pytest.fixture
def make_inputs() -> Callable[..., GraphInputs]:
    """``make_inputs(**kwargs)``: see :func:`build_graph_inputs`."""
    return build_graph_inputs


@pytest.fixture
def graph_inputs() -> GraphInputs:
    return build_graph_inputs()


@pytest.fixture
def model_config() -> Callable[..., ModelConfig]:
    """``model_config(**overrides)``: a small, dropout-free ModelConfig with every module and
    every modality on."""

    def build(**overrides: Any) -> ModelConfig:
        return ModelConfig.model_validate({"hidden_dim": 16, "dropout": 0.0,
                                           "structure_dropout": 0.0, "fusion": True,
                                           "modalities": dict.fromkeys(MODALITIES, True),
                                           **overrides})

    return build


@pytest.fixture
def seed_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Seed pairs (i, i + N/2) as entity rows."""
    left = torch.arange(NUM_ENTITIES // 2)
    return left, left + NUM_ENTITIES // 2
