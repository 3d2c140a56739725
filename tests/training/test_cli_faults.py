"""The reliability probes of ``mimea train`` and ``mimea evaluate``, end to end through the CLI.

Each case is a mistake a user makes with real files; the command must end with exit status 2
(bad input) or 1 (the run failed) and one ``error:`` line naming what to fix, never a
traceback and never a score.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from mimea.model.checkpoint import CONFIG_FILE
from mimea_cli import app
from tests.training.conftest import TINY_OVERRIDES

runner = CliRunner()
Damage = Callable[[Path], None]


def _invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def _train(data: Path, out: Path, *extra: str) -> Result:
    args: list[str | Path] = ["train", "--data", data, "--out", out, "--quiet", "--seed", "2"]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    return _invoke(*args, *extra)


def _assert_one_line_failure(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Hits@1" not in result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _edit_line(name: str, line_no: int, edit: Callable[[str], str]) -> Damage:
    def damage(root: Path) -> None:
        path = root / name
        lines = path.read_text(encoding="utf-8").split("\n")
        lines[line_no - 1] = edit(lines[line_no - 1])
        path.write_text("\n".join(lines), encoding="utf-8")
    return damage


def _truncate(name: str) -> Damage:
    def damage(root: Path) -> None:
        (root / name).write_text("", encoding="utf-8")
    return damage


@pytest.fixture
def data_copy(synthetic_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_dir, tmp_path / "pair"))


BAD_DATA: list[tuple[str, Damage, list[str]]] = [
    ("CR inside a URI", _edit_line("ent_ids_1", 17, lambda line: line + "\rX"),
     ["ent_ids_1:17", "carriage return"]),
    ("empty gold file", _truncate("ill_ent_ids"), ["ill_ent_ids", "no gold pairs"]),
    ("id overflowing int64",
     _edit_line("triples_1", 5, lambda line: "\t".join([*line.split("\t")[:2],
                                                         "99999999999999999999"])),
     ["triples_1:5", "64-bit"]),
    ("not UTF-8", lambda root: (root / "ent_ids_2").write_bytes(b"1\t\xff\xfe\n"),
     ["ent_ids_2:1", "UTF-8"]),
]


@pytest.mark.parametrize(("case", "damage", "fragments"), BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_train_refuses_bad_data_in_one_line(case: str, damage: Damage, fragments: list[str],
                                            data_copy: Path, tmp_path: Path) -> None:
    damage(data_copy)
    result = _train(data_copy, tmp_path / "checkpoint")
    _assert_one_line_failure(result, 2, *fragments)
    assert not (tmp_path / "checkpoint").exists()


def test_duplicate_gold_line_trains_with_a_warning(data_copy: Path, tmp_path: Path) -> None:
    # This once failed with "N pair sources are not in the Sinkhorn pool" (seed 2).
    gold = data_copy / "ill_ent_ids"
    first = gold.read_text(encoding="utf-8").split("\n")[0]
    gold.write_text(gold.read_text(encoding="utf-8") + first + "\n", encoding="utf-8")
    result = _train(data_copy, tmp_path / "checkpoint")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "checkpoint" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert any("duplicate gold" in w for w in config["data"]["warnings"])


def test_diverging_training_is_a_runtime_failure(synthetic_dir: Path, tmp_path: Path) -> None:
    result = _train(synthetic_dir, tmp_path / "checkpoint", "--set", "training.lr=1e30",
                    "--epochs", "4")
    _assert_one_line_failure(result, 1, "training diverged at epoch")
    assert not (tmp_path / "checkpoint").exists()


@pytest.fixture(scope="module")
def checkpoint(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "checkpoint"
    assert _train(synthetic_dir, out).exit_code == 0
    return out


def _set_config(key: str, value: object) -> Damage:
    def damage(root: Path) -> None:
        path = root / CONFIG_FILE
        config = json.loads(path.read_text(encoding="utf-8"))
        config[key] = value
        path.write_text(json.dumps(config), encoding="utf-8")
    return damage


BAD_CHECKPOINTS: list[tuple[str, Damage, list[str]]] = [
    ("modalities is a number", _set_config("modalities", 5), [CONFIG_FILE]),
    ("config is a list", _set_config("config", []), [CONFIG_FILE]),
    ("entities not UTF-8",
     lambda root: (root / "entities.tsv").write_bytes(b"id\tkg\turi\n1\t1\t\xff\n"),
     ["entities.tsv"]),
    ("truncated weights",
     lambda root: (root / "weights.safetensors").write_bytes(b"\x00" * 16),
     ["weights.safetensors"]),
]


@pytest.mark.parametrize(("case", "damage", "fragments"), BAD_CHECKPOINTS,
                         ids=[c[0] for c in BAD_CHECKPOINTS])
def test_evaluate_refuses_a_broken_checkpoint_in_one_line(
        case: str, damage: Damage, fragments: list[str], checkpoint: Path,
        tmp_path: Path) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))
    damage(copy)
    _assert_one_line_failure(_invoke("evaluate", "--checkpoint", copy), 2, *fragments)


@pytest.mark.parametrize("part", ["holdout", "TEST", ""])
def test_evaluate_unknown_part_in_one_line(part: str, checkpoint: Path) -> None:
    result = _invoke("evaluate", "--checkpoint", checkpoint, "--part", part)
    _assert_one_line_failure(result, 2, "unknown split part")
