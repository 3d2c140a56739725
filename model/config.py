"""Typed configuration of a MIMEA run, validated on load and saved inside every checkpoint.

Every MIMEA module and every modality has an on/off switch here, so an ablation is one flag:
``mimea train ... --set model.ot_alignment=false``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mimea.model.propagation import label_width

MODALITIES = ("structure", "relation", "attribute", "visual")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModalityConfig(_Strict):
    """Which modalities the model uses; a modality absent from the data is dropped anyway."""

    structure: bool = True
    # The relation-bag MLP is off by default: relation ids are private to each KG, so the bag
    # can only be aligned through the seeds, and its MLP memorises them (on DBP15K zh_en it
    # costs 1.5 points of Hits@1 and doubles the mean rank). The structure encoder uses the
    # relation types either way (reflections, relation channel).
    relation: bool = False
    attribute: bool = True
    visual: bool = True

    def enabled(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m)]


class ModelConfig(_Strict):
    """Sizes and switches of the network (``model/``)."""

    hidden_dim: int = Field(128, ge=8, le=2048, description="d, size of every uni-modal output")
    gat_layers: int = Field(2, ge=1, le=4)
    gat_heads: int = Field(1, ge=1, le=8, description="attention heads (structure_conv=gat)")
    structure_conv: Literal["gat", "reflection"] = Field(
        "reflection", description="structure layer: relation reflections, or GATConv")
    relation_aware: bool = Field(True, description="layers depend on relation types")
    concat_layers: bool = Field(True, description="structure output = concat of every layer")
    self_loops: bool = Field(False, description="entities attend to themselves (and start from "
                            "their own vector among their neighbours')")
    relation_channel: bool = Field(True, description="second structure stack over relation types")
    structure_features: list[Literal["relation", "attribute", "visual"]] = Field(
        default_factory=lambda: ["attribute"], description="feature modalities whose bags seed "
        "one more structure stack each (used while the modality itself is on)")
    proxies: int = Field(64, ge=0, le=1024, description="proxy vectors for proxy matching")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on encoder layer inputs")
    structure_dropout: float = Field(0.3, ge=0.0, lt=1.0,
                                     description="on the structure encoder's output")
    modalities: ModalityConfig = ModalityConfig()
    fusion: bool = Field(False, description="learned probability-guided fusion; off = uniform "
                         "weights over present modalities (as accurate on DBP15K, and cheaper)")
    fusion_interaction: bool = Field(True, description="cross-modal attention before the Beta head")
    fusion_heads: int = Field(1, ge=1, le=8)
    beta_prior: tuple[float, float] = (5.0, 5.0)
    ot_alignment: bool = True
    ot_epsilon: float = Field(0.05, gt=0.0, description="entropic regularisation of Sinkhorn")
    modal_contrastive: bool = Field(True, description="per-modality contrastive terms")
    modal_adaptive: bool = Field(True, description="weight modality terms by confidence")
    propagation: bool = Field(True, description="append seed labels propagated over the graph "
                              "to the joint embedding (model/propagation.py)")
    propagation_dim: int = Field(128, ge=1, le=4096, description="size of a seed label")
    propagation_hops: int = Field(2, ge=1, le=8, description="propagation steps")
    propagation_directed: bool = Field(True, description="also propagate over out- and "
                                       "in-neighbours apart (two more views)")
    propagation_hub_damping: float = Field(0.5, ge=0.0, le=4.0, description="a neighbour "
                                           "weighs its degree to this negative power")
    propagation_weight: float = Field(0.5, gt=0.0, description="weight of the propagated labels "
                                      "beside the normalised learned embedding")

    @property
    def propagation_width(self) -> int:
        """Columns the propagated labels add to the joint embedding (0 when off)."""
        if not self.propagation:
            return 0
        return label_width(self.propagation_dim, self.propagation_hops,
                           self.propagation_directed)


class LossConfig(_Strict):
    """Weights and shapes of the training objective."""

    joint_loss: Literal["lse", "infonce"] = "lse"
    modal_loss: Literal["lse", "infonce"] = "lse"
    gamma: float = Field(1.0, ge=0.0, description="margin of the LogSumExp loss")
    lse_scale: float = Field(30.0, gt=0.0, description="lambda of the LogSumExp loss")
    lse_shift: float = Field(10.0, description="tau of the LogSumExp loss")
    negatives: int = Field(2048, ge=0, description="entities sampled as extra negatives of the "
                           "joint LSE term; at least the number of entities means every entity")
    modal_negatives: int = Field(2048, ge=0, description="the same for each modality's term")
    temperature: float = Field(0.1, gt=0.0, description="InfoNCE temperature")
    modal_weight: float = Field(1.0, ge=0.0)
    ot_weight: float = Field(0.1, ge=0.0)
    ot_batch: int = Field(256, ge=8)
    kl_weight: float = Field(0.001, ge=0.0)


class TrainingConfig(_Strict):
    """Optimisation, model selection and pseudo-labelling."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(1024, ge=8)
    steps_per_epoch: int = Field(
        0, ge=0, description="most optimiser steps per epoch, each one pass over the graph; "
        "beyond, a step takes several batches (each with its own negatives) sharing one pass, "
        "so an epoch's cost grows with the pairs, not pairs x entities; 0: a step per batch")
    lr: float = Field(0.005, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: each fit (the base run, every pseudo-label round) "
        "anneals the lr from lr to lr_floor times lr over its epochs")
    lr_floor: float = Field(0.1, ge=0.0, le=1.0, description="final lr of the cosine schedule, "
                            "as a share of lr")
    weight_decay: float = Field(0.0, ge=0.0)
    valid_every: int = Field(2, ge=1)
    patience: int = Field(3, ge=1, description="validations without improvement before stopping")
    iterative: bool = False
    iterations: int = Field(2, ge=0, description="pseudo-label rounds that train the network; "
                            "on DBP15K zh_en the best state comes from round 2 (BENCHMARKS.md)")
    iteration_epochs: int = Field(5, ge=1)
    pseudo_labels: Literal["csls", "sinkhorn", "agreement"] = Field(
        "sinkhorn", description="csls: mutual nearest neighbours by CSLS; sinkhorn: mutual picks "
        "of the Sinkhorn plan over the CSLS scores; agreement: pairs that are both")
    pseudo_label_reg: float = Field(
        0.001, gt=0.0, description="entropy of the Sinkhorn plan whose mutual picks are the "
        "pseudo-labels (pseudo_labels = sinkhorn or agreement), in CSLS units")
    label_rounds: int = Field(
        2, ge=0, description="pseudo-label rounds after the base run that only re-seed the "
        "propagated labels: the base model's joint embedding is decoded again and the pairs "
        "it finds re-seed the labels the first network round decodes with (the final labels "
        "when iterations = 0); no training, no effect without model.propagation")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DataConfig(_Strict):
    """How gold pairs are split and features built."""

    train_ratio: float = Field(0.3, gt=0.0, lt=1.0)
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    relation_top_k: int = Field(1000, ge=1)
    attribute_top_k: int = Field(1000, ge=1)
    use_attribute_values: bool = True


