"""Training subcommands of ``mimea``: ``demo-data``, ``train`` and ``evaluate``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from model.checkpoint import CheckpointError
from model.config import ConfigError, MIMEAConfig, load_config
from model.finite import NonFiniteError
from training.data import DataError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add the training commands to the root ``mimea`` app."""
    app.command("demo-data")(demo_data)
    app.command("train")(train)
    app.command("evaluate")(evaluate)


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
    overwrite: Annotated[bool, Opt(help="replace an earlier demo pair in --out")] = False,
) -> None:
    """Write a synthetic multi-modal KG pair with a known gold alignment."""
    from training.synthetic import SyntheticSpec, write_synthetic_pair

    try:
        spec = SyntheticSpec(num_entities=entities, seed=seed, dangling=dangling)
        summary = write_synthetic_pair(out, spec, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {out}: {json.dumps(summary)}")


def train(
    data: Annotated[Path, Opt("--data", help="KG pair folder (MMEA layout)")],
    out: Annotated[Path, Opt("--out", help="checkpoint directory to write")],
    config: Annotated[Path | None, Opt(help="TOML/YAML/JSON configuration file")] = None,
    train_ratio: Annotated[float | None, Opt(help="share of gold pairs used as seeds")] = None,
    seed: Annotated[int | None, Opt(help="random seed (split and training)")] = None,
    epochs: Annotated[int | None, Opt(help="training epochs")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda")] = None,
    iterative: Annotated[bool | None, Opt(help="pseudo-label mutual nearest neighbours")] = None,
    visual: Annotated[Path | None, Opt(help="visual features (.npz, .npy + .ids, .pkl)")] = None,
    allow_pickle: Annotated[bool, Opt(help="allow reading a pickle of visual features")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="override: section.key=value")] = None,
    quiet: Annotated[bool, Opt(help="no progress bar")] = False,
    workers: Annotated[int, Opt(min=1, help="processes training data-parallel on this "
                                "machine (torch.distributed; see README for several)")] = 1,
) -> None:
    """Train MIMEA on a KG pair, evaluate it on held-out pairs and write a checkpoint."""
    import torch

    from training.pipeline import run_training

    overrides = list(set_ or [])
    for key, value in (("data.train_ratio", train_ratio), ("training.seed", seed),
                       ("training.epochs", epochs), ("training.device", device),
                       ("training.iterative", iterative)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = _load(config, overrides)
    if workers > 1:
        from training.distributed import launch, worker_args

        code = launch(workers, worker_args(data, out, config, overrides, visual=visual,
                                           allow_pickle=allow_pickle, quiet=quiet))
        raise typer.Exit(code=code)
    # The LogSumExp loss's softmax leaves most of its [B, N] gradient below float32's normal
    # range; denormal arithmetic is many times slower on CPUs, and these values do not matter.
    torch.set_flush_denormal(True)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = run_training(data, out, cfg, visual=visual, allow_pickle=allow_pickle,
                               progress=not quiet)
    except NonFiniteError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    except (DataError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    typer.echo(f"checkpoint written to {out} ({metrics['epochs']} epochs, "
               f"{metrics['wall_s']:.0f} s)")
    typer.echo(format_table(metrics["test"]))


def evaluate(
    checkpoint: Annotated[Path, Opt("--checkpoint", help="checkpoint directory")],
    part: Annotated[str, Opt(help="split part: test, valid or train")] = "test",
    as_json: Annotated[bool, Opt("--json", help="machine-readable output")] = False,
) -> None:
    """Evaluate a checkpoint's joint embeddings on its own held-out pairs."""
    from training.pipeline import evaluate_checkpoint

    try:
        report = evaluate_checkpoint(checkpoint, part=part)
    except (CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


def format_report(report: dict[str, Any]) -> str:
    """What ``mimea evaluate`` prints: the rankings' table and the served ranking's figures."""
    lines = [f"model {report['model_version']}, {report['pairs']} {report['part']} pairs, "
             f"headline ranking {report['headline']}", format_table(report["rankings"])]
    served = report.get("all_targets")
    if served:
        m = served["kg1_to_kg2"]
        lines.append(f"served ({served['ranking']}, every KG2 entity a candidate): Hits@1 "
                     f"{m['hits1']:.4f}, Hits@10 {m['hits10']:.4f}, MRR {m['mrr']:.4f}, "
                     f"MR {m['mr']:.1f}")
    lines.append(f"{sum(report['seconds'].values()):.1f} s (" + ", ".join(
        f"{name} {value:.1f} s" for name, value in report["seconds"].items()) + ")")
    return "\n".join(lines)


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
