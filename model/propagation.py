"""Seed-label propagation: a training-free structural channel of the joint embedding.

Every training seed pair gets one random unit vector, shared by its two entities, and the
vectors spread over the graph hop by hop in two views:

* neighbours: an entity takes the mean label of the entities it is linked to;
* relation roles: each relation type (an inverse counts as its own type) takes the mean label of
  the entities that have it, and an entity the mean over its types. Relation ids are private to
  each KG; through the seeds, types that play the same role on both sides get similar labels.

Two entities linked the same way to aligned seeds end up with similar labels, with no
parameter to fit, so nothing memorises the seeds. The graph network already learns from the
same links, but it makes different mistakes: concatenated to its output, the labels add about
2 points of Hits@1 on DBP15K zh_en (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def propagate_seed_labels(edge_index: torch.Tensor, edge_type: torch.Tensor,
                          num_entities: int, seeds: torch.Tensor, *, dim: int = 128,
                          hops: int = 2, seed: int = 0) -> torch.Tensor:
    r"""Propagated seed labels of every entity, L2-normalised.

    With :math:`L^{(0)}` the seed labels (zero outside the seeds), :math:`A` the mean over
    distinct neighbours, :math:`T` the mean over an entity's relation types and :math:`S` the
    mean over a type's entities, each hop computes

    .. math::
        N^{(k)} = \hat{A L^{(k-1)}}, \quad R^{(k)} = \widehat{T \hat{S L^{(k-1)}}}, \quad
        L^{(k)} = \widehat{N^{(k)} + R^{(k)}}

    (hats: rows L2-normalised) and resets the seeds to their own labels. The result is
    :math:`[N^{(1)} \| \dots \| N^{(K)} \| R^{(1)} \| \dots \| R^{(K)}]`, normalised; an entity no
    seed reaches gets a zero row.

    Args:
        edge_index: ``[2, E]`` edges source → target (both directions of every triple).
        edge_type: ``[E]`` relation type of each edge, inverse relations as their own types.
        num_entities: N.
        seeds: ``[P, 2]`` aligned entity rows.
        dim: size of a label.
        hops: propagation steps.
        seed: seed of the random labels, so a run is reproducible.

    Returns:
        ``[N, 2 * hops * dim]``.
    """
    if hops < 1 or dim < 1:
        raise ValueError(f"hops and dim must be positive, got hops={hops}, dim={dim}")
    device = edge_index.device
    neighbours = _mean_rows(torch.unique(edge_index.flip(0), dim=1), (num_entities, num_entities))
    num_types = int(edge_type.max()) + 1 if edge_type.numel() else 1
    has_type = torch.stack([edge_index[1], edge_type])  # target entity has the edge's type
    type_of_entity = _mean_rows(has_type, (num_entities, num_types))
    entity_of_type = _mean_rows(has_type.flip(0), (num_types, num_entities))

    generator = torch.Generator().manual_seed(seed)
    labels = F.normalize(torch.randn(len(seeds), dim, generator=generator), dim=-1).to(device)
    rows = torch.cat([seeds[:, 0], seeds[:, 1]])
    values = torch.cat([labels, labels])
    current = torch.zeros(num_entities, dim, device=device)
    current[rows] = values
    by_neighbour, by_role = [], []
    for _ in range(hops):
        neighbour = F.normalize(torch.sparse.mm(neighbours, current), dim=-1)
        type_labels = F.normalize(torch.sparse.mm(entity_of_type, current), dim=-1)
        role = F.normalize(torch.sparse.mm(type_of_entity, type_labels), dim=-1)
        by_neighbour.append(neighbour)
        by_role.append(role)
        current = F.normalize(neighbour + role, dim=-1)
        current[rows] = values
    return F.normalize(torch.cat(by_neighbour + by_role, dim=1), dim=-1)


def with_propagation(joint: torch.Tensor, propagated: torch.Tensor | None,
                     weight: float) -> torch.Tensor:
    """The normalised ``joint`` embedding with ``weight`` times the propagated labels appended
    (``joint`` unchanged when there are none)."""
    if propagated is None:
        return joint
    return torch.cat([F.normalize(joint, dim=-1), weight * propagated.to(joint)], dim=1)


def _mean_rows(index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sparse ``size`` matrix with ones at ``index`` (``[2, K]``, duplicates counted), each
    row divided by its sum."""
    counts = torch.zeros(size[0], device=index.device).index_add_(
        0, index[0], torch.ones(index.shape[1], device=index.device))
    return torch.sparse_coo_tensor(index, 1.0 / counts[index[0]], size,
                                   check_invariants=False).coalesce()
