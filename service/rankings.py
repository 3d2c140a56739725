"""The rankings the service answers with, and the per-entity terms each one needs.

A ranking scores a source s against a target t of the other KG as
``scale * cos(s, t) + row_bias[s] + col_bias[t]`` (``model.ranking.score_form``, the form the
evaluation ranks with). For one source, the scale and the row bias change no order: each
ranking is an inner-product search over the target vectors plus one key coordinate,
``col_bias / scale`` (cosine units; :meth:`Rankings.key_biases`); cosine needs none.

- cosine: always available;
- csls: r, each entity's mean cosine to its ``csls_k`` nearest entities of the other KG; the
  checkpoint's ``csls_r`` when it was computed with that k, else computed at load;
- sinkhorn: needs the checkpoint's plan terms (``csls_r`` and ``sinkhorn_potential``, from
  ``model.ranking.serving_terms``), and always uses that ``csls_r``, the one the plan was built on.

The reported Sinkhorn score is the log of the share of the source's plan mass on the target,
``log n + log u_s + log v_t + CSLS(s, t) / reg`` with n the size of the source's KG: the
ranking's score plus a constant per source, so it orders candidates as the ranking does.
``probability`` is that share, clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mimea.model.checkpoint import CheckpointError, EmbeddingTables
from mimea.model.config import EvalConfig
from mimea.model.ranking import RANKINGS, Ranking, score_form
from mimea.service.errors import ServiceError

DEFAULT_CSLS_K = 10  # for checkpoints that do not say which k they were evaluated with
MAX_CSLS_K = 100  # as Settings.csls_k: computing r at load costs a k-NN search per entity
DEFAULT_REG = EvalConfig.model_fields["sinkhorn_reg"].default
DEFAULT_HEADLINE: Ranking = "sinkhorn"


def _eval_section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("config", {}).get("eval", {})
    return section if isinstance(section, dict) else {}


def evaluated_csls_k(config: dict[str, Any]) -> int:
    """The CSLS k a checkpoint's metrics were computed with (``eval.csls_k`` of its training
    config), so the service ranks as the figures it reports; 10, CSLS's usual k, when the
    checkpoint names none. Any other value is refused: r costs a k-NN search per entity at
    load, so a huge k would stall start-up instead of failing it."""
    k = _eval_section(config).get("csls_k", DEFAULT_CSLS_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CSLS_K:
        raise CheckpointError(f"checkpoint config eval.csls_k must be an integer from 1 to "
                              f"{MAX_CSLS_K}, got {k!r:.40}; set MIMEA_CSLS_K to override it")
    return k


def headline(config: dict[str, Any]) -> Ranking:
    """The ranking of the checkpoint's reported figures: the Sinkhorn ranking, or the one an
    older checkpoint's config names (``eval.headline``, no longer a setting)."""
    value = _eval_section(config).get("headline", DEFAULT_HEADLINE)
    if value not in RANKINGS:
        raise CheckpointError(f"checkpoint config eval.headline must be one of "
                              f"{', '.join(RANKINGS)}, got {value!r:.40}")
    return value  # type: ignore[no-any-return]


def sinkhorn_reg(config: dict[str, Any]) -> float:
    """The entropy the checkpoint's plan was computed with (``eval.sinkhorn_reg``)."""
    reg = _eval_section(config).get("sinkhorn_reg", DEFAULT_REG)
    if isinstance(reg, bool) or not isinstance(reg, int | float) or not 0 < reg < math.inf:
        raise CheckpointError(f"checkpoint config eval.sinkhorn_reg must be a positive number, "
                              f"got {reg!r:.40}")
    return float(reg)


@dataclass(frozen=True)
class Plan:
    """The checkpoint's Sinkhorn plan over both whole KGs, as terms per entity row."""

    reg: float
    r: torch.Tensor  # [N] the CSLS terms the plan was built with
    potential: torch.Tensor  # [N] log u on KG1 rows, log v on KG2 rows


