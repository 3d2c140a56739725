"""The bfloat16 screen: its error bound holds, and every rank and score it serves is exact."""

from __future__ import annotations

import pytest
import torch

import mimea.model.similarity as similarity
import mimea.training.evaluation as evaluation
from mimea.model.ranking import score_form
from mimea.model.screening import exact_rows, screen_margin
from mimea.model.similarity import normalise, streaming_gold_ranks


def noisy_pairs(n: int, d: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources and targets ``[n, d]`` at unit norm, pair i a noisy copy of one vector: with
    ``noise`` around 2-4 a good share of golds are outranked, so the screen has work to do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    return (normalise(base + noise * torch.randn(n, d, generator=g)),
            normalise(base + noise * torch.randn(n, d, generator=g)))


def without_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (similarity, evaluation):
        monkeypatch.setattr(module, "screening_pays", lambda x: False)


@pytest.mark.parametrize("d", [64, 768, 2304])
def test_margin_bounds_the_bfloat16_error(d: int) -> None:
    queries, keys = noisy_pairs(400, d, 0.5)
    keys = torch.cat([keys, 3 * keys[:5]])  # a longer key scales the bound with it
    screened = (queries.bfloat16() @ keys.bfloat16().T).float()
    error = (screened - queries @ keys.T).abs()
    margin = screen_margin(queries, keys)
    assert bool((error <= margin[:, None]).all())
    assert float(margin.max()) < 0.05  # a bound that rules out nothing would be useless


def test_exact_rows_keeps_every_row_with_a_key_at_its_threshold() -> None:
    queries, keys = noisy_pairs(300, 512, 2.0, seed=3)
    g = torch.Generator().manual_seed(4)
    bias = -0.05 * torch.rand(len(keys), generator=g)
    exact = 2.0 * queries @ keys.T + bias
    threshold = exact.amax(dim=1) + 0.004 * (torch.rand(len(queries), generator=g) - 0.5)
    rows = exact_rows(queries.bfloat16() @ keys.bfloat16().T, threshold,
                      screen_margin(queries, keys), scale=2.0, bias=bias)
    reaching = torch.nonzero(exact.amax(dim=1) >= threshold).squeeze(1)
    assert set(reaching.tolist()) <= set(rows.tolist())


def test_exact_rows_raises_on_nan() -> None:
    screened = torch.zeros(3, 4, dtype=torch.bfloat16)
    screened[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        exact_rows(screened, torch.zeros(3), torch.zeros(3))


def test_streaming_ranks_with_the_screen_equal_a_dense_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sources, targets = noisy_pairs(900, 384, 3.0, seed=1)
    bias = -0.2 * torch.rand(len(targets), generator=torch.Generator().manual_seed(6))
    gold = torch.arange(len(sources))
    screened = streaming_gold_ranks(sources, gold, targets, scale=2.0, col_bias=bias, block=200)
    dense = 2.0 * sources @ targets.T + bias
    gold_score = dense.diagonal()[:, None]
    expected = (dense >= gold_score - 1e-5 * (2.0 + gold_score.abs())).sum(dim=1)
    assert torch.equal(screened, expected)
    assert 1 < float(expected.float().mean()) < len(targets) / 2  # neither trivial nor hopeless
    without_screen(monkeypatch)
    assert torch.equal(streaming_gold_ranks(sources, gold, targets, scale=2.0, col_bias=bias,
                                            block=200), screened)


def test_pair_ranks_with_the_screen_equal_the_float32_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sources, targets = noisy_pairs(800, 384, 3.0, seed=2)
    g = torch.Generator().manual_seed(5)
    r1, r2 = (0.1 * torch.rand(len(sources), generator=g),
              0.1 * torch.rand(len(targets), generator=g))
    log_u, log_v = -torch.rand(len(sources), generator=g), -torch.rand(len(targets), generator=g)
    forms = {"cosine": (score_form("cosine"), score_form("cosine")),
             "csls": (score_form("csls", r1, r2), score_form("csls", r2, r1)),
             "sinkhorn": (score_form("sinkhorn", r1, r2, log_v, 0.05),
                          score_form("sinkhorn", r2, r1, log_u, 0.05))}
    screened = evaluation._pair_ranks(sources, targets, forms, block=128)
    without_screen(monkeypatch)
    exact = evaluation._pair_ranks(sources, targets, forms, block=128)
    for method in forms:
        for got, expected in zip(screened[method], exact[method], strict=True):
            # Both count in float32, through different sums: a key within rounding of the
            # (tolerance-lowered) gold score may fall either side, nothing else may differ.
            differ = got != expected
            assert int((got - expected).abs().max()) <= 1, method
            assert float(differ.float().mean()) < 0.005, method
    assert float(exact["cosine"][0].float().mean()) > 1.5
