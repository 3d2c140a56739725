"""Broken checkpoints: each is refused with one line naming the file, never a traceback.

Every case starts from a small valid checkpoint and breaks one thing. Cases that break a data
file's content "reseal" the checkpoint (recompute the manifest and model version, as someone
rewriting the files by hand would) so that the check behind the manifest is exercised too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimea.model import checkpoint as checkpoint_module
from mimea.model.checkpoint import (
    CONFIG_FILE,
    DATA_FILES,
    EMBEDDINGS_FILE,
    ENTITIES_FILE,
    METRICS_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)

N1, N2 = 3, 4
N = N1 + N2
MODALITIES = ["structure", "visual"]


def _write_valid(path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(N, 2, dtype=torch.bool)
    mask[1, 1] = False
    write_checkpoint(
        path,
        config={"modalities": MODALITIES, "config": {"eval": {"csls_k": 3}}},
        weights={"encoder.weight": torch.randn(3, 4, generator=gen)},
        embeddings=EmbeddingTables(
            joint=torch.randn(N, 6, generator=gen),
            modalities={"structure": torch.randn(N, 4, generator=gen),
                        "visual": torch.randn(N, 2, generator=gen)},
            fusion_weights=mask.float() / mask.float().sum(1, keepdim=True), mask=mask),
        entities=EntityTable(ids=list(range(N)), kgs=[1] * N1 + [2] * N2,
                             uris=[f"http://kg1/e{i}" for i in range(N1)]
                             + [f"/m/0{j}" for j in range(N2)]),
        split={"train": [[0, 3]], "valid": [[1, 4]], "test": [[2, 5]], "seed": 1},
        metrics={"test": {"hits1": 0.5}, "epochs": 3},
    )


# ------------------------------------------------------------------------------- breakages


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))


def _save_config(path: Path, config: dict[str, Any]) -> None:
    (path / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")


def _reseal(path: Path) -> None:
    """Recompute the manifest and model version of the module docstring's contract."""
    config = _config(path)
    data = {name: (path / name).read_bytes() for name in DATA_FILES}
    config["files"] = {name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                       for name, content in data.items()}
    _save_config(path, _reversioned(config))


def _reversioned(config: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in config.items() if k != "model_version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {**config, "model_version": hashlib.sha256(canonical.encode()).hexdigest()[:16]}


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = _config(path)
        for key, value in changes.items():
            if value is _DELETE:
                del config[key]
            else:
                config[key] = value
        _save_config(path, config)
    return edit


_DELETE = object()


def _edit_manifest(name: str, key: str, value: Any, *, reversion: bool) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = _config(path)
        config["files"][name][key] = value
        # a careful editor also recomputes the model version
        _save_config(path, _reversioned(config) if reversion else config)
    return edit


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:int(len(data) * keep)])
    return edit


