"""``mimea align``: the decided alignment of a checkpoint as a file, one entity per line.

Every KG1 entity comes first, in the entity table's order, then every KG2 entity left without
a match. Each line holds the entity (kg, id, uri), its decision (``match``, ``seed`` or
``no_match``), its counterpart, the probability of its pairing and its runner-up (see
``model.decisions.AlignmentRow``). Lines are written one at a time into a temporary sibling of
``--out``, renamed into place at the end: memory does not grow with the file, and a failed
run leaves no partial file. A checkpoint that stores no decisions is decided first (minutes).
Exit status: 2 for bad input, 1 for a run that failed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated

import typer

from mimea.model.checkpoint import CheckpointError, load_checkpoint
from mimea.model.decisions import FORMATS, Decisions, alignment_lines, stored_decisions
from mimea.training.cli import BAD_INPUT, RUNTIME_FAILURE, _fail
from mimea.training.data import DataError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add ``align`` to the root ``mimea`` app."""
    app.command("align")(align)


def align(
    checkpoint: Annotated[Path, Opt("--checkpoint", help="checkpoint directory")],
    out: Annotated[Path, Opt("--out", help="file to write the alignment to")],
    format_: Annotated[str, Opt("--format", help="tsv (with a header) or jsonl")] = "tsv",
    min_probability: Annotated[float | None, Opt(
        "--min-probability", help="probability a pairing needs to be a match (default: the "
        "checkpoint's threshold, chosen for 0.95 precision)")] = None,
    data: Annotated[Path | None, Opt(help="KG pair folder, only for a checkpoint that stores "
                                     "no decisions (default: the one it was trained on)")] = None,
    store: Annotated[bool, Opt("--store", help="also store the decisions in a checkpoint that "
                                "has none, so that the service serves them")] = False,
) -> None:
    """Write every entity's alignment decision: its counterpart with a probability, or none."""
    _check_options(out, format_, min_probability)
    try:
        loaded = load_checkpoint(checkpoint)
        decisions = stored_decisions(loaded)
        if decisions is None:
            decisions = _decide(loaded.path, data)
            if store:
                _store(loaded.path, decisions)
    except (CheckpointError, DataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    threshold = decisions.threshold if min_probability is None else min_probability
    lines = alignment_lines(decisions.tables, loaded.entities, threshold, format_)
    try:
        with _replacing(out) as handle:
            count = write_lines(handle, lines) - (format_ == "tsv")
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", RUNTIME_FAILURE) from exc
    typer.echo(f"wrote {count} decisions to {out} (threshold {threshold:.4f})")


def _check_options(out: Path, format_: str, min_probability: float | None) -> None:
    """Refuse bad options before anything is loaded."""
    if format_ not in FORMATS:
        raise _fail(f"--format must be one of {', '.join(FORMATS)}, not {format_!r}", BAD_INPUT)
    if min_probability is not None and not 0.0 <= min_probability <= 1.0:
        raise _fail(f"--min-probability must be in [0, 1], got {min_probability}", BAD_INPUT)
    if out.is_dir():
        raise _fail(f"--out {out} is a directory; name a file", BAD_INPUT)
    if not out.parent.is_dir():
        raise _fail(f"--out {out}: the folder {out.parent} does not exist", BAD_INPUT)


def _decide(checkpoint: Path, data: Path | None) -> Decisions:
    from mimea.training.calibration import decide_checkpoint

    typer.echo(f"{checkpoint} stores no decisions; deciding them now", err=True)
    return decide_checkpoint(checkpoint, data_dir=data)


def _store(checkpoint: Path, decisions: Decisions) -> None:
    from mimea.training.calibration import write_decisions

    version = write_decisions(checkpoint, decisions)
    typer.echo(f"stored the decisions in {checkpoint} (model version {version})", err=True)


@contextmanager
def _replacing(path: Path) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path`` that replaces ``path`` on success,
    with the mode a new file gets (``mkstemp`` makes it readable by its owner alone)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_lines(handle: IO[str], lines: Iterator[str]) -> int:
    """Write ``lines`` as they come; return how many were written."""
    count = 0
    for line in lines:
        handle.write(line)
        count += 1
    return count
