"""The entity directory: who each embedding row is, and how a client's identifier finds it.

Rows follow the checkpoint's entity table. Each KG's rows keep their relative order, so a row's
position among its KG's rows (``local``) indexes that KG's vector table in the scoring core.
"""

from __future__ import annotations

import bisect

import numpy as np

from mimea.model.checkpoint import EntityTable
from mimea.service.suggest import PROBE_CHARS, Suggester

KGS = (1, 2)


class EntityDirectory:
    """Ids, URIs and KGs by row, and the lookups from a URI (exact, by prefix, suggestions)."""

    def __init__(self, entities: EntityTable) -> None:
        self.uris: list[str] = list(entities.uris)
        self.ids: list[int] = list(entities.ids)
        self.kgs = np.asarray(entities.kgs, dtype=np.int64)
        self.row_of: dict[str, int] = {uri: row for row, uri in enumerate(self.uris)}
        self.rows = {kg: np.flatnonzero(self.kgs == kg) for kg in KGS}
        self.local = np.empty(len(self.uris), dtype=np.int64)
        for kg in KGS:
            self.local[self.rows[kg]] = np.arange(len(self.rows[kg]))
        self.sizes = {kg: len(self.rows[kg]) for kg in KGS}
        self._sorted = {kg: sorted(self.uris[r] for r in self.rows[kg]) for kg in KGS}
        self.suggester = Suggester(self.uris)

    def __len__(self) -> int:
        return len(self.uris)

    def suggest(self, uri: str) -> list[str]:
        """Close identifiers for an unknown one (trigram shortlist, memoised; service.suggest)."""
        return list(self.suggester.suggest(uri[:PROBE_CHARS]))

    def find(self, kg: int | None, prefix: str, limit: int) -> tuple[list[int], bool]:
        """Rows of entities whose URI starts with ``prefix``, sorted by URI; and whether more."""
        uris = self.suggester.sorted if kg is None else self._sorted[kg]
        start = bisect.bisect_left(uris, prefix)
        found: list[int] = []
        for uri in uris[start:start + limit + 1]:
            if not uri.startswith(prefix):
                break
            found.append(self.row_of[uri])
        return found[:limit], len(found) > limit
