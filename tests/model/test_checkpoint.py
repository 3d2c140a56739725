"""The checkpoint directory contract (model/checkpoint.py)."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import (
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    ENTITIES_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    REQUIRED_FILES,
    SPLIT_FILE,
    WEIGHTS_FILE,
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
    for name in MODALITIES:
        assert torch.equal(loaded.embeddings.modalities[name], expected.modalities[name])
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


def test_overwrite_replaces_content_and_leaves_no_temp_dirs(checkpoint_dir: Path) -> None:
    new = _content(seed=1)
    version = write_checkpoint(checkpoint_dir, **new)
    loaded = load_checkpoint(checkpoint_dir)
    assert loaded.model_version == version
    assert torch.equal(loaded.embeddings.joint, new["embeddings"].joint)
    assert [p.name for p in checkpoint_dir.parent.iterdir()] == [checkpoint_dir.name]
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == sorted(REQUIRED_FILES)


def test_failed_write_keeps_old_checkpoint_and_leaves_no_temp_dirs(checkpoint_dir: Path) -> None:
    old_version = load_checkpoint(checkpoint_dir).model_version
    content = _content(seed=1)
    content["metrics"] = {"not_json": object()}
    with pytest.raises(TypeError):
        write_checkpoint(checkpoint_dir, **content)
    assert load_checkpoint(checkpoint_dir).model_version == old_version
    assert [p.name for p in checkpoint_dir.parent.iterdir()] == [checkpoint_dir.name]


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


@pytest.mark.parametrize("problem", ["short_joint", "bad_mask", "one_kg", "duplicate_uri",
                                     "modality_mismatch"])
def test_inconsistent_content_not_written(problem: str, tmp_path: Path) -> None:
    content = _content()
    tables: EmbeddingTables = content["embeddings"]
    entities: EntityTable = content["entities"]
    if problem == "short_joint":
        content["embeddings"] = replace(tables, joint=tables.joint[:-1])
    elif problem == "bad_mask":
        content["embeddings"] = replace(tables, mask=tables.mask[:, :1])
    elif problem == "one_kg":
        content["entities"] = replace(entities, kgs=[1] * N)
    elif problem == "duplicate_uri":
        content["entities"] = replace(entities, uris=[entities.uris[0]] * N)
    else:
        content["config"] = {**content["config"], "modalities": ["structure"]}
    with pytest.raises(CheckpointError):
        write_checkpoint(tmp_path / "ckpt", **content)
    assert not list(tmp_path.iterdir())


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_missing_file(name: str, checkpoint_dir: Path) -> None:
    (checkpoint_dir / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing {name}"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("keep", [0.5, 0.9, 4])
def test_truncated_embeddings(keep: float, checkpoint_dir: Path) -> None:
    path = checkpoint_dir / EMBEDDINGS_FILE
    data = path.read_bytes()
    path.write_bytes(data[:int(keep * len(data)) if keep < 1 else int(keep)])
    with pytest.raises(CheckpointError, match=EMBEDDINGS_FILE):
        load_checkpoint(checkpoint_dir)


def test_truncated_weights_with_weights(checkpoint_dir: Path) -> None:
    path = checkpoint_dir / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(checkpoint_dir, with_weights=True)


def test_missing_embedding_tensor(checkpoint_dir: Path) -> None:
    content = _content()
    tables: EmbeddingTables = content["embeddings"]
    save_file({"joint": tables.joint, "fusion_weights": tables.fusion_weights,
               "modality.structure": tables.modalities["structure"],
               "modality.visual": tables.modalities["visual"]},
              checkpoint_dir / EMBEDDINGS_FILE)
    with pytest.raises(CheckpointError, match="missing tensor 'mask'"):
        load_checkpoint(checkpoint_dir)


def _edit_entities(checkpoint_dir: Path, edit: str) -> None:
    path = checkpoint_dir / ENTITIES_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if edit == "row_fewer":
        lines = lines[:-1]
    elif edit == "bad_header":
        lines[0] = "id\turi\tkg\n"
    elif edit == "no_header":
        lines = lines[1:]
    elif edit == "bad_kg":
        lines[2] = lines[2].replace("\t1\t", "\t3\t")
    elif edit == "two_fields":
        lines[2] = "1\thttp://kg1/e1\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize(("edit", "message"), [
    ("row_fewer", f"has {N - 1} rows"),
    ("bad_header", r"entities\.tsv:1: expected header"),
    ("no_header", r"entities\.tsv:1: expected header"),
    ("bad_kg", r"entities\.tsv:3:"),
    ("two_fields", r"entities\.tsv:3:"),
])
def test_bad_entity_table(edit: str, message: str, checkpoint_dir: Path) -> None:
    _edit_entities(checkpoint_dir, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_format_version(version: object, checkpoint_dir: Path) -> None:
    path = checkpoint_dir / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["format_version"] = version
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("key", ["model_version", "modalities"])
def test_config_missing_key(key: str, checkpoint_dir: Path) -> None:
    path = checkpoint_dir / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    del config[key]
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError, match=key):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("name", [CONFIG_FILE, SPLIT_FILE, METRICS_FILE])
@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_unreadable_json(name: str, text: str, checkpoint_dir: Path) -> None:
    (checkpoint_dir / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(checkpoint_dir)


class _Payload:
    """Unpickling this creates a directory: proof that a pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", [EMBEDDINGS_FILE, WEIGHTS_FILE])
@pytest.mark.parametrize("writer", ["pickle", "torch_save"])
def test_pickle_renamed_to_safetensors_is_not_unpickled(name: str, writer: str,
                                                        checkpoint_dir: Path,
                                                        tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = checkpoint_dir / name
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"joint": _Payload(marker)}))
    else:
        torch.save({"joint": torch.zeros(N, 6), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(checkpoint_dir, with_weights=True)
    assert not marker.exists()


def test_loading_never_unpickles(checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint load must not unpickle")

    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(target, attr, refuse)
    loaded = load_checkpoint(checkpoint_dir, with_weights=True)
    assert loaded.weights and len(loaded.entities) == N