class Rankings:
    """The served rankings: their terms per entity row, the default, the key-bias columns."""

    def __init__(self, *, csls_k: int, r: torch.Tensor, plan: Plan | None, headline: Ranking,
                 kg_sizes: np.ndarray) -> None:
        self.csls_k = csls_k
        self.r = r
        self.plan = plan
        self.available: tuple[Ranking, ...] = RANKINGS if plan is not None else ("cosine", "csls")
        self.default: Ranking = headline if headline in self.available else "csls"
        self.biased = tuple(name for name in self.available if name != "cosine")
        # float64 copies for the reported scores (exp(CSLS / reg) amplifies rounding)
        self._r = self.r.double().numpy()
        self._log_n = np.log(kg_sizes.astype(np.float64))
        self._plan = (None if plan is None else
                      (plan.reg, plan.r.double().numpy(), plan.potential.double().numpy()))

    def column(self, ranking: Ranking) -> int | None:
        """The key-bias column of ``ranking`` (None for cosine)."""
        return self.biased.index(ranking) if ranking != "cosine" else None

    def check(self, ranking: Ranking) -> None:
        """422 when this checkpoint cannot rank by ``ranking``."""
        if ranking not in self.available:
            available = ", ".join(self.available)
            raise ServiceError(
                422, "metric_unavailable",
                f"metric {ranking!r} needs the Sinkhorn plan terms (csls_r and "
                f"sinkhorn_potential in embeddings.safetensors), which this checkpoint was "
                f"written without; it serves {available} (default {self.default}). Write the "
                f"checkpoint again with the current training to serve {ranking!r}",
                {"metric": ranking, "available": list(self.available)})

    def key_biases(self, rows: torch.Tensor) -> torch.Tensor:
        """``[len(rows), len(biased)]`` float32: the key bias (cosine units) of each entity
        of ``rows`` as a target of each biased ranking, centred per column (a constant changes
        no order, and small values keep a bfloat16 copy precise)."""
        columns = []
        for ranking in self.biased:
            plan = self.plan if ranking == "sinkhorn" else None
            r = plan.r if plan is not None else self.r
            form = score_form(ranking, r_query=r, r_key=r[rows],
                              log_key=plan.potential[rows] if plan is not None else None,
                              reg=plan.reg if plan is not None else None)
            assert form.col_bias is not None
            columns.append(form.col_bias / form.scale)
        biases = torch.stack(columns, dim=1).float()
        return biases - biases.mean(dim=0, keepdim=True)

    def pair_scores(self, source: np.ndarray, target: np.ndarray, cosine: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The reported scores of (source, target) row pairs with cosines ``cosine``: CSLS
        and, where the plan exists, the log plan share and the probability (else None)."""
        cos = cosine.astype(np.float64)
        csls = 2 * cos - self._r[source] - self._r[target]
        if self._plan is None:
            return csls, None, None
        share = self._log_n[source] + self._log_plan(source, target, cos)
        return csls, share, np.exp(np.minimum(share, 0.0))

    def plan_shares(self, source: np.ndarray, target: np.ndarray, cosine: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The log of each pair's share of its source's and of its target's plan mass (None
        without a plan)."""
        if self._plan is None:
            return None
        log_plan = self._log_plan(source, target, cosine.astype(np.float64))
        return self._log_n[source] + log_plan, self._log_n[target] + log_plan

    def _log_plan(self, source: np.ndarray, target: np.ndarray, cos: np.ndarray) -> np.ndarray:
        """``log P_st`` of the plan, up to the constant that the shares add back."""
        assert self._plan is not None
        reg, r, potential = self._plan
        return potential[source] + potential[target] + (2 * cos - r[source] - r[target]) / reg


def stored_csls_r(config: dict[str, Any], embeddings: EmbeddingTables,
                  csls_k: int) -> torch.Tensor | None:
    """The checkpoint's ``csls_r`` when it was computed with ``csls_k`` (its eval.csls_k)."""
    if embeddings.csls_r is None or _eval_section(config).get("csls_k", DEFAULT_CSLS_K) != csls_k:
        return None
    return embeddings.csls_r.float().clone()


def plan_of(config: dict[str, Any], embeddings: EmbeddingTables) -> Plan | None:
    """The checkpoint's plan terms, or None for a checkpoint written without them."""
    if embeddings.csls_r is None or embeddings.sinkhorn_potential is None:
        return None
    return Plan(reg=sinkhorn_reg(config), r=embeddings.csls_r.float().clone(),
                potential=embeddings.sinkhorn_potential.float().clone())
