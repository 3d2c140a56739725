"""Modal-adaptive contrastive learning (model/contrastive.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimea.model.contrastive import PairLoss, lse_pair_loss, modal_adaptive_loss, pair_confidence

B, D = 32, 16


def _lse(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    local = torch.arange(len(left))
    return lse_pair_loss(left, right, torch.cat([left, right]), local, local + len(left))


def _kept_pairs_loss(left_index: torch.Tensor, right_index: torch.Tensor) -> PairLoss:
    """The LogSumExp loss of the kept pairs against their own entities (the objective's also
    has the rest of the batch and sampled negatives as candidates)."""
    def loss(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return _lse(h[left_index[keep]], h[right_index[keep]])
    return loss


@pytest.mark.parametrize("batch", [2, 7, 32])
def test_pair_loss_shape(batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    loss = _lse(torch.randn(batch, D, generator=gen), torch.randn(batch, D, generator=gen))
    assert loss.shape == (batch,)
    assert torch.isfinite(loss).all()


def test_lse_with_extra_candidates_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    candidates = torch.randn(50, D, generator=gen)
    left_index, right_index = torch.arange(5), torch.arange(10, 15)
    loss = lse_pair_loss(candidates[left_index], candidates[right_index], candidates,
                         left_index, right_index)
    assert loss.shape == (5,)
    assert torch.isfinite(loss).all()


def _lse_by_the_formula(candidates: torch.Tensor, left_index: torch.Tensor,
                       right_index: torch.Tensor, gamma: float) -> torch.Tensor:
    """The docstring's formula, one elementwise step at a time."""
    h = F.normalize(candidates, dim=-1)
    left, right = h[left_index], h[right_index]
    positive = (left - right).pow(2).sum(-1, keepdim=True)
    own = torch.zeros(len(left_index), len(h), dtype=torch.bool)
    own[torch.arange(len(left_index)), left_index] = True
    own[torch.arange(len(left_index)), right_index] = True
    total = torch.zeros(len(left_index))
    for anchor in (left, right):
        cosine = anchor @ h.T
        margin = positive - (2 - 2 * cosine) + gamma
        mean = (positive + gamma - 2 + 2 * cosine.mean(-1, keepdim=True)).detach()
        std = (2 * cosine.std(-1, keepdim=True)).detach()
        standardised = (margin.masked_fill(own, 0.0) - mean) / std
        total = total + torch.logsumexp(30.0 * standardised, dim=-1)
    return total


