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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from mimea.model.propagation import label_width
from mimea.model.ranking import RANKINGS, Ranking

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
    gat_layers: int = Field(2, ge=1, le=4, description="relation-reflection attention layers "
                            "per structure stack")
    relation_aware: bool = Field(True, description="layers depend on relation types")
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
    fusion_interaction: bool = Field(True, description="cross-modal attention before the Beta "
                                     "head; only read with fusion = true")
    beta_prior: tuple[float, float] = Field((5.0, 5.0), description="Beta prior (a, b) of the "
                                            "fusion weights; only read with fusion = true")
    ot_alignment: bool = True
    ot_epsilon: float = Field(0.05, gt=0.0, description="entropic regularisation of Sinkhorn")
    modal_contrastive: bool = Field(True, description="per-modality contrastive terms")
    modal_adaptive: bool = Field(True, description="weight modality terms by confidence")
    propagation: bool = Field(True, description="append seed labels propagated over the graph "
                              "to the joint embedding (model/propagation.py)")
    propagation_dim: int = Field(128, ge=1, le=4096, description="size of a seed label")
    propagation_hops: int = Field(2, ge=1, le=8, description="propagation steps")
    propagation_hub_damping: float = Field(0.5, ge=0.0, le=4.0, description="a neighbour "
                                           "weighs its degree to this negative power")
    propagation_weight: float = Field(0.5, gt=0.0, description="weight of the propagated labels "
                                      "beside the normalised learned embedding")
    # Not a setting: whether the propagated labels have the out- and in-neighbour views. Every
    # run of this version has them; a checkpoint written before they existed does not, and
    # saved_config says so, since its labels are narrower.
    _directed_labels: bool = PrivateAttr(True)

    @property
    def directed_labels(self) -> bool:
        """Whether the propagated labels have the out- and in-neighbour views (two more)."""
        return self._directed_labels

    @property
    def propagation_width(self) -> int:
        """Columns the propagated labels add to the joint embedding (0 when off)."""
        if not self.propagation:
            return 0
        return label_width(self.propagation_dim, self.propagation_hops, self._directed_labels)


class LossConfig(_Strict):
    """Weights and shapes of the training objective (LogSumExp pair losses, see
    ``model/contrastive.py``)."""

    gamma: float = Field(1.0, ge=0.0, description="margin of the LogSumExp loss")
    lse_scale: float = Field(30.0, gt=0.0, description="lambda of the LogSumExp loss")
    negatives: int = Field(2048, ge=0, description="entities sampled as extra negatives of the "
                           "joint term and, drawn apart, of the modality terms; at least the "
                           "number of entities means every entity")
    modal_weight: float = Field(1.0, ge=0.0)
    ot_weight: float = Field(0.1, ge=0.0)
    ot_batch: int = Field(256, ge=8)
    kl_weight: float = Field(0.001, ge=0.0, description="weight of the Beta-prior KL term; "
                             "only read with model.fusion = true")


