"""Optimal transport modal alignment (model/ot_alignment.py)."""

from __future__ import annotations

import pytest
import torch

from mimea.model.ot_alignment import OTModalAlignment, cosine_cost, transport_plan

B, D = 12, 8


@pytest.mark.parametrize(("n", "m"), [(5, 9), (9, 5), (7, 7), (2, 30)])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_transport_plan_has_uniform_marginals(n: int, m: int, epsilon: float) -> None:
    gen = torch.Generator().manual_seed(n * m)
    cost = cosine_cost(torch.randn(n, 4, generator=gen), torch.randn(m, 4, generator=gen))
    plan = transport_plan(cost, epsilon)
    assert plan.shape == (n, m)
    assert (plan >= 0).all()
    # 200 Sinkhorn iterations may stop short of stopThr on tiny problems (POT then warns);
    # the marginals are still within a fraction of a percent.
    torch.testing.assert_close(plan.sum(dim=1), torch.full((n,), 1.0 / n), atol=0, rtol=1e-2)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((m,), 1.0 / m), atol=0, rtol=1e-2)


def test_transport_plan_follows_low_cost() -> None:
    cost = 2.0 - 2.0 * torch.eye(6)  # matching rows and columns cost 0, the rest 2
    plan = transport_plan(cost, 0.05)
    torch.testing.assert_close(plan, torch.eye(6) / 6, atol=1e-4, rtol=0)


def test_cosine_cost_range() -> None:
    gen = torch.Generator().manual_seed(0)
    cost = cosine_cost(torch.randn(20, 5, generator=gen), torch.randn(30, 5, generator=gen))
    assert cost.shape == (20, 30)
    assert (cost >= -1e-6).all() and (cost <= 2.0 + 1e-6).all()


def test_cosine_cost_extremes() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    cost = cosine_cost(x, torch.cat([2 * x, -x]))
    torch.testing.assert_close(cost, torch.tensor([[0.0, 1.0, 2.0, 1.0], [1.0, 0.0, 1.0, 2.0]]))


def _identity_module(num_modalities: int = 2) -> OTModalAlignment:
    module = OTModalAlignment([D] * num_modalities, D, epsilon=0.05)
    with torch.no_grad():
        for proj in module.projections:
            proj.weight.copy_(torch.eye(D))
    return module


def _joint(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


def test_loss_is_finite_and_non_negative() -> None:
    torch.manual_seed(0)
    module = OTModalAlignment([4, 6], D)
    loss = module([torch.randn(B, 4), torch.randn(B, 6)], _joint(),
                  torch.ones(B, 2, dtype=torch.bool))
    assert loss.dim() == 0
    assert torch.isfinite(loss) and loss >= 0


def test_loss_lower_when_modalities_match_joint() -> None:
    module = _identity_module()
    joint = _joint()
    mask = torch.ones(B, 2, dtype=torch.bool)
    aligned = module([joint.clone(), joint.clone()], joint, mask)
    gen = torch.Generator().manual_seed(1)
    unrelated = module([torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)],
                       joint, mask)
    assert aligned < 0.5 * unrelated
    assert float(aligned) == pytest.approx(0.0, abs=0.05)


def test_gradients_reach_projection_and_joint() -> None:
    torch.manual_seed(0)
    module = OTModalAlignment([4, 6], D)
    joint = _joint().requires_grad_()
    embeddings = [torch.randn(B, 4, requires_grad=True), torch.randn(B, 6, requires_grad=True)]
    module(embeddings, joint, torch.ones(B, 2, dtype=torch.bool)).backward()
    grads = {"joint": joint.grad, "modality": embeddings[0].grad,
             **{f"projection{i}": p.weight.grad for i, p in enumerate(module.projections)}}
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("present", [0, 1])
def test_modality_present_for_fewer_than_two_entities_is_skipped(present: int) -> None:
    module = _identity_module()
    gen = torch.Generator().manual_seed(2)
    embeddings = [torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)]
    mask = torch.ones(B, 2, dtype=torch.bool)
    mask[present:, 1] = False
    single = OTModalAlignment([D], D)
    single.projections[0].load_state_dict(module.projections[0].state_dict())
    expected = single(embeddings[:1], _joint(), mask[:, :1])
    torch.testing.assert_close(module(embeddings, _joint(), mask), expected)


def test_no_usable_modality_gives_zero() -> None:
    module = _identity_module()
    mask = torch.zeros(B, 2, dtype=torch.bool)
    mask[0] = True
    loss = module([_joint(1), _joint(2)], _joint(), mask)
    assert float(loss) == 0.0


def test_only_present_rows_are_transported() -> None:
    module = _identity_module(1)
    joint = _joint()
    mask = torch.ones(B, 1, dtype=torch.bool)
    mask[:3] = False
    embeddings = [_joint(3)]
    before = module(embeddings, joint, mask)
    embeddings[0][:3] = 50.0 * torch.randn(3, D)
    torch.testing.assert_close(module(embeddings, joint, mask), before)


def test_repr() -> None:
    assert repr(OTModalAlignment([4, 6], 10, epsilon=0.1)) == (
        "OTModalAlignment(in_dims=[4, 6], joint_dim=10, epsilon=0.1)")
