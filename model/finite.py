"""Refusing NaN and infinity where they would otherwise turn into plausible numbers.

A NaN compares false with everything, so a rank computed as "how many scores beat the gold"
makes every NaN row rank 1: a diverged model would report perfect accuracy. Every tensor that
feeds a score or a loss is checked with :func:`require_finite`, which names where it failed.
"""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or infinity; the message names which and where."""


def require_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` and the first bad row when ``tensor``
    holds NaN or infinity."""
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = (~finite).reshape(tensor.shape[0], -1).any(dim=1) if tensor.dim() else ~finite
    count = int(bad.sum())
    kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinity"
    where = f" (first at row {int(bad.nonzero()[0, 0])}, {count} rows)" if tensor.dim() else ""
    raise NonFiniteError(f"{what} holds {kind}{where}")