def _garbage_same_size(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        size = (path / name).stat().st_size
        (path / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return edit


class _Payload:
    """Unpickling this creates a file: proof that a pickle was run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (os.environ["MIMEA_UNPICKLED_MARKER"],)


def _pickled(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).write_bytes(pickle.dumps({"joint": _Payload()}))
    return edit


def _torch_saved(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        torch.save({"joint": torch.zeros(N, 6), "payload": _Payload()}, path / name)
    return edit


def _edit_tensors(edit_tensors: Callable[[dict[str, torch.Tensor]], None]
                  ) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        tensors = load_file(path / EMBEDDINGS_FILE)
        edit_tensors(tensors)
        save_file(tensors, path / EMBEDDINGS_FILE)
    return edit


def _set_value(name: str, row: int, value: float) -> Callable[[Path], None]:
    def edit_tensors(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name][row, 0] = value
    return _edit_tensors(edit_tensors)


def _add_tensor(name: str, value: float, *, extra_rows: int = 0) -> Callable[[Path], None]:
    """A ranking-term tensor ``[N + extra_rows]`` of ``value`` (a NaN at row 2 for NaN)."""
    def edit_tensors(tensors: dict[str, torch.Tensor]) -> None:
        column = torch.full((len(tensors["joint"]) + extra_rows,), 0.5)
        column[2] = value
        tensors[name] = column
    return _edit_tensors(edit_tensors)


def _drop_tensor(name: str) -> Callable[[Path], None]:
    def edit_tensors(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[name]
    return _edit_tensors(edit_tensors)


def _reshape(name: str, shape: tuple[int, ...]) -> Callable[[Path], None]:
    def edit_tensors(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = torch.zeros(shape, dtype=tensors[name].dtype)
    return _edit_tensors(edit_tensors)


def _entity_lines(edit_lines: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        text = (path / ENTITIES_FILE).read_text(encoding="utf-8")
        lines = edit_lines(text.split("\n")[:-1])
        (path / ENTITIES_FILE).write_text("".join(f"{line}\n" for line in lines),
                                          encoding="utf-8")
    return edit


def _set_entity_line(number: int, line: str) -> Callable[[Path], None]:
    def edit_lines(lines: list[str]) -> list[str]:
        lines[number - 1] = line
        return lines
    return _entity_lines(edit_lines)


def _swap_entity_rows(lines: list[str]) -> list[str]:
    lines[2], lines[3] = lines[3], lines[2]
    return lines


def _write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).write_bytes(data)
    return edit


def _remove(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).unlink()
    return edit


def _dangling_file(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).unlink()
        (path / name).symlink_to("nowhere")
    return edit


def _both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        for step in edits:
            step(path)
    return edit


@dataclass(frozen=True)
class Fault:
    """One way to break a checkpoint: what it does, whether to reseal, what must be said."""

    breakage: Callable[[Path], None]
    file: str
    message: str
    reseal: bool = False


FAULTS: dict[str, Fault] = {
    # the manifest catches damage to any data file
    "weights_truncated": Fault(_truncate(WEIGHTS_FILE, 0.5), WEIGHTS_FILE,
                               "bytes, the manifest says"),
    "weights_empty": Fault(_truncate(WEIGHTS_FILE, 0), WEIGHTS_FILE,
                           "weights.safetensors is 0 bytes, the manifest says"),
    "weights_pickled": Fault(_pickled(WEIGHTS_FILE), WEIGHTS_FILE, "(truncated or replaced)"),
    "embeddings_truncated": Fault(_truncate(EMBEDDINGS_FILE, 0.9), EMBEDDINGS_FILE,
                                  "(truncated or replaced)"),
    "embeddings_garbage_same_size": Fault(_garbage_same_size(EMBEDDINGS_FILE), EMBEDDINGS_FILE,
                                          "sha256 does not match the manifest"),
    "entity_rows_swapped": Fault(_entity_lines(_swap_entity_rows), ENTITIES_FILE,
                                 "entities.tsv sha256 does not match the manifest"),
    "split_edited": Fault(_write_bytes(SPLIT_FILE, b'{"train": [], "seed": 2}'), SPLIT_FILE,
                          "bytes, the manifest says"),
    "model_version_tampered": Fault(_edit_config(model_version="0123456789abcdef"),
                                    CONFIG_FILE, "model_version '0123456789abcdef' does not "
                                    "match its manifest"),
    "manifest_digest_tampered": Fault(
        _edit_manifest(METRICS_FILE, "sha256", "0" * 64, reversion=False), CONFIG_FILE,
        "does not match its manifest"),
    "manifest_digest_tampered_and_reversioned": Fault(
        _edit_manifest(METRICS_FILE, "sha256", "0" * 64, reversion=True), METRICS_FILE,
        "metrics.json sha256 does not match the manifest"),
    "manifest_size_tampered_and_reversioned": Fault(
        _edit_manifest(SPLIT_FILE, "bytes", 1, reversion=True), SPLIT_FILE,
        "the manifest says 1 (truncated or replaced)"),
    "manifest_not_an_object": Fault(_edit_config(files=[]), CONFIG_FILE,
                                    "'files' (the manifest) must be a JSON object"),
    "manifest_lacks_a_file": Fault(
        _edit_config(files={"weights.safetensors": {"bytes": 1, "sha256": "0" * 64}}),
        CONFIG_FILE, "the manifest ('files') lacks embeddings.safetensors"),
    "manifest_outside_the_directory": Fault(
        _edit_config(files={n: {"bytes": 1, "sha256": "0" * 64}
                            for n in (*DATA_FILES, "../../etc/passwd")}),
        CONFIG_FILE, "lists '../../etc/passwd', which is not a data file"),
    "manifest_bad_digest": Fault(_edit_manifest(WEIGHTS_FILE, "sha256", "abc", reversion=False),
                                 CONFIG_FILE, "'files.weights.safetensors' must be"),
    # missing files
    "metrics_missing": Fault(_remove(METRICS_FILE), METRICS_FILE, "is missing metrics.json"),
    "config_missing": Fault(_remove(CONFIG_FILE), CONFIG_FILE, "is missing config.json"),
    "weights_missing": Fault(_remove(WEIGHTS_FILE), WEIGHTS_FILE, "is missing"),
    "entities_symlink_to_nowhere": Fault(_dangling_file(ENTITIES_FILE), ENTITIES_FILE,
                                         "is missing entities.tsv"),
    # unreadable safetensors behind a matching manifest
    "weights_garbage": Fault(_write_bytes(WEIGHTS_FILE, b"\x00" * 100), WEIGHTS_FILE,
                             "not a readable safetensors file", reseal=True),
    "weights_pickled_resealed": Fault(_pickled(WEIGHTS_FILE), WEIGHTS_FILE,
                                      "not a readable safetensors file", reseal=True),
    "embeddings_torch_saved": Fault(_torch_saved(EMBEDDINGS_FILE), EMBEDDINGS_FILE,
                                    "not a readable safetensors file", reseal=True),
    "embeddings_empty": Fault(_truncate(EMBEDDINGS_FILE, 0), EMBEDDINGS_FILE,
                              "not a readable safetensors file", reseal=True),
    "mask_missing": Fault(_drop_tensor("mask"), EMBEDDINGS_FILE, "missing tensor 'mask'",
                          reseal=True),
    "modality_missing": Fault(_drop_tensor("modality.visual"), EMBEDDINGS_FILE,
                              "missing tensor 'modality.visual'", reseal=True),
    "joint_short": Fault(_reshape("joint", (N - 1, 6)), EMBEDDINGS_FILE,
                         f"'joint' in embeddings.safetensors has shape ({N - 1}, 6) but the "
                         f"entity table has {N} rows", reseal=True),
    "joint_one_dimensional": Fault(_reshape("joint", (N,)), EMBEDDINGS_FILE, "has shape (7,)",
                                   reseal=True),
    "joint_no_columns": Fault(_reshape("joint", (N, 0)), EMBEDDINGS_FILE, "has shape (7, 0)",
                              reseal=True),
    "fusion_weights_wrong_shape": Fault(_reshape("fusion_weights", (N, 3)), EMBEDDINGS_FILE,
                                        "'fusion_weights' in embeddings.safetensors has shape",
                                        reseal=True),
    # values
    "joint_nan": Fault(_set_value("joint", 4, float("nan")), EMBEDDINGS_FILE,
                       "'joint' holds NaN, first at row 4 (1 rows)", reseal=True),
    "modality_inf": Fault(_set_value("modality.visual", 2, float("-inf")), EMBEDDINGS_FILE,
                          "'modality.visual' holds infinity, first at row 2", reseal=True),
    "fusion_weights_nan": Fault(_set_value("fusion_weights", 0, float("nan")), EMBEDDINGS_FILE,
                                "'fusion_weights' holds NaN", reseal=True),
    "joint_huge": Fault(_set_value("joint", 6, 1e30), EMBEDDINGS_FILE,
                        "'joint' holds values beyond ±1e+06 (a diverged model), first at row 6",
                        reseal=True),
    # float16 tables: a huge value is stored as infinity
    "modality_huge": Fault(_set_value("modality.structure", 6, 1e30), EMBEDDINGS_FILE,
                           "'modality.structure' holds infinity, first at row 6", reseal=True),
    "sinkhorn_potential_nan": Fault(_add_tensor("sinkhorn_potential", float("nan")),
                                    EMBEDDINGS_FILE, "'sinkhorn_potential' holds NaN",
                                    reseal=True),
    "csls_r_wrong_shape": Fault(_add_tensor("csls_r", 0.5, extra_rows=1), EMBEDDINGS_FILE,
                                "'csls_r' in embeddings.safetensors has shape", reseal=True),
    # entities.tsv
    "entities_carriage_return": Fault(_set_entity_line(3, "1\t1\thttp://kg1/e1\r"),
                                      ENTITIES_FILE, "entities.tsv:3: the identifier "
                                      "'http://kg1/e1\\r' contains a carriage return",
                                      reseal=True),
    "entities_tab_in_uri": Fault(_set_entity_line(3, "1\t1\thttp://kg1/a\tb"), ENTITIES_FILE,
                                 "entities.tsv:3: expected 'id<TAB>kg(1|2)<TAB>uri', got 4 "
                                 "fields (a tab in the URI?)", reseal=True),
    "entities_nul_in_uri": Fault(_set_entity_line(3, "1\t1\ta\x00b"), ENTITIES_FILE,
                                 "entities.tsv:3: the identifier 'a\\x00b' contains a NUL",
                                 reseal=True),
    "entities_empty_uri": Fault(_set_entity_line(3, "1\t1\t"), ENTITIES_FILE,
                                "entities.tsv:3: the identifier is empty", reseal=True),
    "entities_duplicate_uri": Fault(_set_entity_line(4, "2\t1\thttp://kg1/e0"), ENTITIES_FILE,
                                    "entities.tsv:4: URI 'http://kg1/e0' repeats line 2",
                                    reseal=True),
    "entities_duplicate_id": Fault(_set_entity_line(5, "0\t2\t/m/00"), ENTITIES_FILE,
                                   "entities.tsv:5: id 0 repeats line 2", reseal=True),
    "entities_id_beyond_int64": Fault(_set_entity_line(3, f"{2**63}\t1\thttp://kg1/e1"),
                                      ENTITIES_FILE, "entities.tsv:3: entity id "
                                      "9223372036854775808 does not fit in int64", reseal=True),
    "entities_id_huge": Fault(_set_entity_line(3, "9" * 5000 + "\t1\thttp://kg1/e1"),
                              ENTITIES_FILE, "entities.tsv:3: expected", reseal=True),
    "entities_id_unicode_digit": Fault(_set_entity_line(3, "\u00b2\t1\thttp://kg1/e1"),
                                       ENTITIES_FILE, "entities.tsv:3: expected", reseal=True),
    "entities_bad_kg": Fault(_set_entity_line(3, "1\t3\thttp://kg1/e1"), ENTITIES_FILE,
                             "entities.tsv:3: expected", reseal=True),
    "entities_two_fields": Fault(_set_entity_line(3, "1\thttp://kg1/e1"), ENTITIES_FILE,
                                 "entities.tsv:3: expected", reseal=True),
    "entities_bad_header": Fault(_set_entity_line(1, "id\turi\tkg"), ENTITIES_FILE,
                                 "entities.tsv:1: expected header", reseal=True),
    "entities_crlf_header": Fault(_set_entity_line(1, "id\tkg\turi\r"), ENTITIES_FILE,
                                  "entities.tsv:1: expected header", reseal=True),
    "entities_empty": Fault(_truncate(ENTITIES_FILE, 0), ENTITIES_FILE,
                            "entities.tsv:1: expected header", reseal=True),
    "entities_header_only": Fault(_entity_lines(lambda lines: lines[:1]), ENTITIES_FILE,
                                  "entities.tsv holds no entities", reseal=True),
    "entities_row_dropped": Fault(_entity_lines(lambda lines: lines[:-1]), EMBEDDINGS_FILE,
                                  f"but the entity table has {N - 1} rows", reseal=True),
    "entities_one_kg": Fault(_entity_lines(lambda lines: [r.replace("\t2\t", "\t1\t")
                                                          for r in lines]),
                             ENTITIES_FILE, "must hold entities of both KGs 1 and 2",
                             reseal=True),
    # config.json
    "modalities_not_a_list": Fault(_edit_config(modalities=5), CONFIG_FILE,
                                   "'modalities' must be a non-empty list of unique names, "
                                   "not 5"),
    "modalities_repeated": Fault(_edit_config(modalities=["visual", "visual"]), CONFIG_FILE,
                                 "'modalities' must be"),
    "modalities_missing": Fault(_edit_config(modalities=_DELETE), CONFIG_FILE,
                                "missing key 'modalities'"),
    "modalities_mismatch": Fault(_edit_config(modalities=["structure"]), EMBEDDINGS_FILE,
                                 "'fusion_weights' in embeddings.safetensors has shape (7, 2), "
                                 "expected (7, 1)", reseal=True),
    "config_a_list": Fault(_edit_config(config=[]), CONFIG_FILE,
                           "'config' must be a JSON object, not []"),
    "eval_a_number": Fault(_edit_config(config={"eval": 3}), CONFIG_FILE,
                           "'config.eval' must be a JSON object"),
    "csls_k_huge": Fault(_edit_config(config={"eval": {"csls_k": 10**9}}), CONFIG_FILE,
                         "'config.eval.csls_k' must be an integer in 1..100, not 1000000000"),
    "csls_k_bool": Fault(_edit_config(config={"eval": {"csls_k": True}}), CONFIG_FILE,
                         "'config.eval.csls_k'"),
    "csls_k_float": Fault(_edit_config(config={"eval": {"csls_k": 3.0}}), CONFIG_FILE,
                          "'config.eval.csls_k'"),
    "embedding_dims_a_list": Fault(_edit_config(embedding_dims=[6]), CONFIG_FILE,
                                   "'embedding_dims' must be a JSON object"),
    "model_version_missing": Fault(_edit_config(model_version=_DELETE), CONFIG_FILE,
                                   "missing key 'model_version'"),
    "model_version_a_number": Fault(_edit_config(model_version=7), CONFIG_FILE,
                                    "missing key 'model_version'"),
    **{f"format_version_{value!r}": Fault(_edit_config(format_version=value), CONFIG_FILE,
                                          f"format_version {value!r} is not one this version "
                                          f"reads (1, 2)")
       for value in (3, 0, "2", None, True, 2.0)},
    "config_not_json": Fault(_write_bytes(CONFIG_FILE, b"{not json"), CONFIG_FILE,
                             "not readable JSON"),
    "config_a_list_of_numbers": Fault(_write_bytes(CONFIG_FILE, b"[1, 2]"), CONFIG_FILE,
                                      "expected a JSON object"),
    "config_not_utf8": Fault(_write_bytes(CONFIG_FILE, b'{"a": "\xff"}'), CONFIG_FILE,
                             "config.json:1: not UTF-8 (byte 0xff at offset 7)"),
    "config_deeply_nested": Fault(_write_bytes(CONFIG_FILE, b"[" * 100_000), CONFIG_FILE,
                                  "not readable JSON"),
    "config_huge_integer": Fault(_write_bytes(CONFIG_FILE, b'{"a": ' + b"9" * 5000 + b"}"),
                                 CONFIG_FILE, "not readable JSON"),
    "split_not_json": Fault(_write_bytes(SPLIT_FILE, b"{not json"), SPLIT_FILE,
                            "not readable JSON", reseal=True),
    "metrics_not_utf8": Fault(_write_bytes(METRICS_FILE, b"\xfe{}"), METRICS_FILE,
                              "metrics.json:1: not UTF-8", reseal=True),
    "metrics_a_list": Fault(_write_bytes(METRICS_FILE, b"[]"), METRICS_FILE,
                            "expected a JSON object", reseal=True),
    "metrics_and_weights_broken": Fault(
        _both(_truncate(WEIGHTS_FILE, 0.5), _write_bytes(METRICS_FILE, b"[]")), METRICS_FILE,
        "metrics.json is 2 bytes, the manifest says"),
}


def _entities_not_utf8(path: Path) -> None:
    data = (path / ENTITIES_FILE).read_bytes()
    (path / ENTITIES_FILE).write_bytes(data.replace(b"http://kg1/e1", b"http://kg1/\xff1"))


FAULTS["entities_not_utf8"] = Fault(_entities_not_utf8, ENTITIES_FILE,
                                    "entities.tsv:3: not UTF-8 (byte 0xff", reseal=True)


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    _write_valid(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_there_are_enough_faults() -> None:
    assert len(FAULTS) >= 25


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_broken_checkpoint_is_refused_in_one_line(name: str, valid: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fault = FAULTS[name]
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("MIMEA_UNPICKLED_MARKER", str(marker))
    directory = valid.resolve()
    fault.breakage(directory)
    if fault.reseal:
        _reseal(directory)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(valid, with_weights=True)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert fault.file in message and fault.message in message
    assert not marker.exists()


@pytest.mark.parametrize("name", ["joint_nan", "joint_huge", "modality_inf"])
def test_values_checked_a_block_of_rows_at_a_time_name_the_same_row(
        name: str, valid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECK_ROWS", 2)
    fault = FAULTS[name]
    directory = valid.resolve()
    fault.breakage(directory)
    _reseal(directory)
    with pytest.raises(CheckpointError, match=re.escape(fault.message)):
        load_checkpoint(valid)


def test_checkpoint_symlink_to_nowhere(valid: Path) -> None:
    target = valid.resolve()
    for entry in target.iterdir():
        entry.unlink()
    target.rmdir()
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(valid)
    assert str(caught.value) == (f"checkpoint directory {valid} does not exist (a symlink to "
                                 f"the missing {os.readlink(valid)})")


def test_checkpoint_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").write_text("not a directory", encoding="utf-8")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", [ENTITIES_FILE, CONFIG_FILE, SPLIT_FILE, METRICS_FILE])
def test_a_utf8_bom_is_accepted(name: str, valid: Path) -> None:
    directory = valid.resolve()
    path = directory / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    if name != CONFIG_FILE:  # config.json is not in the manifest
        _reseal(directory)
    loaded = load_checkpoint(valid)
    assert loaded.entities.uris[0] == "http://kg1/e0"
    assert loaded.modalities == MODALITIES and loaded.metrics["epochs"] == 3


def test_digests_are_skipped_with_verify_false(valid: Path) -> None:
    directory = valid.resolve()
    _entity_lines(_swap_entity_rows)(directory)
    loaded = load_checkpoint(valid, verify=False)
    assert loaded.entities.uris[1:3] == ["http://kg1/e2", "http://kg1/e1"]


def test_writer_refuses_a_carriage_return_in_a_uri(tmp_path: Path) -> None:
    _write_valid(tmp_path / "ok")
    loaded = load_checkpoint(tmp_path / "ok", with_weights=True)
    uris = list(loaded.entities.uris)
    uris[2] = "http://kg1/e2\r"
    with pytest.raises(CheckpointError) as caught:
        write_checkpoint(tmp_path / "bad", config=loaded.config, weights=loaded.weights,
                         embeddings=loaded.embeddings,
                         entities=EntityTable(ids=loaded.entities.ids, kgs=loaded.entities.kgs,
                                              uris=uris),
                         split=loaded.split, metrics=loaded.metrics)
    assert str(caught.value) == (f"checkpoint {tmp_path / 'bad'}: entity row 2 (id 2): the "
                                 f"identifier 'http://kg1/e2\\r' contains a carriage return")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ok",
                                                                 os.readlink(tmp_path / "ok")])
