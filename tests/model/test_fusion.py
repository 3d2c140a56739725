"""Probability-guided modal fusion (model/fusion.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from mimea.model.fusion import MIN_CONCENTRATION, FusionOutput, ProbabilityGuidedFusion

DIMS = [6, 4, 5]
N = 10


def _embeddings(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(N, d, generator=gen) for d in DIMS]


def _mask() -> torch.Tensor:
    mask = torch.ones(N, len(DIMS), dtype=torch.bool)
    mask[1, 2] = False
    mask[2, 0] = False
    mask[3, 1:] = False
    mask[4, :2] = False
    return mask


def _fusion(interaction: bool = True, learned: bool = True,
            seed: int = 0) -> ProbabilityGuidedFusion:
    torch.manual_seed(seed)
    return ProbabilityGuidedFusion(DIMS, token_dim=8, interaction=interaction, learned=learned)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("interaction", [True, False])
def test_weights_sum_to_one_over_present_modalities(training: bool, interaction: bool) -> None:
    fusion = _fusion(interaction).train(training)
    mask = _mask()
    out = fusion(_embeddings(), mask)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(N))
    assert (out.weights[~mask] == 0).all()
    assert (out.weights[mask] > 0).all()


def test_eval_mode_is_deterministic() -> None:
    fusion = _fusion().eval()
    embeddings, mask = _embeddings(), _mask()
    first, second = fusion(embeddings, mask), fusion(embeddings, mask)
    torch.testing.assert_close(first.joint, second.joint, rtol=0, atol=0)
    torch.testing.assert_close(first.weights, second.weights, rtol=0, atol=0)


def test_eval_mode_uses_beta_mean() -> None:
    fusion = _fusion().eval()
    mask = _mask()
    out = fusion(_embeddings(), mask)
    mean = out.alpha / (out.alpha + out.beta) * mask
    torch.testing.assert_close(out.weights, mean / mean.sum(dim=1, keepdim=True))


def test_training_mode_samples_confidences() -> None:
    fusion = _fusion().train()
    embeddings, mask = _embeddings(), _mask()
    torch.manual_seed(1)
    first = fusion(embeddings, mask).weights
    torch.manual_seed(2)
    second = fusion(embeddings, mask).weights
    assert not torch.allclose(first, second)


def test_beta_parameters_are_positive() -> None:
    out = _fusion().train()(_embeddings(), _mask())
    assert out.alpha.shape == out.beta.shape == (N, len(DIMS))
    assert (out.alpha > 0).all() and (out.beta > 0).all()


@pytest.mark.parametrize("interaction", [True, False])
@pytest.mark.parametrize(("entity", "modality"), [(1, 2), (2, 0), (3, 1), (4, 0)])
def test_masked_modality_does_not_affect_its_entity(interaction: bool, entity: int,
                                                    modality: int) -> None:
    fusion = _fusion(interaction).eval()
    mask = _mask()
    assert not mask[entity, modality]
    embeddings = _embeddings()
    before = fusion(embeddings, mask)
    changed = [h.clone() for h in embeddings]
    changed[modality][entity] = 100.0 * torch.randn(DIMS[modality])
    after = fusion(changed, mask)
    torch.testing.assert_close(after.joint[entity], before.joint[entity])
    torch.testing.assert_close(after.weights[entity], before.weights[entity])


@pytest.mark.parametrize("interaction", [True, False])
def test_other_entities_do_not_affect_an_entity(interaction: bool) -> None:
    fusion = _fusion(interaction).eval()
    mask = _mask()
    embeddings = _embeddings()
    before = fusion(embeddings, mask)
    changed = [h.clone() for h in embeddings]
    for h in changed:
        h[1:] = torch.randn_like(h[1:])
    torch.testing.assert_close(fusion(changed, mask).joint[0], before.joint[0])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("interaction", [True, False])
def test_entity_without_modalities_gives_no_nan(training: bool, interaction: bool) -> None:
    fusion = _fusion(interaction).train(training)
    mask = _mask()
    mask[5] = False
    out = fusion(_embeddings(), mask)
    for name in ("joint", "weights", "alpha", "beta", "kl"):
        assert torch.isfinite(getattr(out, name)).all(), name
    assert (out.weights[5] == 0).all()
    assert (out.joint[5] == 0).all()


def test_all_entities_without_modalities_gives_no_nan() -> None:
    out = _fusion().train()(_embeddings(), torch.zeros(N, len(DIMS), dtype=torch.bool))
    assert torch.isfinite(out.joint).all() and torch.isfinite(out.kl)
    assert (out.weights == 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_unlearned_fusion_gives_uniform_weights(training: bool) -> None:
    fusion = _fusion(learned=False).train(training)
    mask = _mask()
    out = fusion(_embeddings(), mask)
    expected = mask.float() / mask.float().sum(dim=1, keepdim=True)
    torch.testing.assert_close(out.weights, expected)
    assert out.kl == 0


@pytest.mark.parametrize("training", [True, False])
def test_kl_is_non_negative_and_finite(training: bool) -> None:
    out = _fusion().train(training)(_embeddings(), _mask())
    assert out.kl.dim() == 0
    assert torch.isfinite(out.kl) and out.kl >= 0


def test_kl_is_zero_at_the_prior() -> None:
    fusion = _fusion().eval()
    a0, b0 = (float(v) for v in fusion.prior)
    concentration = torch.tensor(a0 + b0 - MIN_CONCENTRATION)
    with torch.no_grad():  # mean a0/(a0+b0) = 1/2, concentration a0 + b0: alpha, beta = prior
        fusion.beta_head.weight.zero_()
        fusion.beta_head.bias.copy_(torch.stack([torch.tensor(0.0),
                                                 torch.log(torch.expm1(concentration))]))
    out = fusion(_embeddings(), _mask())
    torch.testing.assert_close(out.alpha, torch.full((N, len(DIMS)), a0))
    assert float(out.kl.detach()) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("learned", [True, False])
def test_joint_dim_is_sum_of_input_dims(learned: bool) -> None:
    out = _fusion(learned=learned)(_embeddings(), _mask())
    assert isinstance(out, FusionOutput)
    assert out.joint.shape == (N, sum(DIMS))
    assert out.weights.shape == (N, len(DIMS))


def test_joint_is_weighted_normalised_embeddings() -> None:
    fusion = _fusion().eval()
    embeddings = _embeddings()
    out = fusion(embeddings, _mask())
    start = 0
    for i, h in enumerate(embeddings):
        block = out.joint[:, start:start + h.shape[1]]
        expected = out.weights[:, i:i + 1] * torch.nn.functional.normalize(h, dim=-1)
        torch.testing.assert_close(block, expected)
        start += h.shape[1]


def test_gradient_reaches_beta_head_in_training_mode() -> None:
    fusion = _fusion().train()
    target = torch.randn(N, sum(DIMS))
    out = fusion(_embeddings(), _mask())
    (out.joint * target).sum().backward()
    for name, param in (("beta_head", fusion.beta_head.weight), ("tokens", fusion.tokens[0].weight),
                        ("attention", fusion.attention.in_proj_weight)):
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_sampled_weights_are_differentiable_in_alpha() -> None:
    fusion = _fusion().train()
    out = fusion(_embeddings(), _mask())
    alpha_grad, = torch.autograd.grad(out.weights[0, 0], out.alpha)
    assert alpha_grad.abs().sum() > 0


@pytest.mark.parametrize(("embeddings", "mask_cols"), [(2, 3), (3, 2), (4, 4)])
def test_wrong_number_of_modalities_rejected(embeddings: int, mask_cols: int) -> None:
    with pytest.raises(ValueError, match="expected 3 modalities"):
        _fusion()([torch.randn(N, 4)] * embeddings, torch.ones(N, mask_cols, dtype=torch.bool))


def test_reset_parameters_initialises_attention_as_torch_does() -> None:
    """Same numbers as MultiheadAttention's own (private) initialisation, from the same
    random state."""
    fusion = _fusion()
    reference = copy.deepcopy(fusion)
    torch.manual_seed(7)
    fusion.reset_parameters()
    torch.manual_seed(7)
    for proj in reference.tokens:
        proj.reset_parameters()
    reference.attention._reset_parameters()
    for name, value in reference.attention.state_dict().items():
        assert torch.equal(fusion.attention.state_dict()[name], value), name


def test_repr() -> None:
    assert repr(_fusion(interaction=False)) == (
        "ProbabilityGuidedFusion(in_dims=[6, 4, 5], interaction=False, learned=True)")
