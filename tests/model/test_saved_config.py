"""A checkpoint's saved configuration in this version's keys (model/config.py saved_config)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mimea.model.config import ConfigError, MIMEAConfig, saved_config

# Every key a checkpoint saved before the settled experiments left the configuration, at the
# defaults of then (69 leaves, the four modalities counted).
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "hidden_dim": 128, "gat_layers": 2, "gat_heads": 1, "structure_conv": "reflection",
        "relation_aware": True, "concat_layers": True, "self_loops": False,
        "relation_channel": True, "structure_features": ["attribute"], "proxies": 64,
        "dropout": 0.0, "structure_dropout": 0.3,
        "modalities": {"structure": True, "relation": False, "attribute": True, "visual": True},
        "fusion": False, "fusion_interaction": True, "fusion_heads": 1, "beta_prior": [5.0, 5.0],
        "ot_alignment": True, "ot_epsilon": 0.05, "modal_contrastive": True,
        "modal_adaptive": True, "propagation": True, "propagation_dim": 128,
        "propagation_hops": 2, "propagation_directed": True, "propagation_hub_damping": 0.5,
        "propagation_weight": 0.5},
    "loss": {
        "joint_loss": "lse", "modal_loss": "lse", "gamma": 1.0, "lse_scale": 30.0,
        "lse_shift": 10.0, "negatives": 2048, "modal_negatives": 2048, "temperature": 0.1,
        "modal_weight": 1.0, "ot_weight": 0.1, "ot_batch": 256, "kl_weight": 0.001},
    "training": {
        "epochs": 30, "batch_size": 1024, "steps_per_epoch": 0, "lr": 0.005,
        "lr_schedule": "cosine", "lr_floor": 0.1, "weight_decay": 0.0, "valid_every": 2,
        "patience": 3, "iterative": False, "iterations": 2, "iteration_epochs": 5,
        "pseudo_labels": "sinkhorn", "pseudo_label_reg": 0.001, "label_rounds": 2, "seed": 42,
        "device": "auto"},
    "data": {"train_ratio": 0.3, "valid_fraction": 0.1, "relation_top_k": 1000,
             "attribute_top_k": 1000, "use_attribute_values": True},
    "eval": {"csls_k": 3, "sinkhorn_reg": 0.02, "sinkhorn_iterations": 20, "candidates": 100,
             "headline": "sinkhorn"},
}


def _old(**changes: Any) -> dict[str, Any]:
    """OLD_DEFAULTS with ``section__key=value`` changes (value None: the key deleted)."""
    saved = copy.deepcopy(OLD_DEFAULTS)
    for name, value in changes.items():
        section, key = name.split("__")
        if value is None:
            del saved[section][key]
        else:
            saved[section][key] = value
    return saved


def test_old_defaults_are_todays_defaults() -> None:
    saved = _old()
    config = saved_config(saved)
    # Every key a checkpoint saved is kept as it trained, the one default changed since
    # (training.steps_per_epoch, 0 then) included.
    expected = MIMEAConfig()
    expected.training.steps_per_epoch = 0
    assert config == expected
    assert config.model.directed_labels and config.eval.headline == "sinkhorn"
    assert config.model.propagation_width == MIMEAConfig().model.propagation_width
    assert saved == OLD_DEFAULTS  # the caller's dict is left alone


def test_todays_config_reads_as_it_is() -> None:
    assert saved_config(MIMEAConfig().model_dump(mode="json")) == MIMEAConfig()
    # Naming no removed key, a config is today's: no former default fills its gaps.
    partial = saved_config({"model": {"propagation_dim": 8}})
    assert partial.model.directed_labels and partial.model.propagation_hub_damping == 0.5
    assert partial.eval.headline == "sinkhorn"


def test_checkpoint_before_the_directed_views_has_narrower_labels() -> None:
    # Its labels have two views, not four: its config must say so, or its learned columns
    # are cut wrong (and the labels its alignment is decided with are rebuilt wrong).
    config = saved_config(_old(model__propagation_directed=None,
                               model__propagation_hub_damping=None))
    model = config.model
    assert not model.directed_labels and model.propagation_hub_damping == 0.0
    assert model.propagation_width == 2 * model.propagation_hops * model.propagation_dim
    explicit = saved_config(_old(model__propagation_directed=False)).model
    assert not explicit.directed_labels and explicit.propagation_hub_damping == 0.5


@pytest.mark.parametrize(("headline", "expected"), [
    (None, "csls"), ("csls", "csls"), ("cosine", "cosine"), ("sinkhorn", "sinkhorn")])
def test_checkpoint_keeps_its_headline_ranking(headline: str | None, expected: str) -> None:
    # Before the Sinkhorn headline, a checkpoint's figures were CSLS's.
    assert saved_config(_old(eval__headline=headline)).eval.headline == expected


@pytest.mark.parametrize(("iterative", "iterations", "label_rounds", "expected"), [
    (False, 2, 2, (0, 0)),  # not iterative: no round at all, whatever the counts said
    (True, 2, 2, (2, 2)),
    (True, 0, 2, (0, 2)),  # label rounds only
    (True, 3, None, (3, 0)),  # saved before label rounds existed
    (None, 2, 2, (0, 0)),  # iterative was false by default
])
def test_iterative_folds_into_the_round_counts(iterative: bool | None, iterations: int,
                                               label_rounds: int | None,
                                               expected: tuple[int, int]) -> None:
    training = saved_config(_old(training__iterative=iterative,
                                 training__iterations=iterations,
                                 training__label_rounds=label_rounds)).training
    assert (training.iterations, training.label_rounds) == expected
    assert training.pseudo_labelling == (expected != (0, 0))


def test_training_only_keys_are_dropped_whatever_their_value() -> None:
    # The demo configuration drew 512 joint and 2048 modality negatives: its checkpoints
    # keep being read (and served), with the joint term's count.
    config = saved_config(_old(loss__negatives=512, loss__modal_negatives=2048,
                               loss__lse_shift=3.0, loss__temperature=0.5, model__gat_heads=4))
    assert config.loss.negatives == 512
    assert config.loss == MIMEAConfig().loss.model_copy(update={"negatives": 512})


@pytest.mark.parametrize(("section", "key", "value"), [
    ("model", "structure_conv", "gat"),
    ("model", "self_loops", True),
    ("model", "concat_layers", False),
    ("model", "fusion_heads", 2),
    ("loss", "joint_loss", "infonce"),
    ("loss", "modal_loss", "infonce"),
    ("training", "pseudo_labels", "csls"),
    ("training", "pseudo_labels", "agreement"),
])
def test_removed_behaviour_is_a_clear_error(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key} = {value!r}.*no longer"):
        saved_config(_old(**{f"{section}__{key}": value}))


@pytest.mark.parametrize(("section", "key", "value"), [
    ("eval", "headline", "euclid"), ("model", "propagation_directed", "yes"),
    ("training", "iterative", 1)])
def test_unreadable_kept_value_is_a_clear_error(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key} = {value!r}"):
        saved_config(_old(**{f"{section}__{key}": value}))
