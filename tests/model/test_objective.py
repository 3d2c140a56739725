"""The training objective (model/objective.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mimea.model.config import LossConfig, ModelConfig
from mimea.model.mimea import MIMEA, GraphInputs, active_modalities
from mimea.model.objective import alignment_objective, plan_rows

ConfigFactory = Callable[..., ModelConfig]
Pairs = tuple[torch.Tensor, torch.Tensor]
LOSS = LossConfig(negatives=16, ot_batch=16)


def _terms(config: ModelConfig, inputs: GraphInputs, pairs: Pairs,
           loss: LossConfig = LOSS) -> tuple[MIMEA, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    dims = {name: int(x.shape[1]) for name, x in inputs.features.items()}
    model = MIMEA(config, inputs.num_entities, inputs.num_edge_types, dims,
                  active_modalities(config, inputs)).train()
    return model, alignment_objective(model, inputs, *pairs, loss)


def _assert_total_is_sum(terms: dict[str, torch.Tensor]) -> None:
    parts = [value for key, value in terms.items() if key != "total"]
    torch.testing.assert_close(terms["total"], torch.stack(parts).sum())


def test_every_ablation_gives_finite_terms(ablation: dict[str, Any], model_config: ConfigFactory,
                                           graph_inputs: GraphInputs, seed_pairs: Pairs) -> None:
    model, terms = _terms(model_config(**ablation), graph_inputs, seed_pairs)
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    _assert_total_is_sum(terms)
    terms["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_total_is_sum_of_terms(model_config: ConfigFactory, graph_inputs: GraphInputs,
                               seed_pairs: Pairs) -> None:
    _, terms = _terms(model_config(), graph_inputs, seed_pairs)
    assert set(terms) == {"joint", "modal", "ot", "kl", "total"}
    _assert_total_is_sum(terms)


@pytest.mark.parametrize(("flag", "term"), [("fusion", "kl"), ("ot_alignment", "ot"),
                                            ("modal_contrastive", "modal")])
def test_switching_a_module_off_removes_its_term(flag: str, term: str,
                                                 model_config: ConfigFactory,
                                                 graph_inputs: GraphInputs,
                                                 seed_pairs: Pairs) -> None:
    _, terms = _terms(model_config(**{flag: False}), graph_inputs, seed_pairs)
    assert term not in terms
    assert {"joint", "total"} <= set(terms)


@pytest.mark.parametrize(("weight", "term"), [("kl_weight", "kl"), ("ot_weight", "ot"),
                                              ("modal_weight", "modal")])
def test_zero_loss_weight_removes_its_term(weight: str, term: str, model_config: ConfigFactory,
                                           graph_inputs: GraphInputs, seed_pairs: Pairs) -> None:
    loss = LOSS.model_copy(update={weight: 0.0})
    _, terms = _terms(model_config(), graph_inputs, seed_pairs, loss)
    assert term not in terms


def test_only_joint_term_when_every_module_is_off(model_config: ConfigFactory,
                                                  graph_inputs: GraphInputs,
                                                  seed_pairs: Pairs) -> None:
    config = model_config(fusion=False, ot_alignment=False, modal_contrastive=False)
    _, terms = _terms(config, graph_inputs, seed_pairs)
    assert set(terms) == {"joint", "total"}
    torch.testing.assert_close(terms["total"], terms["joint"])


def test_loss_weights_scale_their_terms(model_config: ConfigFactory, graph_inputs: GraphInputs,
                                        seed_pairs: Pairs) -> None:
    _, base = _terms(model_config(), graph_inputs, seed_pairs)
    doubled = LOSS.model_copy(update={"kl_weight": 2 * LOSS.kl_weight,
                                      "modal_weight": 2 * LOSS.modal_weight})
    _, terms = _terms(model_config(), graph_inputs, seed_pairs, doubled)
    torch.testing.assert_close(terms["kl"], 2 * base["kl"])
    torch.testing.assert_close(terms["modal"], 2 * base["modal"])


def test_ot_batch_larger_than_pairs(model_config: ConfigFactory, graph_inputs: GraphInputs,
                                    seed_pairs: Pairs) -> None:
    loss = LOSS.model_copy(update={"ot_batch": 512, "negatives": 0})
    _, terms = _terms(model_config(), graph_inputs, seed_pairs, loss)
    assert torch.isfinite(terms["ot"]) and torch.isfinite(terms["joint"])


@pytest.mark.parametrize(("negatives", "same"), [(10_000, True), (4, False)])
def test_negatives_at_graph_size_take_every_entity(negatives: int, same: bool,
                                                   model_config: ConfigFactory,
                                                   graph_inputs: GraphInputs,
                                                   seed_pairs: Pairs) -> None:
    loss = LOSS.model_copy(update={"negatives": negatives})
    torch.manual_seed(0)
    dims = {name: int(x.shape[1]) for name, x in graph_inputs.features.items()}
    model = MIMEA(model_config(), graph_inputs.num_entities, graph_inputs.num_edge_types, dims,
                  active_modalities(model_config(), graph_inputs)).eval()
    # Pairs from half the seeds: the batch alone does not cover the graph.
    left, right = (p[: len(p) // 2] for p in seed_pairs)
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        terms = alignment_objective(model, graph_inputs, left, right, loss)
        draws.append((terms["joint"].detach(), terms["modal"].detach()))
    assert torch.equal(draws[0][0], draws[1][0]) is same
    assert torch.equal(draws[0][1], draws[1][1]) is same


def test_joint_then_modality_negatives_are_drawn_apart() -> None:
    # One count for both terms, two draws in this order: the sampled entities (so training
    # results) are those of a run that set each term's count apart.
    left, right = torch.tensor([0, 1]), torch.tensor([5, 6])
    torch.manual_seed(3)
    rows, (batch,) = plan_rows(LOSS, 40, [(left, right)])
    torch.manual_seed(3)
    joint, modal = torch.randint(40, (16,)), torch.randint(40, (16,))
    assert torch.equal(rows[batch.joint_negatives], joint)
    assert torch.equal(rows[batch.modal_negatives], modal)
    assert not torch.equal(joint, modal)
