"""The decided alignment a checkpoint stores (``model.decisions``), as the service answers it.

Three answers: each entity's decision at a threshold (the checkpoint's default, or one the
request names), the calibrated match probability of any (source, target) pair, and the whole
alignment as JSON Lines, the lines ``mimea align --format jsonl`` writes.

The probability of a pair that the decoder paired is the stored one, so ``POST /align`` and
``GET /alignment/{entity}`` agree. Any other pair is scored by the same calibration from what
the service holds: the pair's shares of its two entities' mass in the served plan (over both
whole KGs) as log-odds, and its agreement in each modality and in the propagated labels. The
decoder kept one pairing per entity, so such a pair's probability is at most what the
decoder's pairings of its two entities leave (``1 - p``): the answers stay those of a
one-to-one alignment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mimea.model.checkpoint import Checkpoint, EntityTable
from mimea.model.config import saved_config
from mimea.model.decisions import (
    AGREEMENT_PREFIX,
    PROPAGATED,
    AlignmentRow,
    Decisions,
    alignment_rows,
    decision_of,
    row_record,
    share_log_odds,
    stored_decisions,
)

LINES_PER_CHUNK = 512  # a chunk per thread hop of the streamed response, not a line


@dataclass(frozen=True)
class PairEvidence:
    """What the calibration reads of (source, target) row pairs, each array ``[P]``:
    the log of each pair's share of its KG1 entity's and of its KG2 entity's plan mass, and
    per agreement table the cosine of the pair (NaN where either entity lacks it)."""

    kg1_share: np.ndarray
    kg2_share: np.ndarray
    agreement: dict[str, np.ndarray]


class ServedAlignment:
    """A checkpoint's decisions, its calibration and what its features need."""

    def __init__(self, decisions: Decisions, entities: EntityTable,
                 propagated_width: int) -> None:
        self.decisions = decisions
        self.threshold = decisions.threshold
        self.propagated_width = propagated_width
        self._entities = entities
        self._kgs = torch.as_tensor(entities.kgs)
        tables = decisions.tables
        self._counterpart = tables.counterpart.numpy()
        self._probability = tables.probability.numpy().astype(np.float64)
        self._seed = tables.seed.numpy()

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> ServedAlignment | None:
        """The served decisions of ``checkpoint``; None for one written without them."""
        decisions = stored_decisions(checkpoint)
        if decisions is None:
            return None
        raw = checkpoint.config.get("config")
        width = saved_config(raw).model.propagation_width if isinstance(raw, dict) else 0
        return cls(decisions, checkpoint.entities, width)

    def decision(self, row: int, threshold: float | None) -> AlignmentRow:
        """The entity's decision at ``threshold`` (None: the checkpoint's default)."""
        return decision_of(self.decisions.tables, row, self.threshold_for(threshold))

    def threshold_for(self, threshold: float | None) -> float:
        """The threshold a request applies: its own, else the checkpoint's default."""
        return self.threshold if threshold is None else threshold

    def pair_probability(self, source: np.ndarray, target: np.ndarray,
                         evidence: PairEvidence) -> np.ndarray:
        """``[P]`` calibrated match probability of (source, target) row pairs: the stored one
        for a pair the decoder paired (1 for a seed pair), else the calibration's, bounded by
        what the two entities' own pairings leave."""
        calibration = self.decisions.calibration
        features = {"plan_row": share_log_odds(torch.from_numpy(evidence.kg1_share)),
                    "plan_col": share_log_odds(torch.from_numpy(evidence.kg2_share)),
                    **{AGREEMENT_PREFIX + name: torch.from_numpy(np.asarray(values, np.float64))
                       for name, values in evidence.agreement.items()}}
        for name in calibration.names:  # an agreement this service cannot compute: unknown
            features.setdefault(name, torch.full((len(source),), math.nan, dtype=torch.float64))
        scored = calibration.probability(features).double().numpy()
        paired = self._counterpart[source] == target
        bound = np.minimum(self._left_over(source), self._left_over(target))
        return np.where(paired, self._probability[source], np.minimum(scored, bound))

    def _left_over(self, rows: np.ndarray) -> np.ndarray:
        """``1 - p`` of each entity's own pairing (0 for a seed, 1 without a pairing)."""
        paired = self._counterpart[rows] >= 0
        return np.where(self._seed[rows], 0.0,
                        np.where(paired, 1.0 - self._probability[rows], 1.0))

    def lines(self, threshold: float | None, decisions: Sequence[str] | None = None,
              kg: int | None = None) -> Iterator[bytes]:
        """The alignment as JSON Lines (``mimea align``'s order and fields), lazily, in chunks
        of :data:`LINES_PER_CHUNK` lines; only the entities with one of ``decisions`` and of KG
        ``kg`` when given."""
        wanted = set(decisions) if decisions else None
        kgs = self._entities.kgs
        chunk: list[str] = []
        for row in alignment_rows(self.decisions.tables, self._kgs, self.threshold_for(threshold)):
            if (wanted is None or row.decision in wanted) and (kg is None or kgs[row.row] == kg):
                chunk.append(json.dumps(row_record(row, self._entities), ensure_ascii=False))
                if len(chunk) == LINES_PER_CHUNK:
                    yield ("\n".join(chunk) + "\n").encode()
                    chunk = []
        if chunk:
            yield ("\n".join(chunk) + "\n").encode()


def propagated_cosine(sources: torch.Tensor, targets: torch.Tensor,
                      width: int) -> dict[str, np.ndarray]:
    """``{PROPAGATED: [P]}``, the cosine of the last ``width`` columns of the pairs' joint
    vectors (NaN where either has no label there); empty when ``width`` is 0."""
    if width == 0:
        return {}
    a, b = sources[:, -width:].double(), targets[:, -width:].double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(1e-300)
    return {PROPAGATED: torch.where((na > 0) & (nb > 0), cos, math.nan).numpy()}
