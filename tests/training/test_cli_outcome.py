"""What ``mimea`` shows a person: phase logs, the final timing line, ``--json`` outcomes, the
training report (``report.html``, ``mimea report``), ``--version`` and ``--help``."""

from __future__ import annotations

import json
import logging
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from mimea.model.checkpoint import HISTORY_FILE, REPORT_FILE, load_checkpoint, write_checkpoint
from mimea_cli import app
from tests.training.conftest import TINY_OVERRIDES
from tests.training.test_report import embedded_pngs

runner = CliRunner()
PHASES = ["load", "features", "training", "evaluation", "report", "writing",
          "alignment decisions"]


def _invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def _train(data: Path, out: Path, *extra: str) -> Result:
    args: list[str | Path] = ["train", "--data", data, "--out", out, "--seed", "4"]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    return _invoke(*args, *extra)


@pytest.fixture(scope="module")
def json_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, dict]:
    """A tiny ``mimea train --json`` run: its checkpoint and its parsed output."""
    out = tmp_path_factory.mktemp("outcome") / "checkpoint"
    result = _train(synthetic_dir, out, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_train_json_carries_version_headline_pairs_and_timings(json_run: tuple[Path, dict]
                                                               ) -> None:
    out, outcome = json_run
    checkpoint = load_checkpoint(out)
    assert outcome["model_version"] == checkpoint.model_version
    assert outcome["headline"] == "sinkhorn"
    assert outcome["pairs"] == {part: len(checkpoint.split[part])
                                for part in ("train", "valid", "test")}
    assert outcome["rankings"] == checkpoint.metrics["test"]
    assert outcome["all_targets"] == checkpoint.metrics["all_targets"]
    seconds = outcome["seconds"]
    assert list(seconds) == [*PHASES, "other", "total"]
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(
        seconds["total"], abs=0.1)


@pytest.mark.slow
def test_train_logs_each_phase_and_ends_with_its_times(synthetic_dir: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    result = _train(synthetic_dir, tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    done = [m.split(" done in ")[0] for m in caplog.messages if " done in " in m]
    assert done == PHASES
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9.]+ s in all: " + ", ".join(
        f"{name} [0-9.]+ s" for name in [*PHASES, "other"]), last), last
    assert "valid_h1=0.000" not in result.stderr


@pytest.mark.slow
def test_training_writes_history_and_report_into_the_manifest(json_run: tuple[Path, dict]
                                                              ) -> None:
    out, _ = json_run
    checkpoint = load_checkpoint(out)
    assert {HISTORY_FILE, REPORT_FILE} <= set(checkpoint.config["files"])
    assert checkpoint.decisions is not None  # kept through the rewrite that added them
    assert checkpoint.history is not None
    assert len(checkpoint.history["epochs"]) == checkpoint.metrics["epochs"]
    page = (out / REPORT_FILE).read_text(encoding="utf-8")
    assert len(embedded_pngs(page)) == 3


@pytest.mark.slow
def test_report_command_draws_the_report_again(json_run: tuple[Path, dict],
                                               tmp_path: Path) -> None:
    out, _ = json_run
    result = _invoke("report", "--checkpoint", out, "--out", tmp_path / "again.html")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {tmp_path / 'again.html'}")
    again = (tmp_path / "again.html").read_text(encoding="utf-8")
    assert again == (out / REPORT_FILE).read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_of_a_checkpoint_without_history_is_refused(json_run: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    out, _ = json_run
    loaded = load_checkpoint(out, with_weights=True)
    config = {k: v for k, v in loaded.config.items()
              if k not in ("format_version", "model_version", "embedding_dims", "files",
                           "decisions")}
    write_checkpoint(tmp_path / "old", config=config, weights=loaded.weights,
                     embeddings=loaded.embeddings, entities=loaded.entities,
                     split=loaded.split, metrics=loaded.metrics)
    assert load_checkpoint(tmp_path / "old").history is None  # old checkpoints still load
    result = _invoke("report", "--checkpoint", tmp_path / "old", "--out", tmp_path / "r.html")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and HISTORY_FILE in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_a_directory_as_out(tmp_path: Path) -> None:
    result = _invoke("report", "--checkpoint", tmp_path, "--out", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr


@pytest.mark.slow
def test_evaluate_json_times_each_phase(json_run: tuple[Path, dict]) -> None:
    out, _ = json_run
    result = _invoke("evaluate", "--checkpoint", out, "--json")
    assert result.exit_code == 0, result.output
    seconds = json.loads(result.stdout)["seconds"]
    assert list(seconds) == ["load", "rankings", "all_targets", "other", "total"]


def test_version_is_the_installed_one() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"mimea {version('mimea')}\n"


@pytest.mark.parametrize("command", ["demo-data", "train", "evaluate", "report", "align",
                                     "serve"])
def test_help_shows_defaults_and_flags_without_a_type(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    for line in result.stdout.splitlines():
        if line.strip().startswith("--help"):
            assert line.split() == ["--help", "Show", "this", "message", "and", "exit."]


def test_train_help_names_the_configuration_defaults() -> None:
    text = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=200).stdout.split())
    assert "[default: (data.train_ratio of --config, else 0.3)]" in text
    assert "[default: (training.epochs of --config, else 30)]" in text
    assert "[default: 1; x>=1]" in text
