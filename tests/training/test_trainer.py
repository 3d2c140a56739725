"""The training loop (training/trainer.py)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mimea.model.config import MIMEAConfig, TrainingConfig, load_config
from mimea.model.device import resolve_device
from mimea.model.finite import NonFiniteError
from mimea.model.mimea import MIMEAOutput
from mimea.model.objective import StepObjective, batch_terms, plan_rows
from mimea.training import trainer as trainer_module
from mimea.training.pipeline import PreparedData, prepare
from mimea.training.trainer import TrainResult, train_model


def _train(data: PreparedData, config: MIMEAConfig, **kwargs: object) -> TrainResult:
    return train_model(config, data.inputs, torch.as_tensor(data.split.train),
                       torch.as_tensor(data.split.valid), device=torch.device("cpu"),
                       progress=False, **kwargs)  # type: ignore[arg-type]


def _config(tiny_overrides: list[str], *extra: str) -> MIMEAConfig:
    return load_config(None, [*tiny_overrides, *extra])


def test_on_epoch_sees_every_epoch(synthetic_dir: Path, tiny_overrides: list[str]) -> None:
    config = _config(tiny_overrides, "training.epochs=4", "training.valid_every=2")
    records: list[dict[str, float]] = []
    result = _train(prepare(synthetic_dir, config), config, on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1.0, 2.0, 3.0, 4.0]
    assert records == result.history
    assert ["valid_hits1" in r for r in records] == [False, True, False, True]
    assert all(("valid_mrr" in r) == ("valid_hits1" in r) for r in records)
    assert {"joint", "total"} <= set(records[0])


def test_bar_shows_no_validation_figure_before_one_ran(synthetic_dir: Path,
                                                      tiny_overrides: list[str],
                                                      capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mimea.training.trainer")
    config = _config(tiny_overrides, "training.epochs=4", "training.valid_every=3")
    data = prepare(synthetic_dir, config)
    capsys.readouterr()
    train_model(config, data.inputs, torch.as_tensor(data.split.train),
                torch.as_tensor(data.split.valid), device=torch.device("cpu"), progress=True)
    frames = [f for f in capsys.readouterr().err.split("\r") if "training, epoch" in f]
    first_validation = next(i for i, f in enumerate(frames) if "validating" in f)
    assert "epoch 3/4" in frames[first_validation]
    assert not any("valid" in f for f in frames[:first_validation])
    assert any("valid Hits@1" in f and "best" in f for f in frames[first_validation:])
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 3: valid Hits@1 ") and "validated in" in m for m in messages)
    assert any(m.startswith("training: 4 epochs in ") for m in messages)


def test_without_validation_pairs_trains_every_epoch(synthetic_dir: Path,
                                                    tiny_overrides: list[str]) -> None:
    # With no validation pairs nothing can select an earlier state: the run must neither stop
    # early nor hand back the state of its first validation.
    config = _config(tiny_overrides, "data.valid_fraction=0.0", "training.epochs=12",
                     "training.valid_every=2", "training.patience=2")
    data = prepare(synthetic_dir, config)
    assert len(data.split.valid) == 0
    result = _train(data, config)
    assert result.epochs == 12
    assert result.best_epoch == 12


def _train_iterative(synthetic_dir: Path, tiny_overrides: list[str], iterations: int,
                     iteration_epochs: int,
                     extra: list[str] | None = None) -> tuple[PreparedData, TrainResult]:
    """Pseudo-labelling (two label rounds unless ``extra`` says otherwise, then
    ``iterations`` network rounds) with every entity of each KG eligible for pseudo-labels."""
    config = _config(tiny_overrides, "training.label_rounds=2",
                     f"training.iterations={iterations}",
                     f"training.iteration_epochs={iteration_epochs}", "training.patience=10",
                     *(extra or []))
    data = prepare(synthetic_dir, config)
    num_kg1 = data.data.num_kg1
    rows = torch.arange(data.inputs.num_entities)
    return data, _train(data, config, candidate_rows=(rows[:num_kg1], rows[num_kg1:]))


def _record_fits(monkeypatch: pytest.MonkeyPatch) -> list[set[tuple[int, int]]]:
    """Patch the trainer so that every fit records the pairs it trains on."""
    trained_on: list[set[tuple[int, int]]] = []
    original_fit = trainer_module._Run.fit

    def recording_fit(self: trainer_module._Run, pairs: torch.Tensor, epochs: int) -> None:
        trained_on.append({tuple(p) for p in pairs.tolist()})
        original_fit(self, pairs, epochs)

    monkeypatch.setattr(trainer_module._Run, "fit", recording_fit)
    return trained_on


def test_iterative_training_runs_extra_rounds(synthetic_dir: Path,
                                              tiny_overrides: list[str]) -> None:
    data, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=2,
                                    iteration_epochs=2)
    assert result.epochs == 2 + 2 * 2
    assert result.pseudo_pairs > 0
    assert result.base is not None and result.base.epochs == 2
    assert result.base.joint.shape[0] == data.inputs.num_entities


def test_first_round_already_trains_on_pseudo_labels(synthetic_dir: Path,
                                                    tiny_overrides: list[str]) -> None:
    # The base training's last and selected states are two snapshots: pairs mutual in both
    # persist, so a single round has pseudo-labels to train on.
    _, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=1,
                                 iteration_epochs=1)
    assert result.pseudo_pairs > 0


def test_pseudo_labels_persist_between_the_ended_and_the_best_state(
        synthetic_dir: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Each round asks for the mutual pairs of the state the last fit ended on, then of the
    # best state, and trains on the pairs found in both; even when the best state is the same
    # as the round before, the ended state differs, so not every mutual pair gets through.
    found = iter([[(0, 50), (1, 51)], [(1, 51), (2, 52)],   # round 1: (1, 51) persists
                  [(2, 52), (3, 53)], [(3, 53)]])            # round 2: (3, 53) persists

    def fake_mutual(*_: object, **__: object) -> torch.Tensor:
        return torch.tensor(next(found))

    monkeypatch.setattr(trainer_module, "mutual_plan_pairs", fake_mutual)
    trained_on = _record_fits(monkeypatch)
    _, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=2,
                                 iteration_epochs=1, extra=["training.label_rounds=0"])
    seeds = trained_on[0]
    assert [pairs - seeds for pairs in trained_on[1:]] == [{(1, 51)}, {(3, 53)}]
    assert result.pseudo_pairs == 1


def test_pseudo_labels_are_plan_picks_at_their_own_entropy(
        synthetic_dir: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Every state is decoded by the Sinkhorn plan at training.pseudo_label_reg (not the
    # ranking's eval.sinkhorn_reg), and the round trains on exactly what comes back.
    asked: list[object] = []

    def fake_mutual(*_: object, sinkhorn_reg: float, **__: object) -> torch.Tensor:
        asked.append(sinkhorn_reg)
        return torch.tensor([(2, 52)])

    monkeypatch.setattr(trainer_module, "mutual_plan_pairs", fake_mutual)
    trained_on = _record_fits(monkeypatch)
    _, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=1,
                                 iteration_epochs=1,
                                 extra=["training.pseudo_label_reg=0.007",
                                        "training.label_rounds=0"])
    assert asked == [0.007, 0.007]  # the ended and the best state
    assert trained_on[1] - trained_on[0] == {(2, 52)}
    assert result.pseudo_pairs == 1


def test_label_rounds_reseed_the_labels_before_the_first_network_round(
        synthetic_dir: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Each label round decodes the base model's joint embedding (labels included) and its
    # pairs re-seed the labels, with no training; the first network round decodes with the
    # labels of the last label round.
    found = iter([[(3, 53), (4, 54)], [(4, 54)],              # label rounds 1 and 2
                  [(0, 50), (1, 51)], [(1, 51), (2, 52)]])    # the network round: (1, 51)
    decoded: list[torch.Tensor] = []

    def fake_mutual(joint: torch.Tensor, *_: object, **__: object) -> torch.Tensor:
        decoded.append(joint)
        return torch.tensor(next(found))

    monkeypatch.setattr(trainer_module, "mutual_plan_pairs", fake_mutual)
    trained_on = _record_fits(monkeypatch)
    data, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=1,
                                    iteration_epochs=1, extra=["training.label_rounds=2"])
    assert len(trained_on) == 2  # the base run and the network round; label rounds do not fit
    assert trained_on[1] - trained_on[0] == {(1, 51)}
    assert result.pseudo_pairs == 1
    config = _config(tiny_overrides)
    train = torch.as_tensor(data.split.train)
    labels_of = {name: config.model.propagation_weight * trainer_module.propagate(
        config, data.inputs, seeds) for name, seeds in [
            ("train", train), ("round 1", torch.cat([train, torch.tensor([[3, 53], [4, 54]])])),
            ("round 2", torch.cat([train, torch.tensor([[4, 54]])]))]}
    width = labels_of["train"].shape[1]
    used = [next(name for name, labels in labels_of.items()
                 if torch.equal(joint[:, -width:], labels)) for joint in decoded]
    assert used == ["train", "round 1", "round 2", "round 2"]
    final_seeds = torch.cat([train, torch.tensor([[1, 51]]), torch.as_tensor(data.split.valid)])
    expected = trainer_module.propagate(config, data.inputs, final_seeds)
    assert result.propagated is not None and torch.equal(result.propagated, expected)


def test_label_rounds_alone_make_a_fast_iterative_run(synthetic_dir: Path,
                                                      tiny_overrides: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # With no network round the base run is the only fit; the label rounds still find
    # pseudo-labels, and the base stage is still reported.
    trained_on = _record_fits(monkeypatch)
    data, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=0,
                                    iteration_epochs=1, extra=["training.label_rounds=1"])
    assert len(trained_on) == 1
    assert result.pseudo_pairs > 0
    assert result.base is not None and result.base.joint.shape[0] == data.inputs.num_entities


def test_every_fit_propagates_the_pairs_it_trains_on(
        synthetic_dir: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Pseudo-labels seed the propagation as they seed the fit. Validation ranks with the
    # learned embedding alone: the labels would lift every epoch alike.
    checked: list[int] = []
    original_fit = trainer_module._Run.fit

    def checking_fit(self: trainer_module._Run, pairs: torch.Tensor, epochs: int) -> None:
        original_fit(self, pairs, epochs)
        expected = trainer_module.propagate(self.config, self.inputs, pairs)
        assert self.propagated is not None and torch.equal(self.propagated, expected)
        checked.append(len(pairs))

    validated_dims: list[int] = []
    original_validation = trainer_module.validation_metrics

    def recording_validation(joint: torch.Tensor, *args: object,
                             **kwargs: object) -> dict[str, float]:
        validated_dims.append(joint.shape[1])
        return original_validation(joint, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module._Run, "fit", checking_fit)
    monkeypatch.setattr(trainer_module, "validation_metrics", recording_validation)
    data, result = _train_iterative(synthetic_dir, tiny_overrides, iterations=2,
                                    iteration_epochs=2)
    assert len(checked) == 3 and checked[1] > checked[0]
    config = result.model.config
    learned = trainer_module.infer(result.model, data.inputs).joint
    assert result.joint(learned).shape[1] == learned.shape[1] + \
        config.propagation_width
    assert set(validated_dims) == {learned.shape[1]}
    assert result.base is not None and result.base.joint.shape[1] == result.joint(learned).shape[1]


def test_training_without_pseudo_labels_has_no_base_stage(synthetic_dir: Path,
                                                          tiny_overrides: list[str]) -> None:
    config = _config(tiny_overrides)
    assert _train(prepare(synthetic_dir, config), config).base is None


@pytest.mark.parametrize("rounds", ["training.label_rounds=1", "training.iterations=1"])
def test_pseudo_labelling_needs_candidates(synthetic_dir: Path, tiny_overrides: list[str],
                                           rounds: str) -> None:
    config = _config(tiny_overrides, rounds)
    with pytest.raises(ValueError, match="candidate_rows"):
        _train(prepare(synthetic_dir, config), config)


@pytest.mark.parametrize("name", ["cpu", "auto"])
def test_resolve_device(name: str) -> None:
    expected = "cuda" if name == "auto" and torch.cuda.is_available() else "cpu"
    assert resolve_device(name).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_rejected() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cosine_schedule_anneals_each_fit(synthetic_dir: Path, tiny_overrides: list[str]) -> None:
    config = _config(tiny_overrides, "training.epochs=5", "training.lr=0.01",
                     "training.lr_schedule=cosine", "training.lr_floor=0.1",
                     "training.patience=10")
    records: list[dict[str, float]] = []
    _train(prepare(synthetic_dir, config), config, on_epoch=records.append)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.001)
    assert lrs[2] == pytest.approx(0.0055)  # halfway: the mean of start and floor
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_constant_schedule_keeps_the_lr(synthetic_dir: Path, tiny_overrides: list[str]) -> None:
    config = _config(tiny_overrides, "training.epochs=3", "training.lr=0.01",
                     "training.lr_schedule=constant")
    records: list[dict[str, float]] = []
    _train(prepare(synthetic_dir, config), config, on_epoch=records.append)
    assert [r["lr"] for r in records] == [0.01] * 3


def test_diverging_run_stops_with_a_clear_error(synthetic_dir: Path,
                                                tiny_overrides: list[str]) -> None:
    # A step size that blows the weights up makes the loss NaN within two epochs; the run
    # must stop naming the epoch, not select a NaN epoch as the best (every NaN rank was 1).
    config = _config(tiny_overrides, "training.epochs=4", "training.lr=1e30")
    data = prepare(synthetic_dir, config)
    with pytest.raises(NonFiniteError, match=r"training diverged at epoch \d"):
        _train(data, config)


def test_no_training_pairs_is_a_clear_error(synthetic_dir: Path,
                                            tiny_overrides: list[str]) -> None:
    config = _config(tiny_overrides)
    data = prepare(synthetic_dir, config)
    with pytest.raises(ValueError, match="no training pairs"):
        train_model(config, data.inputs, torch.empty((0, 2), dtype=torch.long),
                    torch.as_tensor(data.split.valid), device=torch.device("cpu"),
                    progress=False)


ZH_EN_TRAIN_PAIRS = 4050  # DBP15K zh_en: 30% of 15,000 gold pairs, less the validation tenth


@pytest.mark.parametrize("steps_per_epoch", [0, 4])
def test_zh_en_keeps_a_step_per_batch(steps_per_epoch: int) -> None:
    # The default run on zh_en (4,050 pairs, batches of 1,024) takes the same four steps, of
    # the same pairs, whether the steps are capped at four or not.
    config = TrainingConfig(steps_per_epoch=steps_per_epoch)
    steps = trainer_module.epoch_steps(ZH_EN_TRAIN_PAIRS, config)
    assert [step.batches for step in steps] == [[slice(0, 1024)], [slice(1024, 2048)],
                                                [slice(2048, 3072)], [slice(3072, 4050)]]
    assert all(step.weights == [1.0] for step in steps)


@pytest.mark.parametrize("pairs", [26_730, 48_600])
def test_steps_per_epoch_bounds_the_passes_over_the_graph(pairs: int) -> None:
    # The 100k and 200k synthetic pairs: 27 and 48 batches, but four steps, each a few
    # batches of at most batch_size pairs that cover every pair once.
    steps = trainer_module.epoch_steps(pairs, TrainingConfig(steps_per_epoch=4))
    assert len(steps) == 4
    covered = [i for step in steps for part in step.batches for i in range(pairs)[part]]
    assert covered == list(range(pairs))
    assert all(part.stop - part.start <= 1024 for step in steps for part in step.batches)
    for step in steps:
        assert sum(step.weights) == pytest.approx(1.0)


def _rows_of(output: MIMEAOutput, positions: torch.Tensor) -> MIMEAOutput:
    """``output`` at ``positions`` (a scalar, the fusion's KL, whole)."""
    fusion = output.fusion
    return MIMEAOutput(
        modal=[h[positions] for h in output.modal], mask=output.mask[positions],
        fusion=dataclasses.replace(fusion, **{
            f.name: value[positions] if value.dim() else value
            for f in dataclasses.fields(fusion) for value in [getattr(fusion, f.name)]}))


def test_a_step_of_several_batches_has_the_gradient_of_their_weighted_sum(
        synthetic_dir: Path, tiny_overrides: list[str]) -> None:
    # Each batch's gradient is taken on its own against detached copies of the shared pass;
    # the sum that reaches the parameters must be the gradient of the weighted sum of the
    # batch losses (learned fusion on: its KL term goes through the shared pass too).
    config = _config(tiny_overrides, "model.fusion=true", "loss.ot_batch=16")
    data = prepare(synthetic_dir, config)
    model = trainer_module.build_model(config, data.inputs).train()
    pairs = torch.as_tensor(data.split.train)
    batches = [(part[:, 0], part[:, 1]) for part in pairs.split(40)]
    weights = [len(left) / len(pairs) for left, _ in batches]
    assert len(batches) >= 3

    def gradients(loss: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        loss().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]

    def weighted_sum() -> torch.Tensor:
        # Each batch's terms from its own rows of the shared pass, on one autograd graph.
        rows, plans = plan_rows(config.loss, data.inputs.num_entities, batches)
        output = model(data.inputs, rows=rows)
        return torch.stack([
            weight * batch_terms(model, _rows_of(output, plan.positions), plan,
                                 config.loss)["total"]
            for plan, weight in zip(plans, weights, strict=True)]).sum()

    stepped = gradients(lambda: StepObjective(model, data.inputs, config.loss)(
        batches, weights)[0])
    expected = gradients(weighted_sum)
    assert any(g.abs().sum() > 0 for g in expected)
    for got, want in zip(stepped, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_cap_above_the_batches_changes_nothing(synthetic_dir: Path,
                                                 tiny_overrides: list[str]) -> None:
    # Four batches under a cap of four steps: the very run of no cap, to the last bit (one
    # thread, so that no float sum changes order).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [_train(prepare(synthetic_dir, config), config) for config in (
            _config(tiny_overrides, "training.batch_size=32", f"training.steps_per_epoch={cap}")
            for cap in (0, 4))]
    finally:
        torch.set_num_threads(threads)
    assert results[0].history == results[1].history
    uncapped, capped = (r.model.state_dict() for r in results)
    assert all(torch.equal(uncapped[key], capped[key]) for key in uncapped)


def test_a_capped_run_takes_fewer_steps(synthetic_dir: Path, tiny_overrides: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Four batches of 32 pairs in one step per epoch: one pass over the graph, four losses.
    calls: list[int] = []
    original = StepObjective.forward

    def counting(self: StepObjective, batches: list, weights: list[float]) -> object:
        calls.append(len(batches))
        return original(self, batches, weights)

    monkeypatch.setattr(StepObjective, "forward", counting)
    config = _config(tiny_overrides, "training.batch_size=32", "training.steps_per_epoch=1")
    data = prepare(synthetic_dir, config)
    result = _train(data, config)
    batches = -(-len(data.split.train) // 32)
    assert batches > 1
    assert calls == [batches] * config.training.epochs
    assert result.epochs == config.training.epochs
    assert all(math.isfinite(record["total"]) for record in result.history)
