"""The answers of the candidates and align routes, built from the scoring core's arrays.

Plain dicts, serialised once by the serving layer; ``service/schemas.py`` documents them. The
arrays of a whole batch become Python lists once, not value by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mimea.model.decisions import AlignmentRow
from mimea.model.ranking import RANKINGS, Ranking
from mimea.service.directory import EntityDirectory
from mimea.service.scoring import ScoredPairs


def _listed(values: np.ndarray | None, n: int) -> list[Any]:
    return values.tolist() if values is not None else [None] * n


def _columns(pairs: ScoredPairs, modalities: list[str]) -> dict[str, list[Any]]:
    """The pairs' values as lists: one per score, and the modality breakdown per pair."""
    n = len(pairs.source)
    similarity = [{m: value if present else None
                   for m, value, present in zip(modalities, values, flags, strict=True)}
                  for values, flags in zip(pairs.modality.tolist(), pairs.present.tolist(),
                                           strict=True)]
    return {"target": pairs.target.tolist(), "cosine": pairs.cosine.tolist(),
            "csls": pairs.csls.tolist(), "sinkhorn": _listed(pairs.sinkhorn, n),
            "probability": _listed(pairs.probability, n), "similarity": similarity}


def candidates_answers(directory: EntityDirectory, modalities: list[str], ranking: Ranking,
                       sources: Sequence[int], ks: Sequence[int], counts: Sequence[int],
                       pairs: ScoredPairs) -> list[dict[str, Any]]:
    """One answer per source: its ``counts[i]`` candidates are the next pairs, best first."""
    col = _columns(pairs, modalities)
    score, uris = col[ranking], directory.uris
    answers = []
    lo = 0
    for source, k, count in zip(sources, ks, counts, strict=True):
        kg = int(directory.kgs[source])
        candidates = [{"entity": uris[col["target"][i]], "kg": 3 - kg, "rank": i - lo + 1,
                       "score": score[i], "cosine": col["cosine"][i], "csls": col["csls"][i],
                       "probability": col["probability"][i],
                       "modality_similarity": col["similarity"][i]}
                      for i in range(lo, lo + count)]
        answers.append({"entity": uris[source], "kg": kg, "target_kg": 3 - kg, "k": k,
                        "metric": ranking, "candidates": candidates})
        lo += count
    return answers


def _ranks(ranks: dict[Ranking, np.ndarray], n: int) -> list[dict[str, int | None]]:
    """Per pair, the rank under every ranking (None where it is not served)."""
    listed = {name: _listed(ranks.get(name), n) for name in RANKINGS}
    return [{name: listed[name][i] for name in RANKINGS} for i in range(n)]


def align_answers(directory: EntityDirectory, modalities: list[str], mask: np.ndarray,
                  weights: np.ndarray, default: Ranking, pairs: ScoredPairs,
                  target_rank: dict[Ranking, np.ndarray],
                  source_rank: dict[Ranking, np.ndarray],
                  match_probability: np.ndarray | None) -> list[dict[str, Any]]:
    """One answer per (source, target) pair, with both directions' ranks and, where the
    checkpoint stores decisions, the pair's calibrated match probability."""
    n = len(pairs.source)
    col = _columns(pairs, modalities)
    matching = _listed(match_probability, n)
    to_target, to_source = _ranks(target_rank, n), _ranks(source_rank, n)
    answers = []
    for i, (source, target) in enumerate(zip(pairs.source.tolist(), col["target"],
                                             strict=True)):
        has_s, has_t = mask[source].tolist(), mask[target].tolist()
        answers.append({
            "source": {"entity": directory.uris[source], "kg": int(directory.kgs[source])},
            "target": {"entity": directory.uris[target], "kg": int(directory.kgs[target])},
            "cosine": col["cosine"][i], "csls": col["csls"][i], "sinkhorn": col["sinkhorn"][i],
            "probability": col["probability"][i], "match_probability": matching[i],
            "target_rank": to_target[i], "source_rank": to_source[i],
            "mutual_nearest": to_target[i][default] == 1 and to_source[i][default] == 1,
            "modalities": {
                "similarity": col["similarity"][i],
                "source_weights": dict(zip(modalities, weights[source].tolist(), strict=True)),
                "target_weights": dict(zip(modalities, weights[target].tolist(), strict=True)),
                "source_missing": [m for m, has in zip(modalities, has_s, strict=True)
                                   if not has],
                "target_missing": [m for m, has in zip(modalities, has_t, strict=True)
                                   if not has],
            },
        })
    return answers


def alignment_answers(directory: EntityDirectory, modalities: list[str],
                      rows: Sequence[AlignmentRow], thresholds: Sequence[float],
                      compared: np.ndarray, modality: np.ndarray,
                      present: np.ndarray) -> list[dict[str, Any]]:
    """One answer per decided entity; ``modality``/``present`` hold a row for each entity
    that was compared with another (``compared >= 0``), in order."""
    uris = directory.uris
    similarity = iter(zip(modality.tolist(), present.tolist(), strict=True))
    answers = []
    for row, threshold, other in zip(rows, thresholds, compared.tolist(), strict=True):
        values, flags = (next(similarity) if other >= 0
                         else ([0.0] * len(modalities), [False] * len(modalities)))
        answers.append({
            "entity": uris[row.row], "kg": int(directory.kgs[row.row]),
            "decision": row.decision,
            "counterpart": None if row.counterpart is None else uris[row.counterpart],
            "probability": row.probability, "threshold": threshold,
            "runner_up": None if row.runner_up is None else uris[row.runner_up],
            "compared_with": uris[other] if other >= 0 else None,
            "modality_similarity": {m: value if has else None for m, value, has
                                    in zip(modalities, values, flags, strict=True)}})
    return answers