@pytest.mark.parametrize("noise", [0.1, 1.0, 3.0])
def test_lse_matches_its_formula_in_value_and_gradient(noise: float) -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(60, D, generator=gen)
    left_index, right_index = torch.arange(10), torch.arange(10, 20)
    base[right_index] = base[left_index] + noise * torch.randn(10, D, generator=gen)
    grads = []
    values = []
    for loss_of in (lambda h: lse_pair_loss(h[left_index], h[right_index], h, left_index,
                                            right_index, gamma=1.0),
                    lambda h: _lse_by_the_formula(h, left_index, right_index, 1.0)):
        h = base.clone().requires_grad_()
        value = loss_of(h)
        value.sum().backward()
        values.append(value.detach())
        grads.append(h.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_lse_aligned_pairs_stop_pulling() -> None:
    # Pairs closer than every negative by more than the margin (random vectors in 256
    # dimensions are nearly orthogonal): the own columns dominate and the pull vanishes.
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(400, 256, generator=gen)
    left_index, right_index = torch.arange(5), torch.arange(5, 10)
    norms = []
    for noise in (1e-3, 1.0):
        base[right_index] = base[left_index] + noise * torch.randn(5, 256, generator=gen)
        h = base.clone().requires_grad_()
        lse_pair_loss(h[left_index], h[right_index], h, left_index, right_index).sum().backward()
        norms.append(float(h.grad.norm()))
    assert norms[0] < 1e-3 * norms[1]


def test_optimisation_aligns_toy_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(B, D, generator=gen).requires_grad_()
    right = torch.randn(B, D, generator=gen).requires_grad_()
    optimizer = torch.optim.Adam([left, right], lr=0.05)
    losses = []
    for _ in range(30):
        loss = _lse(left, right).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # The LSE loss is standardised per row, so its value is not monotone; it still drops.
    assert losses[-1] < 0.95 * losses[0]
    with torch.no_grad():
        sim = F.normalize(left, dim=-1) @ F.normalize(right, dim=-1).T
    assert sim.argmax(dim=1).tolist() == list(range(B))
    assert sim.argmax(dim=0).tolist() == list(range(B))


@pytest.mark.parametrize("modalities", [1, 3, 4])
def test_pair_confidence_is_one_for_uniform_weights(modalities: int) -> None:
    weights = torch.full((10, modalities), 1.0 / modalities)
    confidence = pair_confidence(weights, torch.arange(5), torch.arange(5, 10))
    torch.testing.assert_close(confidence, torch.ones(5, modalities))


@pytest.mark.parametrize("missing_side", ["left", "right", "both"])
def test_pair_confidence_is_zero_when_an_entity_lacks_the_modality(missing_side: str) -> None:
    weights = torch.full((4, 2), 0.5)
    if missing_side in ("left", "both"):
        weights[0] = torch.tensor([0.0, 1.0])
    if missing_side in ("right", "both"):
        weights[2] = torch.tensor([0.0, 1.0])
    confidence = pair_confidence(weights, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert confidence[0, 0] == 0
    assert confidence[0, 1] > 0
    torch.testing.assert_close(confidence[1], torch.ones(2))


def test_pair_confidence_is_not_trained() -> None:
    weights = torch.full((4, 2), 0.5, requires_grad=True)
    confidence = pair_confidence(weights, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert not confidence.requires_grad


def _modal_problem(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                           torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n, pairs = 24, 10
    modal = [torch.randn(n, 5, generator=gen), torch.randn(n, 7, generator=gen)]
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[0, 1] = False  # pair 0: left lacks modality 1
    mask[13, 0] = False  # pair 3: right lacks modality 0
    weights = torch.rand(n, 2, generator=gen) * mask
    weights = weights / weights.sum(dim=1, keepdim=True)
    left = torch.arange(pairs)
    return modal, mask, weights, left, left + pairs


def _modal_loss(modal: list[torch.Tensor], mask: torch.Tensor, weights: torch.Tensor,
                left: torch.Tensor, right: torch.Tensor, *, adaptive: bool = True) -> torch.Tensor:
    return modal_adaptive_loss(modal, mask, weights, left, right, _kept_pairs_loss(left, right),
                               adaptive=adaptive)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize(("entity", "modality"), [(0, 1), (13, 0)])
def test_modal_loss_ignores_pairs_missing_the_modality(adaptive: bool, entity: int,
                                                       modality: int) -> None:
    modal, mask, weights, left, right = _modal_problem()
    before = _modal_loss(modal, mask, weights, left, right, adaptive=adaptive)
    modal[modality][entity] = 100.0 * torch.randn(modal[modality].shape[1])
    after = _modal_loss(modal, mask, weights, left, right, adaptive=adaptive)
    torch.testing.assert_close(after, before)


def test_modal_loss_changes_with_present_pairs() -> None:
    modal, mask, weights, left, right = _modal_problem()
    before = _modal_loss(modal, mask, weights, left, right)
    modal[0][1] = 100.0 * torch.randn(modal[0].shape[1])
    assert not torch.allclose(_modal_loss(modal, mask, weights, left, right), before)


def test_adaptive_equals_plain_for_uniform_weights() -> None:
    modal, _, _, left, right = _modal_problem()
    mask = torch.ones(24, 2, dtype=torch.bool)
    weights = torch.full((24, 2), 0.5)
    torch.testing.assert_close(
        _modal_loss(modal, mask, weights, left, right, adaptive=True),
        _modal_loss(modal, mask, weights, left, right, adaptive=False))


def test_adaptive_loss_scales_with_confidence() -> None:
    modal, _, _, left, right = _modal_problem()
    mask = torch.ones(24, 2, dtype=torch.bool)
    weights = torch.tensor([[0.25, 0.75]]).expand(24, 2)  # confidences 0.5 and 1.5
    per_modality = [
        _modal_loss([h], mask[:, :1], weights[:, :1], left, right, adaptive=False)
        for h in modal]
    adaptive = _modal_loss(modal, mask, weights, left, right, adaptive=True)
    torch.testing.assert_close(adaptive, 0.5 * per_modality[0] + 1.5 * per_modality[1])
    plain = _modal_loss(modal, mask, weights, left, right, adaptive=False)
    torch.testing.assert_close(plain, per_modality[0] + per_modality[1])


def test_modality_with_fewer_than_two_pairs_is_skipped() -> None:
    modal, _, _, left, right = _modal_problem()
    mask = torch.ones(24, 2, dtype=torch.bool)
    mask[1:10, 1] = False  # only pair 0 has modality 1
    weights = torch.full((24, 2), 0.5)
    only_first = _modal_loss(modal[:1], mask[:, :1], weights[:, :1], left, right,
                             adaptive=False)
    torch.testing.assert_close(
        _modal_loss(modal, mask, weights, left, right, adaptive=False), only_first)


def test_modal_loss_gradient_reaches_embeddings() -> None:
    modal, mask, weights, left, right = _modal_problem()
    modal = [h.requires_grad_() for h in modal]
    _modal_loss(modal, mask, weights, left, right).backward()
    for h in modal:
        assert h.grad is not None and h.grad[left].abs().sum() > 0
