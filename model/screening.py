"""Inner products screened in bfloat16 and settled exactly in float32.

Evaluation spends most of its time counting, for each gold pair, the keys that score at least
as well as the gold, over ``[queries, keys]`` inner products of the joint embedding. On CPUs
with bfloat16 matrix units (AMX, AVX512-BF16) a bfloat16 product runs four to five times faster
than a float32 one, but it rounds each score by up to :func:`screen_margin`. So bfloat16 only
*screens*: a count reads it where it is beyond doubt, and float32 settles the rest. (Candidate
searches stay float32: see ``model.similarity.two_way_topk``.)

- :func:`exact_rows`: which query rows of a key block can have a key at their threshold at
  all; the rest have none within reach, whatever the rounding.
- :func:`count_at_least_screened`: exact counts of the keys at or above each row's threshold,
  read off the screen where it is beyond doubt and settled in float32 for the few keys within
  its rounding of the threshold.
"""

from __future__ import annotations

import torch

BF16_UNIT = 2.0 ** -8  # bfloat16 keeps 8 significant bits
COUNT_TILE = 256  # screened rows scored and compared at a time, while in cache
BAND_PAIRS = 1 << 14  # (query, key) pairs settled in float32 per gather of both sides
SETTLE_ONE_BY_ONE = 64  # beyond this many keys near its floor, a row's products are a GEMM


def screening_pays(x: torch.Tensor) -> bool:
    """Whether bfloat16 products of ``x``'s device outrun float32 ones: on a GPU, or on a CPU
    where :func:`fast_bfloat16`."""
    return x.device.type != "cpu" or fast_bfloat16()


def fast_bfloat16() -> bool:
    """Whether torch runs bfloat16 matmuls natively here (oneDNN on an AVX-512 or AMX CPU).

    Elsewhere they are emulated, slower than float32.
    """
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(supported()) if supported is not None else False
    except RuntimeError:
        return False


