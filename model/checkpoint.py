"""The checkpoint directory: the one contract between training and the service.

A checkpoint is a directory holding only data formats that load without running code::

    config.json             format version, model version (content hash), model config,
                            data description, modality order, embedding sizes
    weights.safetensors     the network's state dict
    embeddings.safetensors  "joint" [N, D], "modality.<name>" [N, d_m] per modality,
                            "fusion_weights" [N, M], "mask" [N, M] (bool), M = len(modalities)
    entities.tsv            header ``id<TAB>kg<TAB>uri``; row i describes embedding row i;
                            kg is 1 or 2; KG1's rows come first
    split.json              train ratio, seed, and the train/valid/test pairs as entity ids
    metrics.json            valid and test metrics, epochs, wall time

Writing goes to a sibling temporary directory that is renamed into place, so a crash never
leaves a half-written checkpoint where a reader would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
ENTITIES_FILE = "entities.tsv"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, EMBEDDINGS_FILE, ENTITIES_FILE, SPLIT_FILE,
                  METRICS_FILE)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, truncated or inconsistent."""


@dataclass(frozen=True)
class EntityTable:
    """Entity identity for each embedding row: original id, KG (1 or 2) and URI."""

    ids: list[int]
    kgs: list[int]
    uris: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class EmbeddingTables:
    """Per-entity outputs of a trained model, row-aligned with the entity table."""

    joint: torch.Tensor
    modalities: dict[str, torch.Tensor]
    fusion_weights: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class Checkpoint:
    """Everything a checkpoint directory holds, validated."""

    path: Path
    config: dict[str, Any]
    entities: EntityTable
    embeddings: EmbeddingTables
    split: dict[str, Any]
    metrics: dict[str, Any]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return str(self.config["model_version"])

    @property
    def modalities(self) -> list[str]:
        return list(self.config["modalities"])


def write_checkpoint(
    path: Path,
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    embeddings: EmbeddingTables,
    entities: EntityTable,
    split: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> str:
    """Write a checkpoint directory atomically and return its model version.

    ``config`` must contain ``modalities`` (the order of the columns of ``fusion_weights`` and
    ``mask``); ``format_version``, ``model_version`` and ``embedding_dims`` are added here.
    """
    path = Path(path)
    modalities = list(config["modalities"])
    tensors = _embedding_tensors(embeddings)
    _check_consistency(entities, embeddings, modalities, source=path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())
                          and not (path / CONFIG_FILE).is_file()):
        raise CheckpointError(f"{path} exists and is not a checkpoint; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  tmp / WEIGHTS_FILE)
        save_file(tensors, tmp / EMBEDDINGS_FILE)
        _write_entities(tmp / ENTITIES_FILE, entities)
        _write_json(tmp / SPLIT_FILE, dict(split))
        _write_json(tmp / METRICS_FILE, dict(metrics))
        _write_json(tmp / CONFIG_FILE, dict(config))
        version = _content_hash(tmp)
        full_config = {
            **dict(config),
            "format_version": FORMAT_VERSION,
            "model_version": version,
            "embedding_dims": {"joint": int(embeddings.joint.shape[1]),
                               **{m: int(t.shape[1]) for m, t in embeddings.modalities.items()}},
        }
        _write_json(tmp / CONFIG_FILE, full_config)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def load_checkpoint(path: Path, *, with_weights: bool = False) -> Checkpoint:
    """Read and validate a checkpoint directory; raise CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    config = _read_json(path / CONFIG_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / CONFIG_FILE}: format_version {config.get('format_version')!r} is not "
            f"{FORMAT_VERSION}")
    for key in ("model_version", "modalities"):
        if key not in config:
            raise CheckpointError(f"{path / CONFIG_FILE}: missing key {key!r}")
    modalities = list(config["modalities"])
    tensors = _read_safetensors(path / EMBEDDINGS_FILE)
    for key in ("joint", "fusion_weights", "mask", *(f"modality.{m}" for m in modalities)):
        if key not in tensors:
            raise CheckpointError(f"{path / EMBEDDINGS_FILE}: missing tensor {key!r}")
    embeddings = EmbeddingTables(
        joint=tensors["joint"].float(),
        modalities={m: tensors[f"modality.{m}"].float() for m in modalities},
        fusion_weights=tensors["fusion_weights"].float(),
        mask=tensors["mask"].bool(),
    )
    entities = _read_entities(path / ENTITIES_FILE)
    _check_consistency(entities, embeddings, modalities, source=path)
    weights = _read_safetensors(path / WEIGHTS_FILE) if with_weights else {}
    return Checkpoint(path=path, config=config, entities=entities, embeddings=embeddings,
                      split=_read_json(path / SPLIT_FILE), metrics=_read_json(path / METRICS_FILE),
                      weights=weights)


def _embedding_tensors(embeddings: EmbeddingTables) -> dict[str, torch.Tensor]:
    tensors = {
        "joint": embeddings.joint,
        "fusion_weights": embeddings.fusion_weights,
        "mask": embeddings.mask.bool(),
        **{f"modality.{m}": t for m, t in embeddings.modalities.items()},
    }
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _check_consistency(entities: EntityTable, embeddings: EmbeddingTables,
                       modalities: list[str], *, source: Path) -> None:
    n = len(entities)
    if n == 0:
        raise CheckpointError(f"checkpoint {source}: the entity table is empty")
    if sorted(embeddings.modalities) != sorted(modalities):
        raise CheckpointError(
            f"checkpoint {source}: embeddings for modalities {sorted(embeddings.modalities)} "
            f"do not match the configured modalities {sorted(modalities)}")
    shapes = {"joint": embeddings.joint.shape,
              **{f"modality.{m}": t.shape for m, t in embeddings.modalities.items()}}
    for name, shape in shapes.items():
        if len(shape) != 2 or shape[0] != n:
            raise CheckpointError(
                f"checkpoint {source}: embedding {name!r} has shape {tuple(shape)} but the "
                f"entity table has {n} rows")
    for name in ("fusion_weights", "mask"):
        shape = getattr(embeddings, name).shape
        if tuple(shape) != (n, len(modalities)):
            raise CheckpointError(
                f"checkpoint {source}: {name!r} has shape {tuple(shape)}, expected "
                f"{(n, len(modalities))}")
    if set(entities.kgs) != {1, 2}:
        raise CheckpointError(f"checkpoint {source}: the entity table must hold both KGs 1 and 2")
    if len(set(entities.uris)) != n or len(set(entities.ids)) != n:
        raise CheckpointError(f"checkpoint {source}: entity ids and URIs must be unique")


def _write_entities(path: Path, entities: EntityTable) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("id\tkg\turi\n")
        for ent_id, kg, uri in zip(entities.ids, entities.kgs, entities.uris, strict=True):
            handle.write(f"{ent_id}\t{kg}\t{uri}\n")


def _read_entities(path: Path) -> EntityTable:
    ids: list[int] = []
    kgs: list[int] = []
    uris: list[str] = []
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n")
        if header != "id\tkg\turi":
            raise CheckpointError(f"{path}:1: expected header 'id<TAB>kg<TAB>uri'")
        for line_no, line in enumerate(handle, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or not parts[0].lstrip("-").isdigit() or parts[1] not in {"1", "2"}:
                raise CheckpointError(f"{path}:{line_no}: expected 'id<TAB>kg(1|2)<TAB>uri'")
            ids.append(int(parts[0]))
            kgs.append(int(parts[1]))
            uris.append(parts[2])
    return EntityTable(ids=ids, kgs=kgs, uris=uris)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _content_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        digest.update(name.encode())
        with (directory / name).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
