"""Suggestions for an unknown identifier: a character-trigram index built once at load.

An unknown identifier must cost about what a known one does, or a client sending typos (or
garbage) at volume would starve everyone else. Each identifier's first ``PROBE_CHARS``
characters are cut into trigrams, each encoded exactly as one integer (three code points of at
most 21 bits), and the (trigram, identifier) pairs are kept sorted: a compact inverted index
built with numpy, not with a Python dict per trigram. A probe's shortlist is the identifiers
sharing most of its rarer trigrams, plus its neighbours in sorted order (typos after a long
common prefix, truncations); only that shortlist is compared with difflib, within a time
budget. Answers are memoised per probe, so a repeated unknown identifier costs a lookup.
"""

from __future__ import annotations

import bisect
import difflib
import time
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

PROBE_CHARS = 256  # characters of a probe (and of each identifier) that are compared
SUGGESTIONS = 5
CUTOFF = 0.6  # least difflib ratio of a suggestion
SHORTLIST = 8  # identifiers ranked by shared trigrams that difflib compares
NEIGHBOURS = 3  # identifiers on each side of the probe in sorted order that difflib compares
POSTINGS_BUDGET = 100_000  # identifier ids gathered per probe from its rarest trigrams
TIME_BUDGET_S = 0.003  # difflib time per probe, checked between comparisons
MEMO_SIZE = 4096  # probes whose suggestions are remembered


def _codes(text: str) -> np.ndarray:
    # surrogatepass: a JSON body may carry a lone surrogate escape (\\ud800)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"),
                         dtype=np.uint32).astype(np.uint64)


def _trigram_keys(codes: np.ndarray) -> np.ndarray:
    """One exact uint64 key per trigram of a code-point sequence."""
    return (codes[:-2] << np.uint64(42)) | (codes[1:-1] << np.uint64(21)) | codes[2:]


class Suggester:
    """Close identifiers for an unknown one, over a fixed set of identifiers."""

    def __init__(self, identifiers: Sequence[str]) -> None:
        self.sorted = sorted(identifiers)
        self._keys, self._starts, self._rows = self._build(self.sorted)
        self._grams = np.bincount(self._rows, minlength=len(self.sorted))  # per identifier
        self.suggest = lru_cache(maxsize=MEMO_SIZE)(self._suggest)

    @staticmethod
    def _build(idents: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted distinct trigram keys, their offsets into the postings, and the postings."""
        heads = [s[:PROBE_CHARS] for s in idents]
        lengths = np.fromiter((len(h) for h in heads), dtype=np.int64, count=len(heads))
        if int(lengths.sum()) < 3:
            return np.empty(0, np.uint64), np.zeros(1, np.int64), np.empty(0, np.int64)
        keys = _trigram_keys(_codes("".join(heads)))
        owner = np.repeat(np.arange(len(heads), dtype=np.int64), lengths)
        inside = owner[:-2] == owner[2:]  # a trigram lies within one identifier
        keys, rows = keys[inside], owner[:-2][inside]
        order = np.argsort(keys, kind="stable")  # rows stay ascending within a key
        keys, rows = keys[order], rows[order]
        first = np.ones(len(keys), dtype=bool)  # one posting per (trigram, identifier)
        first[1:] = (keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1])
        keys, rows = keys[first], rows[first]
        distinct, starts = np.unique(keys, return_index=True)
        return distinct, np.append(starts, len(keys)).astype(np.int64), rows

    def _suggest(self, probe: str) -> tuple[str, ...]:
        """Up to ``SUGGESTIONS`` identifiers most similar to ``probe``, most similar first."""
        probe = probe[:PROBE_CHARS]
        if not probe:
            return ()
        shortlist = self._by_trigrams(probe) | self._by_order(probe)
        ranked = self._rank(probe, sorted(shortlist))
        start = bisect.bisect_left(self.sorted, probe)
        for ident in self.sorted[start:start + SUGGESTIONS]:
            if ident.startswith(probe) and ident not in ranked:
                ranked.append(ident)  # identifiers that extend a truncated probe
        return tuple(ranked[:SUGGESTIONS])

    def _by_trigrams(self, probe: str) -> set[str]:
        """Identifiers most alike in the probe's rarer trigrams (Jaccard over those trigrams,
        so that of two identifiers holding them all, the one with fewer others wins)."""
        if len(probe) < 3 or not len(self._keys):
            return set()
        wanted = np.unique(_trigram_keys(_codes(probe)))
        at = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        at = at[self._keys[at] == wanted]
        if not len(at):
            return set()
        sizes = self._starts[at + 1] - self._starts[at]
        rarest = at[np.argsort(sizes, kind="stable")]
        taken = max(1, int(np.searchsorted(np.cumsum(np.sort(sizes)), POSTINGS_BUDGET,
                                           side="right")))
        rows = np.concatenate([self._rows[self._starts[i]:self._starts[i + 1]]
                               for i in rarest[:taken]])
        shared = np.bincount(rows, minlength=len(self.sorted))
        score = shared / (taken + self._grams - shared)
        top = np.argpartition(-score, min(SHORTLIST, len(score) - 1))[:SHORTLIST]
        return {self.sorted[int(r)] for r in top if shared[r] > 0}

    def _by_order(self, probe: str) -> set[str]:
        """The probe's neighbours in sorted order."""
        start = bisect.bisect_left(self.sorted, probe)
        return set(self.sorted[max(0, start - NEIGHBOURS):start + NEIGHBOURS])

    @staticmethod
    def _rank(probe: str, shortlist: list[str]) -> list[str]:
        """difflib's ratio, best first (ties by identifier), over a bounded time."""
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(probe)
        deadline = time.perf_counter() + TIME_BUDGET_S
        scored: list[tuple[float, str]] = []
        for ident in shortlist:
            matcher.set_seq1(ident[:PROBE_CHARS])
            if (matcher.real_quick_ratio() >= CUTOFF and matcher.quick_ratio() >= CUTOFF
                    and (ratio := matcher.ratio()) >= CUTOFF):
                scored.append((-ratio, ident))
            if time.perf_counter() > deadline:
                break
        return [ident for _, ident in sorted(scored)[:SUGGESTIONS]]
