"""Exponentials that stay off the CPU's slow path for underflowing inputs (model/underflow.py)."""

from __future__ import annotations

import math

import torch

from mimea.model.similarity import segment_logsumexp
from mimea.model.underflow import HEADROOM, exp_above_underflow, shifted_logsumexp


def sharp_rows(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows like the training loss's logits: most entries hundreds below their row's best."""
    gen = torch.Generator().manual_seed(0)
    return (300 * torch.randn(64, 2048, generator=gen)).to(dtype)


def test_shifted_logsumexp_matches_torch_on_sharp_rows() -> None:
    for dtype in (torch.float32, torch.float64):
        x = sharp_rows(dtype)
        assert torch.equal(shifted_logsumexp(x), torch.logsumexp(x, dim=-1))
        assert torch.equal(shifted_logsumexp(x.T, dim=0), torch.logsumexp(x.T, dim=0))


def test_shifted_logsumexp_gradient_is_the_softmax() -> None:
    x = sharp_rows().requires_grad_()
    (grad,) = torch.autograd.grad(shifted_logsumexp(x).sum(), x)
    torch.testing.assert_close(grad, torch.softmax(x.detach(), dim=-1), rtol=1e-4, atol=1e-30)
    assert bool((grad.sum(dim=-1) - 1).abs().max() < 1e-5)


def test_an_underflowing_term_is_a_normal_number_far_below_one() -> None:
    for dtype in (torch.float32, torch.float64):
        floor = torch.finfo(dtype).tiny * math.exp(HEADROOM)
        out = exp_above_underflow(torch.tensor([-1e4, -800.0, 0.0, 1.0], dtype=dtype))
        torch.testing.assert_close(out[:2], torch.full((2,), floor, dtype=dtype))
        assert out[2] == 1.0 and abs(float(out[3]) - math.e) < 1e-6
        # Added to a sum holding 1, even ten thousand raised terms change nothing.
        assert float(out[0] * 10_000 + 1.0) == 1.0


def test_segment_logsumexp_keeps_segments_without_mass_at_minus_infinity() -> None:
    values = torch.tensor([0.0, -1000.0, -math.inf, -math.inf, 2.0])
    out = segment_logsumexp(values, torch.tensor([0, 0, 1, 1, 3]), 4)
    assert out[0] == 0.0 and out[3] == 2.0
    assert math.isinf(out[1]) and out[1] < 0, "only -inf values: no mass"
    assert math.isinf(out[2]) and out[2] < 0, "empty segment"
