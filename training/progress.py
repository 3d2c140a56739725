"""What a person sees while a command runs: the wall time of each phase, and step bars.

A long command is a sequence of phases (loading, features, training, evaluation, writing, ...).
:class:`Phases` times each one, logs a line when it ends (with the process's peak memory so
far) and sums them up in the command's last line, whose total runs from the start of the
process: the imports before a command starts (torch: seconds on a busy machine) are part of
what the person waited for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from mimea.training.memory import peak_rss_mb

logger = logging.getLogger(__name__)


def process_start() -> float:
    """The ``time.perf_counter()`` reading at which this process started (from ``/proc`` on
    Linux); the current reading where the start is unknown."""
    now = time.perf_counter()
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return now - max(age, 0.0)


class Phases:
    """Wall time of a command's phases, in the order they first ran.

    ``started`` is the ``perf_counter()`` reading the total counts from (by default, now).
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (added to its earlier time, if it ran before)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        logger.info("%s done in %.1f s (peak memory so far %.1f GB)", name, elapsed,
                    peak_rss_mb() / 1024)

    def total(self) -> float:
        """Seconds since ``started``."""
        return time.perf_counter() - self.started

    def report(self) -> dict[str, float]:
        """Every phase's seconds, the rest of the command's time as ``other`` (start-up,
        imports, printing) and the ``total``, rounded to 0.01 s."""
        total = self.total()
        parts = {**self.seconds, "other": max(total - sum(self.seconds.values()), 0.0)}
        return {name: round(value, 2) for name, value in {**parts, "total": total}.items()}

    def summary(self) -> str:
        """One line: the total, then each part."""
        return format_seconds(self.report())


def format_seconds(seconds: dict[str, float]) -> str:
    """``{phase: s, ..., "total": s}`` (:meth:`Phases.report`) as one line, the total first."""
    parts = {name: value for name, value in seconds.items() if name != "total"}
    return f"{seconds['total']:.1f} s in all: " + ", ".join(f"{name} {value:.1f} s"
                                                          for name, value in parts.items())


class StepBar:
    """A bar over the named steps of one phase, the step under way shown beside it; a context
    manager that closes the bar."""

    def __init__(self, description: str, steps: int, *, enabled: bool) -> None:
        self._bar = tqdm(total=steps, desc=description, unit="step", disable=not enabled,
                         leave=False)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Show ``name`` while the block runs, then advance the bar."""
        self._bar.set_postfix_str(name)
        yield
        self._bar.update()