def screen_margin(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    r"""Per query ``[Q]``, a bound on ``|screened - exact|`` inner product with any key.

    Rounding both operands to bfloat16 moves each product :math:`a_i b_i` by at most
    :math:`(2u + u^2)|a_i b_i|` (:math:`u = 2^{-8}`), so the sum by at most
    :math:`(2u + u^2)\|a\|\|b\|`; float32 accumulation adds :math:`d\,2^{-24}\|a\|\|b\|` and
    rounding the result to bfloat16 :math:`u(1 + 2u)\|a\|\|b\|`. A tenth more covers the
    float32 arithmetic of the bound itself.
    """
    d = queries.shape[1]
    per_norm = (3 * BF16_UNIT + 3 * BF16_UNIT ** 2 + d * 2.0 ** -24) * 1.1
    key_norm = keys.norm(dim=1).max() if len(keys) else keys.new_zeros(())
    return per_norm * queries.norm(dim=1) * key_norm


def exact_rows(screened: torch.Tensor, threshold: torch.Tensor, reach: torch.Tensor, *,
               scale: float = 1.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of a screened block ``[R, C]`` (bfloat16 inner products) where some column may
    score ``scale * product + bias[col]`` at or above the row's ``threshold``, given that each
    screened product is within ``reach [R]`` of the exact one: the only rows an exact count
    needs. A NaN anywhere makes its row's maximum NaN and raises ValueError.
    """
    best = _row_best(screened, scale, bias)
    if torch.isnan(best).any():
        raise ValueError("NaN in the scores")
    return torch.nonzero(best + abs(scale) * reach >= threshold).squeeze(1)


def _row_best(screened: torch.Tensor, scale: float, bias: torch.Tensor | None) -> torch.Tensor:
    """Per row, the best screened score ``scale * product + bias`` (float32)."""
    if bias is None:
        extreme = screened.amax(dim=1) if scale >= 0 else screened.amin(dim=1)
        return scale * extreme.float()
    best = torch.empty(len(screened), dtype=torch.float32, device=screened.device)
    for lo in range(0, len(screened), 256):
        tile = torch.add(bias, screened[lo:lo + 256].float(), alpha=scale)
        best[lo:lo + 256] = tile.amax(dim=1)
    return best


def count_at_least_screened(screened: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor,
                            floor: torch.Tensor, reach: torch.Tensor, *, scale: float = 1.0,
                            bias: torch.Tensor | None = None,
                            skip: torch.Tensor | None = None) -> torch.Tensor:
    """For each row i of a screened block ``[R, C]`` (bfloat16 products of ``queries [R, d]``
    and ``keys [C, d]``, each within ``reach[i]`` of the exact one), how many keys j score
    ``scale * <q_i, k_j> + bias[j]`` at or above ``floor[i]`` in float32: ``[R]`` int64.

    A key the screen puts beyond ``scale * reach`` above the floor counts, one beyond it below
    does not; only those in between get a float32 product, one by one, or as a whole row of
    products where more than :data:`SETTLE_ONE_BY_ONE` of a row's keys are in between.
    ``skip[i]`` (a key, or -1) is left out of row i's count.
    """
    counts = torch.zeros(len(screened), dtype=torch.long, device=screened.device)
    for lo in range(0, len(screened), COUNT_TILE):
        hi = min(lo + COUNT_TILE, len(screened))
        tile = screened[lo:hi].float()
        tile = tile * scale if bias is None else torch.add(bias, tile, alpha=scale)
        margin = (abs(scale) * reach[lo:hi])[:, None]
        above = tile >= floor[lo:hi, None] + margin
        near = (tile >= floor[lo:hi, None] - margin) & ~above
        if skip is not None:
            own = torch.nonzero(skip[lo:hi] >= 0).squeeze(1)
            above[own, skip[lo:hi][own]] = False
            near[own, skip[lo:hi][own]] = False
        counts[lo:hi] = torch.count_nonzero(above, dim=1)
        crowded = torch.count_nonzero(near, dim=1) > SETTLE_ONE_BY_ONE
        if bool(crowded.any()):
            rows = torch.nonzero(crowded).squeeze(1)
            counts[lo + rows] = _exact_counts(queries[lo + rows], keys, floor[lo + rows], scale,
                                              bias, None if skip is None else skip[lo + rows])
            near[rows] = False
        band = torch.nonzero(near)
        if len(band):
            counts[lo:hi].index_add_(0, band[:, 0], _settle(band, queries[lo:hi], keys,
                                                            floor[lo:hi], scale, bias))
    return counts


def _exact_counts(queries: torch.Tensor, keys: torch.Tensor, floor: torch.Tensor,
                  scale: float, bias: torch.Tensor | None,
                  skip: torch.Tensor | None) -> torch.Tensor:
    """Per query, the keys whose float32 score reaches its floor, ``skip`` left out."""
    scores = queries @ keys.T
    scores = scores * scale if bias is None else torch.add(bias, scores, alpha=scale)
    reached = scores >= floor[:, None]
    if skip is not None:
        own = torch.nonzero(skip >= 0).squeeze(1)
        reached[own, skip[own]] = False
    return torch.count_nonzero(reached, dim=1)


def _settle(band: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, floor: torch.Tensor,
            scale: float, bias: torch.Tensor | None) -> torch.Tensor:
    """1 where the float32 score of a (row, key) pair of ``band [P, 2]`` reaches its row's
    floor, else 0 (``[P]`` int64)."""
    out = torch.empty(len(band), dtype=torch.long, device=band.device)
    for lo in range(0, len(band), BAND_PAIRS):
        row, key = band[lo:lo + BAND_PAIRS, 0], band[lo:lo + BAND_PAIRS, 1]
        score = scale * (queries[row] * keys[key]).sum(dim=1)
        if bias is not None:
            score = score + bias[key]
        out[lo:lo + BAND_PAIRS] = (score >= floor[row]).long()
    return out
