"""Exponentials of shifted scores without the CPU's slow path for underflowing inputs.

A log-sum-exp shifts its scores by their maximum, so with sharp scores (the training loss's
LogSumExp at lambda 30, a Sinkhorn plan at entropy 0.02) most shifted values lie far below
-87, where a float32 exponential underflows. On x86 CPUs torch's vectorised ``exp`` leaves
its fast path for such inputs and runs 10 to 20 times slower. Their exponentials are below the
smallest normal float, so raising the inputs to just above that threshold first changes no
sum that also holds the maximum's ``exp(0) = 1``: the results are the same and the loss's
passes over its ``[B, C]`` score matrices several times faster. (Raised to the threshold
itself, the exponentials round to subnormals and take the slow path again.)
"""

from __future__ import annotations

import math

import torch

HEADROOM = 8.0  # the floor's exponential is e^8 (about 3,000) times the smallest normal number


def exp_above_underflow(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)``, each input first raised to :data:`HEADROOM` above the log of the dtype's
    smallest normal number (about -79 for float32, so an underflowing term is 3e-35 rather than
    0). Use it where the terms are summed with one at least 1, as in a shifted log-sum-exp."""
    return x.clamp_min(math.log(torch.finfo(x.dtype).tiny) + HEADROOM).exp()


def shifted_logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch.logsumexp(x, dim)`` for finite ``x``, its exponentials taken with
    :func:`exp_above_underflow` (the same value; the gradient of a term below the underflow
    threshold is 0 instead of a number under 1e-38)."""
    peak = x.detach().amax(dim=dim, keepdim=True)
    return (peak + exp_above_underflow(x - peak).sum(dim=dim, keepdim=True).log()).squeeze(dim)
