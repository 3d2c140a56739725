"""The checkpoint directory contract (model/checkpoint.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from mimea.model.checkpoint import (
    CONFIG_FILE,
    DATA_FILES,
    FORMAT_VERSION,
    REQUIRED_FILES,
    CheckpointError,
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)

MODALITIES = ["structure", "visual"]
N1, N2 = 4, 5
N = N1 + N2


def _content(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(N, 2, dtype=torch.bool)
    mask[[1, 6], 1] = False
    weights = torch.rand(N, 2, generator=gen) * mask
    return {
        "config": {"modalities": MODALITIES, "config": {"eval": {"csls_k": 3}}},
        "weights": {"encoder.weight": torch.randn(3, 4, generator=gen),
                    "encoder.bias": torch.zeros(3)},
        "embeddings": EmbeddingTables(
            joint=torch.randn(N, 6, generator=gen),
            modalities={"structure": torch.randn(N, 4, generator=gen),
                        "visual": torch.randn(N, 2, generator=gen)},
            fusion_weights=weights / weights.sum(1, keepdim=True), mask=mask),
        "entities": EntityTable(ids=list(range(N)), kgs=[1] * N1 + [2] * N2,
                                uris=[f"http://kg1/e{i}" for i in range(N1)]
                                + [f"/m/0{j}" for j in range(N2)]),
        "split": {"train": [[0, 4]], "valid": [[1, 5]], "test": [[2, 6], [3, 7]], "seed": 1},
        "metrics": {"test": {"csls": {"kg1_to_kg2": {"hits1": 0.5}}}, "epochs": 3},
    }


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    write_checkpoint(path, **_content())
    return path


def test_round_trip(tmp_path: Path) -> None:
    content = _content()
    version = write_checkpoint(tmp_path / "ckpt", **content)
    loaded = load_checkpoint(tmp_path / "ckpt", with_weights=True)
    assert loaded.model_version == version
    assert loaded.modalities == MODALITIES
    assert loaded.config["format_version"] == FORMAT_VERSION
    assert loaded.config["embedding_dims"] == {"joint": 6, "structure": 4, "visual": 2}
    assert loaded.config["config"] == content["config"]["config"]
    expected: EmbeddingTables = content["embeddings"]
    torch.testing.assert_close(loaded.embeddings.joint, expected.joint, rtol=0, atol=0)
    torch.testing.assert_close(loaded.embeddings.fusion_weights, expected.fusion_weights,
                               rtol=0, atol=0)
    assert torch.equal(loaded.embeddings.mask, expected.mask)
    for name in MODALITIES:  # stored in float16: the per-modality breakdown needs no more
        assert torch.equal(loaded.embeddings.modalities[name],
                           expected.modalities[name].half().float())
    assert loaded.embeddings.csls_r is None and loaded.embeddings.sinkhorn_potential is None
    for name, tensor in content["weights"].items():
        assert torch.equal(loaded.weights[name], tensor)
    assert loaded.entities == content["entities"]
    assert loaded.split == content["split"]
    assert loaded.metrics == content["metrics"]


def test_weights_not_loaded_by_default(checkpoint_dir: Path) -> None:
    assert load_checkpoint(checkpoint_dir).weights == {}


def test_uris_with_spaces_and_unicode_round_trip(tmp_path: Path) -> None:
    content = _content()
    uris = list(content["entities"].uris)
    uris[0], uris[5] = "http://zh.dbpedia.org/resource/阿卜杜拉", "http://x.org/Who?_(band) 100%"
    content["entities"] = replace(content["entities"], uris=uris)
    write_checkpoint(tmp_path / "ckpt", **content)
    assert load_checkpoint(tmp_path / "ckpt").entities.uris == uris


def test_model_version_stable_for_identical_content(tmp_path: Path) -> None:
    first = write_checkpoint(tmp_path / "a", **_content())
    second = write_checkpoint(tmp_path / "b", **_content())
    assert first == second


@pytest.mark.parametrize("change", ["embeddings", "weights", "metrics", "split", "entities"])
def test_model_version_changes_with_content(change: str, tmp_path: Path) -> None:
    base = write_checkpoint(tmp_path / "a", **_content())
    content = _content()
    if change == "embeddings":
        content["embeddings"].joint[0, 0] += 1.0
    elif change == "weights":
        content["weights"]["encoder.bias"] = torch.ones(3)
    elif change == "metrics":
        content["metrics"] = {**content["metrics"], "epochs": 4}
    elif change == "split":
        content["split"] = {**content["split"], "seed": 2}
    else:
        content["entities"] = replace(content["entities"],
                                      uris=[*content["entities"].uris[:-1], "/m/0other"])
    assert write_checkpoint(tmp_path / "b", **content) != base


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_overwrite_replaces_content_and_leaves_no_temp_dirs(checkpoint_dir: Path) -> None:
    first = checkpoint_dir.resolve()
    new = _content(seed=1)
    version = write_checkpoint(checkpoint_dir, **new)
    loaded = load_checkpoint(checkpoint_dir)
    assert loaded.model_version == version
    assert torch.equal(loaded.embeddings.joint, new["embeddings"].joint)
    current = checkpoint_dir.resolve()
    assert current.name.startswith(f".ckpt.v-{version}-")
    # the previous version stays for a reader that may still be reading it
    assert _siblings(checkpoint_dir) == sorted(["ckpt", first.name, current.name])
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == sorted(REQUIRED_FILES)


def test_layout_is_a_relative_symlink_to_a_versioned_sibling(tmp_path: Path) -> None:
    version = write_checkpoint(tmp_path / "ckpt", **_content())
    link = tmp_path / "ckpt"
    assert link.is_symlink() and not os.readlink(link).startswith("/")
    assert os.readlink(link).startswith(f".ckpt.v-{version}-")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for entry in tmp_path.iterdir():  # relative: the pair survives a move or a volume mount
        if entry != moved:
            entry.rename(moved / entry.name)
    assert load_checkpoint(moved / "ckpt").model_version == version


def test_only_current_and_previous_versions_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    neighbour = tmp_path / "ckpt.v-0123456789abcdef"  # a checkpoint whose name looks similar
    write_checkpoint(neighbour, **_content(seed=5))
    write_checkpoint(path, **_content(seed=0))
    previous = write_checkpoint(path, **_content(seed=1))
    current = write_checkpoint(path, **_content(seed=0))
    versions = [n for n in _siblings(path) if re.fullmatch(r"\.ckpt\.v-[0-9a-f]{16}-\w+", n)]
    assert sorted(n.split("-")[1] for n in versions) == sorted([previous, current])
    assert load_checkpoint(neighbour).model_version == write_checkpoint(
        tmp_path / "again", **_content(seed=5))


def test_failed_write_keeps_old_checkpoint_and_leaves_no_temp_dirs(checkpoint_dir: Path) -> None:
    old_version = load_checkpoint(checkpoint_dir).model_version
    content = _content(seed=1)
    content["metrics"] = {"not_json": object()}
    before = _siblings(checkpoint_dir)
    with pytest.raises(TypeError):
        write_checkpoint(checkpoint_dir, **content)
    assert load_checkpoint(checkpoint_dir).model_version == old_version
    assert _siblings(checkpoint_dir) == before


@pytest.mark.parametrize("existing", ["directory", "file"])
def test_overwrite_refuses_what_is_not_a_checkpoint(existing: str, tmp_path: Path) -> None:
    # `mimea train --out DIR` must not silently delete an unrelated DIR (or file) of the user's.
    path = tmp_path / "out"
    if existing == "directory":
        path.mkdir()
        (path / "notes.txt").write_text("keep me", encoding="utf-8")
    else:
        path.write_text("keep me", encoding="utf-8")
    with pytest.raises(CheckpointError, match="out"):
        write_checkpoint(path, **_content())
    kept = path / "notes.txt" if existing == "directory" else path
    assert kept.read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _with_uri(entities: EntityTable, row: int, uri: str) -> EntityTable:
    uris = list(entities.uris)
    uris[row] = uri
    return replace(entities, uris=uris)


# The loader's rules, applied before writing: training cannot write what the service refuses.
NOT_WRITTEN: dict[str, tuple[Any, str]] = {
    "short_joint": (lambda c: {"embeddings": replace(c["embeddings"],
                                                     joint=c["embeddings"].joint[:-1])},
                    "'joint' in embeddings.safetensors has shape (8, 6)"),
    "bad_mask": (lambda c: {"embeddings": replace(c["embeddings"],
                                                  mask=c["embeddings"].mask[:, :1])}, "'mask'"),
    "one_kg": (lambda c: {"entities": replace(c["entities"], kgs=[1] * N)}, "both KGs"),
    "duplicate_uri": (lambda c: {"entities": _with_uri(c["entities"], 6, "http://kg1/e2")},
                      "entity rows 2 and 6 share the URI 'http://kg1/e2'"),
    "duplicate_id": (lambda c: {"entities": replace(c["entities"], ids=[0, *range(N - 1)])},
                     "entity rows 0 and 1 share the id 0"),
    "modality_mismatch": (lambda c: {"config": {**c["config"], "modalities": ["structure"]}},
                          "do not match the configured modalities"),
    "carriage_return": (lambda c: {"entities": _with_uri(c["entities"], 2, "http://kg1/a\r")},
                        "entity row 2 (id 2): the identifier 'http://kg1/a\\r' contains a "
                        "carriage return"),
    "line_feed": (lambda c: {"entities": _with_uri(c["entities"], 5, "/m/0\nx")},
                  "entity row 5 (id 5): the identifier '/m/0\\nx' contains a line feed"),
    "tab": (lambda c: {"entities": _with_uri(c["entities"], 1, "a\tb")}, "contains a tab"),
    "nul": (lambda c: {"entities": _with_uri(c["entities"], 1, "a\x00b")}, "contains a NUL"),
    "empty_uri": (lambda c: {"entities": _with_uri(c["entities"], 1, "")}, "is empty"),
    "id_beyond_int64": (lambda c: {"entities": replace(c["entities"],
                                                       ids=[2**63, *range(1, N)])},
                        "entity row 0 (id 9223372036854775808): entity id 9223372036854775808 "
                        "does not fit in int64"),
    "modalities_not_a_list": (lambda c: {"config": {**c["config"], "modalities": "structure"}},
                              "'modalities' must be a non-empty list of unique names"),
    "csls_k_too_large": (lambda c: {"config": {**c["config"],
                                               "config": {"eval": {"csls_k": 10**9}}}},
                         "'config.eval.csls_k' must be an integer in 1..100, not 1000000000"),
}


@pytest.mark.parametrize("problem", sorted(NOT_WRITTEN))
def test_inconsistent_content_not_written(problem: str, tmp_path: Path) -> None:
    change, message = NOT_WRITTEN[problem]
    content = _content()
    content.update(change(content))
    with pytest.raises(CheckpointError) as caught:
        write_checkpoint(tmp_path / "ckpt", **content)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_generated_keys_in_the_given_config_are_replaced(checkpoint_dir: Path,
                                                         tmp_path: Path) -> None:
    # Callers copy a loaded config (manifest included) into a new checkpoint.
    loaded = load_checkpoint(checkpoint_dir)
    content = _content(seed=1)
    content["config"] = loaded.config
    version = write_checkpoint(tmp_path / "copy", **content)
    assert version != loaded.model_version
    assert load_checkpoint(tmp_path / "copy").model_version == version


def test_manifest_covers_every_data_file_and_the_version_covers_the_manifest(
        checkpoint_dir: Path) -> None:
    # The contract of the module docstring, recomputed independently.
    config = json.loads((checkpoint_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    assert sorted(config["files"]) == sorted(DATA_FILES)
    for name, entry in config["files"].items():
        data = (checkpoint_dir / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    body = {k: v for k, v in config.items() if k != "model_version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert config["model_version"] == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_verify_false_skips_digests_but_not_sizes(checkpoint_dir: Path) -> None:
    path = checkpoint_dir / "metrics.json"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"epochs": 3', '"epochs": 4'), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"metrics\.json sha256 does not match"):
        load_checkpoint(checkpoint_dir)
    assert load_checkpoint(checkpoint_dir, verify=False).metrics["epochs"] == 4
    path.write_text(text.replace('"epochs": 3', '"epochs": 30'), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"metrics\.json is \d+ bytes, the manifest says"):
        load_checkpoint(checkpoint_dir, verify=False)


def test_readable_by_other_users_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_checkpoint(tmp_path / "ckpt", **_content())
    finally:
        os.umask(old)
    directory = (tmp_path / "ckpt").resolve()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    for name in REQUIRED_FILES:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_loading_never_unpickles(checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint load must not unpickle")

    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(target, attr, refuse)
    loaded = load_checkpoint(checkpoint_dir, with_weights=True)
    assert loaded.weights and len(loaded.entities) == N


def _legacy_checkpoint(path: Path, seed: int = 0) -> str:
    """A format 1 checkpoint: a real directory, no manifest."""
    written = path.with_name(path.name + ".new")
    write_checkpoint(written, **_content(seed))
    shutil.copytree(written.resolve(), path)
    for entry in written.parent.iterdir():
        if entry.name.startswith((written.name, f".{written.name}.")):
            shutil.rmtree(entry) if not entry.is_symlink() else entry.unlink()
    config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    del config["files"]
    config["format_version"] = 1
    (path / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return str(config["model_version"])


def test_format_1_loads_unverified_with_a_warning(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    version = _legacy_checkpoint(tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="mimea.model.checkpoint"):
        loaded = load_checkpoint(tmp_path / "old", with_weights=True)
    assert loaded.model_version == version and loaded.config["format_version"] == 1
    assert "format_version 1" in caplog.text and "not verified" in caplog.text


def test_format_1_directory_is_replaced_by_the_versioned_layout(tmp_path: Path) -> None:
    path = tmp_path / "out"
    _legacy_checkpoint(path)
    version = write_checkpoint(path, **_content(seed=1))
    assert path.is_symlink() and load_checkpoint(path).model_version == version
    legacy = [n for n in _siblings(path) if n.startswith(".out.v-legacy-")]
    assert len(legacy) == 1  # kept as the previous version for a reader still reading it
    assert load_checkpoint(tmp_path / legacy[0]).config["format_version"] == 1
    write_checkpoint(path, **_content(seed=2))
    assert not [n for n in _siblings(path) if n.startswith(".out.v-legacy-")]


def test_empty_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    version = write_checkpoint(tmp_path / "out", **_content())
    assert load_checkpoint(tmp_path / "out").model_version == version
    assert len(_siblings(tmp_path / "out")) == 2


@pytest.mark.parametrize("start", ["versioned", "format_1"])
def test_loads_during_replacement_see_one_whole_version(start: str, tmp_path: Path) -> None:
    # The probe that found mixed reads: training rewrites `out` while a loader reads it.
    path = tmp_path / "out"
    contents = [_content(seed=0), _content(seed=1)]
    if start == "format_1":
        _legacy_checkpoint(path, seed=0)
    else:
        write_checkpoint(path, **contents[0])
    versions = [write_checkpoint(tmp_path / f"ref{i}", **c) for i, c in enumerate(contents)]
    joints = {v: c["embeddings"].joint for v, c in zip(versions, contents, strict=True)}
    done = threading.Event()
    failures: list[BaseException] = []

    def rewrite() -> None:
        try:
            for swap in range(30):
                write_checkpoint(path, **contents[(swap + 1) % 2])
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    loads = 0
    try:
        while not done.is_set() or loads < 5:
            loaded = load_checkpoint(path)
            assert torch.equal(loaded.embeddings.joint, joints[loaded.model_version])
            loads += 1
    finally:
        done.wait()
        writer.join()
    assert not failures
    assert len([n for n in _siblings(path) if n.startswith(".out.v-")]) == 2


def test_ranking_terms_round_trip_and_are_checked(tmp_path: Path) -> None:
    content = _content()
    emb: EmbeddingTables = content["embeddings"]
    n = len(emb.joint)
    terms = {"csls_r": torch.linspace(0.1, 0.9, n),
             "sinkhorn_potential": torch.linspace(-12.0, -3.0, n)}
    content["embeddings"] = dataclasses.replace(emb, **terms)
    write_checkpoint(tmp_path / "ok", **content)
    loaded = load_checkpoint(tmp_path / "ok").embeddings
    assert torch.equal(loaded.csls_r, terms["csls_r"])
    assert torch.equal(loaded.sinkhorn_potential, terms["sinkhorn_potential"])
    content["embeddings"] = dataclasses.replace(emb, csls_r=torch.zeros(n + 1))
    with pytest.raises(CheckpointError, match=r"'csls_r' in embeddings.safetensors has shape"):
        write_checkpoint(tmp_path / "short", **content)
    bad = terms["sinkhorn_potential"].clone()
    bad[2] = float("nan")
    content["embeddings"] = dataclasses.replace(emb, sinkhorn_potential=bad)
    write_checkpoint(tmp_path / "nan", **content)
    with pytest.raises(CheckpointError, match="'sinkhorn_potential' holds NaN, first at row 2"):
        load_checkpoint(tmp_path / "nan")