class TrainingConfig(_Strict):
    """Optimisation, model selection and pseudo-labelling.

    After the base fit on the seed pairs, a run can decode pseudo-labels: ``label_rounds``
    rounds that only re-seed the propagated labels, then ``iterations`` rounds that also train
    the network on them. Both 0 (the default): no pseudo-labels.
    """

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(1024, ge=8)
    steps_per_epoch: int = Field(
        4, ge=0, description="most optimiser steps per epoch, each one pass over the graph; "
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
    label_rounds: int = Field(
        0, ge=0, description="pseudo-label rounds after the base run that only re-seed the "
        "propagated labels: the base model's joint embedding is decoded again and the pairs "
        "it finds re-seed the labels (those the first network round decodes with, or the "
        "final ones when iterations = 0); no training, no effect without model.propagation")
    iterations: int = Field(0, ge=0, description="pseudo-label rounds that train the network, "
                            "after the label rounds; on DBP15K zh_en the best state comes from "
                            "round 2 (BENCHMARKS.md)")
    iteration_epochs: int = Field(5, ge=1)
    pseudo_label_reg: float = Field(
        0.001, gt=0.0, description="entropy of the Sinkhorn plan whose mutual picks are the "
        "pseudo-labels, in CSLS units")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def pseudo_labelling(self) -> bool:
        """Whether the run decodes pseudo-labels at all (a label or a network round)."""
        return self.label_rounds > 0 or self.iterations > 0


class DataConfig(_Strict):
    """How gold pairs are split and features built (``training/features.py``)."""

    train_ratio: float = Field(0.3, gt=0.0, lt=1.0)
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    relation_top_k: int = Field(1000, ge=1, description="most frequent relations kept as "
                                "features")
    attribute_top_k: int = Field(1000, ge=1, description="most frequent attributes kept as "
                                 "features")
    use_attribute_values: bool = Field(True, description="numeric attribute values as "
                                       "features too, where the data has them")



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
    # Not a setting: a run's result is its Sinkhorn ranking's; a checkpoint written before,
    # whose figures were another ranking's, keeps its own (saved_config).
    _headline: Ranking = PrivateAttr("sinkhorn")

    @property
    def headline(self) -> Ranking:
        """The ranking whose KG1→KG2 test figures are the run's result: sinkhorn, CSLS plus
        the potentials of a one-to-one plan over every unlabelled entity, chosen on the
        full-pool validation (BENCHMARKS.md)."""
        return self._headline


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


# What a checkpoint's saved config can hold that this version's configuration does not.
# Every config saved before these keys were removed names some of them (gat_heads,
# concat_layers, fusion_heads, joint_loss, lse_shift, temperature and iterative were there from
# the first checkpoint on); a config that names none is read as today's.
#
# Keys added after checkpoints were first written, with the behaviour those older checkpoints
# had (a config of today has every key that still exists).
_FORMER_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"propagation_directed": False, "propagation_hub_damping": 0.0},
    "training": {"label_rounds": 0},
    "eval": {"headline": "csls"},
}
# Removed keys whose behaviour was settled: the value that behaviour had (a saved value that
# differs selected code this version no longer has), or None for keys dropped whatever their
# value: gat_heads and temperature were only read by the GATConv layer and the InfoNCE loss,
# lse_shift added a constant to the loss, and modal_negatives was merged into negatives (a
# config whose two counts differ, as the demo configuration's did, keeps the joint term's: a
# checkpoint's training counts do not change how it is read).
_SETTLED: dict[str, dict[str, Any]] = {
    "model": {"structure_conv": "reflection", "self_loops": False, "concat_layers": True,
              "fusion_heads": 1, "gat_heads": None},
    "loss": {"joint_loss": "lse", "modal_loss": "lse", "lse_shift": None, "temperature": None,
             "modal_negatives": None},
    "training": {"pseudo_labels": "sinkhorn"},
}
# Removed keys whose saved value still says how to read the checkpoint (see saved_config).
_KEPT: dict[str, tuple[str, ...]] = {"model": ("propagation_directed",),
                                     "training": ("iterative",), "eval": ("headline",)}


def saved_config(raw: dict[str, Any]) -> MIMEAConfig:
    """The configuration a checkpoint was trained with (its ``config.json`` ``config``), in
    this version's keys.

    A checkpoint written before a key existed behaved as the key's former default, not the
    current one: its propagated labels, for one, are narrower than today's defaults make them.
    Of the keys removed since: one at the behaviour that stayed is dropped; one that selected
    code this version no longer has (``model.structure_conv = "gat"``, say) is a ConfigError
    naming it. ``model.propagation_directed = false`` (labels without the directed views) and
    ``eval.headline`` (the ranking of the checkpoint's figures) are kept on the sections
    (:attr:`ModelConfig.directed_labels`, :attr:`EvalConfig.headline`); ``training.iterative
    = false`` sets both round counts to 0.
    """
    filled = {section: dict(values) if isinstance(values, dict) else values
              for section, values in raw.items()}
    if not any(isinstance(filled.get(section), dict) and filled[section].keys() & keys
               for table in (_SETTLED, _KEPT) for section, keys in table.items()):
        return MIMEAConfig.model_validate(filled)
    for section, defaults in _FORMER_DEFAULTS.items():
        if isinstance(filled.get(section), dict):
            for key, value in defaults.items():
                filled[section].setdefault(key, value)
    for section, settled in _SETTLED.items():
        values = filled.get(section)
        for key, kept in settled.items():
            if isinstance(values, dict) and key in values:
                value = values.pop(key)
                if kept is not None and value != kept:
                    raise ConfigError(f"the saved config has {section}.{key} = {value!r}, which "
                                      f"this version no longer has (only {kept!r})")
    directed = _pop_kept(filled, "model", "propagation_directed", True, (True, False))
    headline = _pop_kept(filled, "eval", "headline", "sinkhorn", RANKINGS)
    iterative = _pop_kept(filled, "training", "iterative", False, (True, False))
    if not iterative and isinstance(filled["training"], dict):
        filled["training"].update(iterations=0, label_rounds=0)
    config = MIMEAConfig.model_validate(filled)
    config.model._directed_labels = directed
    config.eval._headline = headline
    return config


def _pop_kept(filled: dict[str, Any], section: str, key: str, default: Any,
              allowed: tuple[Any, ...]) -> Any:
    """Remove ``section.key`` from ``filled`` and return its value (``default`` when absent;
    ConfigError for one outside ``allowed``). An absent section becomes an empty one."""
    values = filled.setdefault(section, {})
    if not isinstance(values, dict):
        return default  # MIMEAConfig's validation refuses the section
    value = values.pop(key, default)
    if isinstance(value, bool) is not isinstance(allowed[0], bool) or value not in allowed:
        raise ConfigError(f"the saved config has {section}.{key} = {value!r}; expected one of "
                          f"{', '.join(map(repr, allowed))}")
    return value


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
