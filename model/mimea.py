"""The MIMEA network: encoders → probability-guided fusion, plus the OT alignment head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self

import torch
from torch import nn

from mimea.model.config import MODALITIES, ModelConfig
from mimea.model.encoders import FeatureEncoder, StructureEncoder
from mimea.model.fusion import FusionOutput, ProbabilityGuidedFusion
from mimea.model.ot_alignment import OTModalAlignment


@dataclass(frozen=True)
class GraphInputs:
    """Everything the network reads, for all N entities of both KGs.

    edge_index ``[2, E]`` and edge_type ``[E]`` describe the union graph; ``features`` maps a
    modality name to ``[N, F_m]``; ``masks`` maps a modality name to bool ``[N]``.
    """

    num_entities: int
    edge_index: torch.Tensor
    edge_type: torch.Tensor
    num_edge_types: int
    features: Mapping[str, torch.Tensor]
    masks: Mapping[str, torch.Tensor]

    def to(self, device: torch.device | str) -> Self:
        """A copy with every tensor on ``device`` (subclasses keep their extra fields)."""
        return replace(self, edge_index=self.edge_index.to(device),
                       edge_type=self.edge_type.to(device),
                       features={k: v.to(device) for k, v in self.features.items()},
                       masks={k: v.to(device) for k, v in self.masks.items()})


@dataclass(frozen=True)
class MIMEAOutput:
    """Per-entity outputs: uni-modal embeddings (model modality order), mask ``[N, M]``,
    and the fusion result (joint embedding and weights)."""

    modal: list[torch.Tensor]
    mask: torch.Tensor
    fusion: FusionOutput

    @property
    def joint(self) -> torch.Tensor:
        return self.fusion.joint


def active_modalities(config: ModelConfig, inputs: GraphInputs) -> list[str]:
    """Modalities both enabled in the config and present in the data, in canonical order."""
    available = {"structure"} | set(inputs.features)
    return [m for m in MODALITIES if m in available and getattr(config.modalities, m)]


class MIMEA(nn.Module):
    """Multi-grained interaction network for multi-modal entity alignment.

    Args:
        config: the model section of the run configuration.
        num_entities: N (both KGs).
        num_edge_types: relation types on edges (inverse relations included).
        feature_dims: input size of each feature modality present in the data.
        modalities: the modalities to encode, in order (see :func:`active_modalities`).
    """

    def __init__(self, config: ModelConfig, num_entities: int, num_edge_types: int,
                 feature_dims: Mapping[str, int], modalities: list[str]) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("MIMEA needs at least one modality")
        self.config = config
        self.modalities = list(modalities)
        # Feature bags that also seed a stack of the structure encoder.
        self.structure_features = [name for name in config.structure_features
                                   if name in self.modalities and "structure" in self.modalities]
        encoders: dict[str, nn.Module] = {}
        for name in self.modalities:
            if name == "structure":
                encoders[name] = StructureEncoder(
                    num_entities, num_edge_types if config.relation_aware else 0,
                    config.hidden_dim, num_layers=config.gat_layers, dropout=config.dropout,
                    relation_channel=config.relation_channel, proxies=config.proxies,
                    output_dropout=config.structure_dropout,
                    feature_dims=[feature_dims[f] for f in self.structure_features])
            else:
                encoders[name] = FeatureEncoder(feature_dims[name], config.hidden_dim,
                                                dropout=config.dropout)
        self.encoders = nn.ModuleDict(encoders)
        self.out_dims = [enc.out_dim for enc in encoders.values()]
        self.fusion = ProbabilityGuidedFusion(
            self.out_dims, token_dim=min(128, config.hidden_dim),
            interaction=config.fusion_interaction, prior=config.beta_prior,
            learned=config.fusion)
        self.joint_dim = sum(self.out_dims)
        self.ot = OTModalAlignment(self.out_dims, self.joint_dim,
                                   epsilon=config.ot_epsilon) if config.ot_alignment else None

    def forward(self, inputs: GraphInputs, rows: torch.Tensor | None = None) -> MIMEAOutput:
        """Embed every entity, or only ``rows`` (entity indices): the output's row ``i`` is
        entity ``rows[i]``.

        The structure encoder's lower layers always run over the whole graph (a GNN needs the
        neighbours); ``rows`` limits its last layer, the feature encoders and the fusion, which
        is what makes a training step cost the batch rather than the graph.
        """
        modal = []
        masks = []
        for name, encoder in self.encoders.items():
            if name == "structure":
                modal.append(encoder(inputs.edge_index, inputs.edge_type,
                                     [inputs.features[f] for f in self.structure_features],
                                     rows=rows))
            else:
                x = inputs.features[name]
                modal.append(encoder(x if rows is None else x[rows]))
            mask = inputs.masks[name]
            masks.append(mask if rows is None else mask[rows])
        mask = torch.stack(masks, dim=1)
        return MIMEAOutput(modal=modal, mask=mask, fusion=self.fusion(modal, mask))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(modalities={self.modalities}, "
                f"joint_dim={self.joint_dim})")