class EvalConfig(_Strict):
    """How test pairs are ranked (``training/evaluation.py``)."""

    csls_k: int = Field(3, ge=1, le=100, description="neighbours averaged for CSLS; 2-3 scored "
                        "best on full-pool validation with the propagated labels (BENCHMARKS.md)")
    sinkhorn_reg: float = Field(0.02, gt=0.0, description="entropy of the Sinkhorn ranking, "
                                "in CSLS units; 0.02 scored best on full-pool validation "
                                "(BENCHMARKS.md)")
    sinkhorn_iterations: int = Field(20, ge=1, description="Sinkhorn rounds of that ranking")
    candidates: int = Field(100, ge=1, le=1000, description="nearest entities of the other KG "
                            "kept per entity, each way: the support of the Sinkhorn plan")
    headline: Literal["cosine", "csls", "sinkhorn"] = Field(
        "sinkhorn", description="the ranking whose KG1→KG2 test figures are the run's result; "
        "sinkhorn: CSLS plus the potentials of a one-to-one plan over every unlabelled entity, "
        "chosen on the full-pool validation (BENCHMARKS.md)")


class MIMEAConfig(_Strict):
    """The whole configuration of one run."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    training: TrainingConfig = TrainingConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _some_modality(self) -> MIMEAConfig:
        if not self.model.modalities.enabled():
            raise ValueError("at least one modality must be enabled")
        return self


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


# Keys added after checkpoints were first written, with the behaviour those checkpoints had.
_FORMER_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"propagation_directed": False, "propagation_hub_damping": 0.0},
    "eval": {"headline": "csls"},
}


def saved_config(raw: dict[str, Any]) -> MIMEAConfig:
    """The configuration a checkpoint was trained with (its ``config.json`` ``config``).

    A checkpoint written before a key existed behaved as the key's former default, not the
    current one: its propagated labels, for one, are narrower than today's defaults make them.
    """
    filled = {section: dict(values) if isinstance(values, dict) else values
              for section, values in raw.items()}
    for section, defaults in _FORMER_DEFAULTS.items():
        if isinstance(filled.get(section), dict):
            for key, value in defaults.items():
                filled[section].setdefault(key, value)
    return MIMEAConfig.model_validate(filled)


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> MIMEAConfig:
    """Read a TOML/YAML/JSON config (or defaults) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_config_file(Path(path))
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return MIMEAConfig.model_validate(raw)
    except ValidationError as exc:
        source = str(path) if path else "command line"
        raise ConfigError(f"invalid configuration ({source}):\n{exc}") from exc


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: config must be .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)
