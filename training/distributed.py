"""Data-parallel training: several processes train one model with ``torch.distributed``.

``mimea train --workers N`` starts N processes on this machine through ``torch.distributed.run``
(torchrun); across machines, torchrun starts this module on each of them (README). Every
process loads the data and runs the structure encoder over the whole graph; each one takes its
share of every step's seed pairs (``training.trainer.epoch_steps``), and
``DistributedDataParallel`` averages the gradients: gloo between CPU processes, NCCL between
GPUs. Rank 0 validates, evaluates and writes the checkpoint while the others wait.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import torch
import torch.distributed as dist
import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from mimea.model.checkpoint import CheckpointError
from mimea.model.config import ConfigError, load_config
from mimea.model.device import resolve_device
from mimea.model.finite import NonFiniteError
from mimea.training.cli import BAD_INPUT, LOG_FORMAT, RUNTIME_FAILURE, _fail, training_outcome
from mimea.training.data import DataError
from mimea.training.progress import Phases, process_start
from mimea.training.trainer import Shard

# Rank 0 evaluates and writes the checkpoint (minutes on a large pair) while the other ranks
# wait at a barrier; the process group's default 30-minute timeout could end the run there.
WAIT = timedelta(hours=6)

Opt = typer.Option
app = typer.Typer(add_completion=False)


def worker_args(data: Path, out: Path, config: Path | None, overrides: list[str], *,
                visual: Path | None, allow_pickle: bool, quiet: bool,
                as_json: bool) -> list[str]:
    """The command line of this module that trains as ``mimea train`` was asked to."""
    args = ["--data", str(data), "--out", str(out)]
    if config is not None:
        args += ["--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    if visual is not None:
        args += ["--visual", str(visual)]
    return (args + ["--allow-pickle"] * allow_pickle + ["--quiet"] * quiet
            + ["--json"] * as_json)


def launch(workers: int, args: list[str]) -> int:
    """Run this module in ``workers`` processes on this machine (torchrun with a standalone
    rendezvous), the cores shared among them unless ``OMP_NUM_THREADS`` says otherwise;
    returns the exit status of the first process that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
    launcher = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={workers}", "--module", __name__, *args])
    try:
        run(launcher)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode or RUNTIME_FAILURE
    return 0


@app.command()
def main(
    data: Annotated[Path, Opt("--data", help="KG pair folder (MMEA layout)")],
    out: Annotated[Path, Opt("--out", help="checkpoint directory to write (rank 0)")],
    config: Annotated[Path | None, Opt(help="TOML/YAML/JSON configuration file")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="override: section.key=value")] = None,
    visual: Annotated[Path | None, Opt(help="visual features (.npz, .npy + .ids, .pkl)")] = None,
    allow_pickle: Annotated[bool, Opt("--allow-pickle",
                                      help="allow reading a pickle of visual features")] = False,
    quiet: Annotated[bool, Opt("--quiet", help="no progress bars or phase logs")] = False,
    as_json: Annotated[bool, Opt("--json", help="print the outcome as JSON")] = False,
) -> None:
    """One process of data-parallel training (torchrun sets its rank and the rendezvous)."""
    phases = Phases(process_start())
    from mimea.training.pipeline import train_checkpoint

    torch.set_flush_denormal(True)  # see training.cli.train
    try:
        cfg = load_config(config, list(set_ or []))
        device = resolve_device(cfg.training.device)
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    shard = join_group(device)
    logging.basicConfig(level=logging.INFO if shard.rank == 0 and not quiet else logging.WARNING,
                        format=LOG_FORMAT.replace("%(name)s", f"rank {shard.rank} %(name)s"))
    try:
        with logging_redirect_tqdm():
            checkpoint = train_checkpoint(data, out, cfg, visual=visual,
                                          allow_pickle=allow_pickle,
                                          progress=shard.rank == 0 and not quiet, shard=shard,
                                          phases=phases)
        dist.barrier()
    except NonFiniteError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    except (DataError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc), BAD_INPUT) from exc
    except OSError as exc:
        raise _fail(str(exc), RUNTIME_FAILURE) from exc
    finally:
        dist.destroy_process_group()
    if checkpoint is not None:
        typer.echo(training_outcome(checkpoint, out, phases, as_json=as_json,
                                    processes=shard.size))


def join_group(device: torch.device) -> Shard:
    """Join the process group torchrun described (NCCL on GPUs, one per process; gloo on
    CPUs) and return this process's shard."""
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=WAIT)
    return Shard(rank=dist.get_rank(), size=dist.get_world_size())


if __name__ == "__main__":
    app()
