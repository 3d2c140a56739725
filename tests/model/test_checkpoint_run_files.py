"""The optional run files of a checkpoint, history.json and report.html (model/checkpoint.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mimea.model.checkpoint import (
    CONFIG_FILE,
    HISTORY_FILE,
    REPORT_FILE,
    CheckpointError,
    load_checkpoint,
    write_checkpoint,
)
from tests.model.test_checkpoint import _content

HISTORY = {"epochs": [{"epoch": 1.0, "total": 2.5}], "best_epoch": 1,
           "test_ranks": {"ranking": "csls", "direction": "kg1_to_kg2", "ranks": [1, 3]}}
REPORT = "<!DOCTYPE html>\n<html><body>run</body></html>\n"


def _manifest(path: Path) -> dict:
    return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))["files"]


def test_run_files_round_trip_and_are_listed(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", **_content(), history=HISTORY, report=REPORT)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.history == HISTORY
    assert (tmp_path / "ckpt" / REPORT_FILE).read_text(encoding="utf-8") == REPORT
    assert {HISTORY_FILE, REPORT_FILE} <= set(_manifest(tmp_path / "ckpt"))


def test_a_checkpoint_without_run_files_loads(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", **_content())
    assert load_checkpoint(tmp_path / "ckpt").history is None
    assert not {HISTORY_FILE, REPORT_FILE} & set(_manifest(tmp_path / "ckpt"))


def test_a_changed_report_is_refused(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", **_content(), history=HISTORY, report=REPORT)
    (tmp_path / "ckpt" / REPORT_FILE).write_text(REPORT.replace("run", "RUN"), encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{REPORT_FILE} sha256"):
        load_checkpoint(tmp_path / "ckpt")


def test_rewriting_the_same_model_keeps_its_run_files(tmp_path: Path) -> None:
    # As adding the alignment decisions does: same weights, embeddings, entities and split.
    path = tmp_path / "ckpt"
    write_checkpoint(path, **_content(), history=HISTORY, report=REPORT)
    content = _content()
    content["metrics"] = {**content["metrics"], "decisions": {"threshold": 0.5}}
    write_checkpoint(path, **content)
    assert load_checkpoint(path).history == HISTORY
    assert (path / REPORT_FILE).read_text(encoding="utf-8") == REPORT
    newer = {**HISTORY, "best_epoch": 2}
    write_checkpoint(path, **content, history=newer)  # a file given replaces the kept one
    assert load_checkpoint(path).history == newer
    assert REPORT_FILE in _manifest(path)


@pytest.mark.parametrize("change", ["weights", "embeddings", "split"])
def test_another_model_does_not_inherit_run_files(change: str, tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    write_checkpoint(path, **_content(), history=HISTORY, report=REPORT)
    content = _content()
    if change == "weights":
        content["weights"] = {k: v + 1 for k, v in content["weights"].items()}
    elif change == "embeddings":
        content["embeddings"] = replace(content["embeddings"],
                                        joint=content["embeddings"].joint * 2)
    else:
        content["split"] = {**content["split"], "seed": 2}
    write_checkpoint(path, **content)
    assert load_checkpoint(path).history is None
    assert not (path / REPORT_FILE).exists()


def test_a_run_file_changed_in_the_old_version_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    write_checkpoint(path, **_content(), history=HISTORY, report=REPORT)
    (path / REPORT_FILE).write_text("tampered", encoding="utf-8")
    write_checkpoint(path, **_content())
    assert load_checkpoint(path).history == HISTORY
    assert not (path / REPORT_FILE).exists()


def test_history_must_be_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    write_checkpoint(path, **_content(), history=HISTORY)
    size = (path / HISTORY_FILE).stat().st_size
    (path.resolve() / HISTORY_FILE).write_text("[" + " " * (size - 3) + "]\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{HISTORY_FILE}: expected a JSON object"):
        load_checkpoint(path, verify=False)  # sizes agree: the digest alone would tell
