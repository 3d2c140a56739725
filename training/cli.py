"""Training subcommands of ``mimea``: ``demo-data``, ``train``, ``evaluate`` and ``report``.

``train`` and ``evaluate`` log each phase with its time (above the progress bars, which
``logging_redirect_tqdm`` keeps intact) and end with the command's total time and its parts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from mimea.model.checkpoint import Checkpoint, CheckpointError
from mimea.model.config import ConfigError, DataConfig, MIMEAConfig, TrainingConfig, load_config
from mimea.model.finite import NonFiniteError
from mimea.training.data import DataError
from mimea.training.progress import Phases, format_seconds, process_start

Opt = typer.Option
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def register(app: typer.Typer) -> None:
    """Add the training commands to the root ``mimea`` app."""
    app.command("demo-data")(demo_data)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("report")(report)


BAD_INPUT = 2  # bad data, configuration, checkpoint or usage: fix the input and rerun
RUNTIME_FAILURE = 1  # the input was accepted but the run failed (diverged, disk full, ...)


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    """Print one ``error:`` line (never a traceback) and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=code)


def demo_data(
    out: Annotated[Path, Opt("--out", help="folder to write the KG pair into")],
    entities: Annotated[int, Opt(help="entities in the latent world")] = 2000,
    seed: Annotated[int, Opt(help="random seed")] = 0,
    dangling: Annotated[float | None, Opt(
        help="share of each KG's entities with no counterpart in the other (default: 10% of "
             "the world in one KG only)")] = None,
    overwrite: Annotated[bool, Opt("--overwrite",
                                   help="replace an earlier demo pair in --out")] = False,
) -> None:
    """Write a synthetic multi-modal KG pair with a known gold alignment."""
    from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair

    try:
        spec = SyntheticSpec(num_entities=entities, seed=seed, dangling=dangling)
        summary = write_synthetic_pair(out, spec, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {out}: {json.dumps(summary)}")


def _configured(key: str, value: object) -> str:
    """How ``--help`` shows an option that defaults to the configuration's value."""
    return f"{key} of --config, else {json.dumps(value)}"


def train(
    data: Annotated[Path, Opt("--data", help="KG pair folder (MMEA layout)")],
    out: Annotated[Path, Opt("--out", help="checkpoint directory to write")],
    config: Annotated[Path | None, Opt(help="TOML/YAML/JSON configuration file",
                                       show_default="every key at its default")] = None,
    train_ratio: Annotated[float | None, Opt(
        help="share of gold pairs used as seeds",
        show_default=_configured("data.train_ratio", DataConfig().train_ratio))] = None,
    seed: Annotated[int | None, Opt(
        help="random seed (split and training)",
        show_default=_configured("training.seed", TrainingConfig().seed))] = None,
    epochs: Annotated[int | None, Opt(
        help="training epochs",
        show_default=_configured("training.epochs", TrainingConfig().epochs))] = None,
    device: Annotated[str | None, Opt(
        help="auto, cpu or cuda",
        show_default=_configured("training.device", TrainingConfig().device))] = None,
    label_rounds: Annotated[int | None, Opt(
        min=0, help="pseudo-label rounds that only re-seed the propagated labels",
        show_default=_configured("training.label_rounds", TrainingConfig().label_rounds))] = None,
    iterations: Annotated[int | None, Opt(
        min=0, help="pseudo-label rounds that train the network, after the label rounds",
        show_default=_configured("training.iterations", TrainingConfig().iterations))] = None,
    visual: Annotated[Path | None, Opt(help="visual features (.npz, .npy + .ids, .pkl)",
                                       show_default="the ones in --data, if any")] = None,
    allow_pickle: Annotated[bool, Opt("--allow-pickle",
                                      help="allow reading a pickle of visual features")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="override: section.key=value "
                                          "(repeatable)", show_default="none")] = None,
    quiet: Annotated[bool, Opt("--quiet", help="no progress bars or phase logs")] = False,
    as_json: Annotated[bool, Opt("--json", help="print the outcome as JSON")] = False,
    workers: Annotated[int, Opt(min=1, help="processes training data-parallel on this "
                                "machine (torch.distributed; see README for several)")] = 1,
) -> None:
    """Train MIMEA on a KG pair, evaluate it on held-out pairs and write a checkpoint."""
    phases = Phases(process_start())
    import torch

    from mimea.training.pipeline import train_checkpoint

    overrides = list(set_ or [])
    for key, value in (("data.train_ratio", train_ratio), ("training.seed", seed),
                       ("training.epochs", epochs), ("training.device", device),
                       ("training.label_rounds", label_rounds),
                       ("training.iterations", iterations)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = _load(config, overrides)
    if workers > 1:
        from mimea.training.distributed import launch, worker_args

        code = launch(workers, worker_args(data, out, config, overrides, visual=visual,
                                           allow_pickle=allow_pickle, quiet=quiet,
                                           as_json=as_json))
        raise typer.Exit(code=code)
    # The LogSumExp loss's softmax leaves most of its [B, N] gradient below float32's normal
    # range; denormal arithmetic is many times slower on CPUs, and these values do not matter.
    torch.set_flush_denormal(True)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT)
    try:
        with logging_redirect_tqdm():
            checkpoint = train_checkpoint(data, out, cfg, visual=visual,
                                          allow_pickle=allow_pickle, progress=not quiet,
                                          phases=phases)
    except NonFiniteError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    except (DataError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    assert checkpoint is not None  # a single process is rank 0
    typer.echo(training_outcome(checkpoint, out, phases, as_json=as_json))


def training_outcome(checkpoint: Checkpoint, out: Path, phases: Phases, *,
                     as_json: bool, processes: int = 1) -> str:
    """What ``mimea train`` prints: the checkpoint, its test figures and the time each phase
    took (the last line), or the same as one JSON object."""
    metrics = checkpoint.metrics
    pairs = {part: len(checkpoint.split.get(part) or []) for part in ("train", "valid", "test")}
    if as_json:
        return json.dumps({"checkpoint": str(out), "model_version": checkpoint.model_version,
                           "headline": metrics["headline"], "pairs": pairs,
                           "epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                           "rankings": metrics["test"], "all_targets": metrics["all_targets"],
                           "decisions": metrics.get("decisions"), "processes": processes,
                           "seconds": phases.report()}, indent=2)
    by = f" by {processes} processes" if processes > 1 else ""
    lines = [f"checkpoint written to {out}{by} ({metrics['epochs']} epochs, best "
             f"{metrics['best_epoch']}; model {checkpoint.model_version}; "
             f"{pairs['train']} training, {pairs['valid']} validation, {pairs['test']} test "
             f"pairs; headline ranking {metrics['headline']})",
             format_table(metrics["test"])]
    served = _served_line(metrics.get("all_targets"))
    if served:
        lines.append(served)
    lines.append(phases.summary())
    return "\n".join(lines)


def evaluate(
    checkpoint: Annotated[Path, Opt("--checkpoint", help="checkpoint directory")],
    part: Annotated[str, Opt(help="split part: test, valid or train")] = "test",
    as_json: Annotated[bool, Opt("--json", help="machine-readable output")] = False,
) -> None:
    """Evaluate a checkpoint's joint embeddings on its own held-out pairs."""
    phases = Phases(process_start())
    from mimea.training.pipeline import evaluate_checkpoint

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        result = evaluate_checkpoint(checkpoint, part=part, phases=phases)
    except (CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    typer.echo(json.dumps(result, indent=2) if as_json else format_report(result))


def report(
    checkpoint: Annotated[Path, Opt("--checkpoint", help="checkpoint directory")],
    out: Annotated[Path, Opt(help="HTML file to write")] = Path("report.html"),
) -> None:
    """Draw a checkpoint's training report again: one HTML page with its figures embedded."""
    from mimea.model.checkpoint import load_checkpoint
    from mimea.training.report import checkpoint_record, render_report

    if out.is_dir():
        raise _fail(f"--out {out} is a directory; name a file")
    try:
        page = render_report(checkpoint_record(load_checkpoint(checkpoint)))
    except CheckpointError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", RUNTIME_FAILURE) from exc
    typer.echo(f"wrote {out} ({len(page.encode('utf-8')) / 1024:.0f} KiB)")


def format_report(report: dict[str, Any]) -> str:
    """What ``mimea evaluate`` prints: the rankings' table and the served ranking's figures."""
    lines = [f"model {report['model_version']}, {report['pairs']} {report['part']} pairs, "
             f"headline ranking {report['headline']}", format_table(report["rankings"])]
    served = _served_line(report.get("all_targets"))
    if served:
        lines.append(served)
    lines.append(format_seconds(report["seconds"]))
    return "\n".join(lines)


def _served_line(served: dict[str, Any] | None) -> str | None:
    """The served ranking's KG1→KG2 figures (every KG2 entity a candidate), if measured."""
    if not served:
        return None
    m = served["kg1_to_kg2"]
    return (f"served ({served['ranking']}, every KG2 entity a candidate): Hits@1 "
            f"{m['hits1']:.4f}, Hits@10 {m['hits10']:.4f}, MRR {m['mrr']:.4f}, MR {m['mr']:.1f}")


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of ``{method: {direction: {metric: value}}}``."""
    lines = [f"{'ranking':<8} {'direction':<11} {'Hits@1':>7} {'Hits@10':>8} {'MRR':>6} "
             f"{'MR':>8}"]
    for method, directions in metrics.items():
        for direction, m in directions.items():
            lines.append(f"{method:<8} {direction:<11} {m['hits1']:>7.4f} {m['hits10']:>8.4f} "
                         f"{m['mrr']:>6.4f} {m['mr']:>8.1f}")
    return "\n".join(lines)


def _load(path: Path | None, overrides: list[str]) -> MIMEAConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
