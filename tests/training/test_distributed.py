"""Data-parallel training (training/distributed.py and the sharded steps of training/trainer.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from typer.testing import CliRunner

from mimea.model.checkpoint import load_checkpoint
from mimea.model.config import TrainingConfig, load_config
from mimea.model.objective import StepObjective
from mimea.training.pipeline import prepare, run_training
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair
from mimea.training.trainer import Shard, build_model, epoch_steps
from mimea_cli import app

# A short run that still learns the synthetic pair well (one batch of seed pairs per epoch).
OVERRIDES = ["model.hidden_dim=64", "training.epochs=30", "training.lr=0.01",
             "training.patience=100", "loss.negatives=256", "training.device=cpu"]


@pytest.mark.parametrize(("pairs", "processes", "steps_per_epoch"),
                         [(4050, 2, 0), (4050, 2, 4), (2049, 2, 0), (26_730, 3, 4), (5, 2, 0)])
def test_processes_share_every_step(pairs: int, processes: int, steps_per_epoch: int) -> None:
    # Every process takes the same number of steps (DistributedDataParallel pairs their
    # backward passes), has pairs in each, and every pair is trained on once per epoch; the
    # weights make the averaged gradient that of the step's pairs.
    config = TrainingConfig(steps_per_epoch=steps_per_epoch)
    plans = [epoch_steps(pairs, config, Shard(rank, processes)) for rank in range(processes)]
    assert len({len(plan) for plan in plans}) == 1
    covered = sorted(i for plan in plans for step in plan for part in step.batches
                     for i in range(pairs)[part])
    assert covered == list(range(pairs))
    for steps in zip(*plans, strict=True):
        assert all(step.batches for step in steps)
        sizes = [part.stop - part.start for step in steps for part in step.batches]
        weights = [w for step in steps for w in step.weights]
        assert sum(weights) == pytest.approx(processes)
        assert weights == pytest.approx([size * processes / sum(sizes) for size in sizes])


def test_one_process_keeps_its_own_values() -> None:
    assert Shard().from_first([(1, 2)]) == [(1, 2)]


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `mimea train --workers 2` trains data-parallel over gloo; rank 0 writes one checkpoint,
    # which loads and ranks the test pairs about as well as a single process's model.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one core each, and the variable restored
    pair = tmp_path / "pair"
    write_synthetic_pair(pair, SyntheticSpec(num_entities=600, seed=1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers
    try:
        single = run_training(pair, tmp_path / "single", load_config(None, OVERRIDES),
                              progress=False)
    finally:
        torch.set_num_threads(threads)
    args = ["train", "--data", str(pair), "--out", str(tmp_path / "parallel"), "--quiet",
            "--workers", "2"]
    for item in OVERRIDES:
        args += ["--set", item]
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 60
    checkpoint = load_checkpoint(tmp_path / "parallel")
    assert len(checkpoint.embeddings.joint) == len(checkpoint.entities.ids)
    headline = single["headline"]
    parallel_hits1 = checkpoint.metrics["test"][headline]["kg1_to_kg2"]["hits1"]
    single_hits1 = single["test"][headline]["kg1_to_kg2"]["hits1"]
    assert single_hits1 > 0.7
    assert abs(parallel_hits1 - single_hits1) < 0.05, (parallel_hits1, single_hits1)


def test_distributed_data_parallel_takes_the_shared_pass_gradient(
        tmp_path: Path, synthetic_dir: Path, tiny_overrides: list[str]) -> None:
    # A step of several batches takes each batch's gradient inside the forward pass and hands
    # DistributedDataParallel one backward pass to average: in a group of one process, the
    # gradient must be the step's own.
    config = load_config(None, [*tiny_overrides, "loss.ot_batch=16"])
    data = prepare(synthetic_dir, config)
    model = build_model(config, data.inputs).train()
    pairs = torch.as_tensor(data.split.train)
    batches = [(part[:, 0], part[:, 1]) for part in pairs.split(40)]
    weights = [len(left) / len(pairs) for left, _ in batches]
    objective = StepObjective(model, data.inputs, config.loss)

    def gradients(step: torch.nn.Module) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        step(batches, weights)[0].backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in model.parameters()]

    expected = gradients(objective)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0,
                            world_size=1)
    try:
        parallel = DistributedDataParallel(objective, find_unused_parameters=True)
        for _ in range(2):  # the reducer must be ready for the next step
            got = gradients(parallel)
    finally:
        dist.destroy_process_group()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
