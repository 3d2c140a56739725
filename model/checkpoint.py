"""The checkpoint directory: the one contract between training and the service.

A checkpoint holds only data formats that load without running code::

    config.json             format version, model version, manifest ("files"), model config
                            ("config"), data description, modality order, embedding sizes
    weights.safetensors     the network's state dict
    embeddings.safetensors  "joint" [N, D] float32, "modality.<name>" [N, d_m] per modality
                            (float16: only the per-modality breakdown reads them),
                            "fusion_weights" [N, M], "mask" [N, M] (bool), M = len(modalities);
                            optionally the ranking terms the service needs to rank as the
                            evaluation does (model/ranking.py): "csls_r" [N], each entity's
                            mean cosine to its eval.csls_k nearest entities of the other KG,
                            and "sinkhorn_potential" [N], its log scaling (u for KG1, v for
                            KG2) in the sparse Sinkhorn plan over every entity of both KGs
    entities.tsv            header ``id<TAB>kg<TAB>uri``; row i describes embedding row i;
                            kg is 1 or 2; ids fit int64; URIs obey model.identifiers
    split.json              train ratio, seed, and the train/valid/test pairs as entity ids
    metrics.json            valid and test metrics, epochs, wall time
    decisions.safetensors   optional: the decided alignment (model/decisions.py), row-aligned
                            with the entity table: "counterpart" [N] int64 (the row of the other
                            KG one-to-one decoding pairs it with, -1 for none), "probability"
                            [N] float32 (of that pairing: 1 for a seed, 0 for none),
                            "runner_up" [N] int64 (its best candidate besides the counterpart,
                            -1 for none) and "seed" [N] bool (a training or validation pair);
                            present exactly when config.json has a "decisions" object, whose
                            "threshold" in [0, 1] is the probability a pairing needs to be a
                            match by default
    history.json            optional: the training run, for its report: "epochs" (one record
                            per epoch: losses, learning rate, validation Hits@1 and MRR where
                            validated), "best_epoch", and "test_ranks" ("ranking", "direction",
                            "ranks": the gold rank of each test pair in split.json's order)
    report.html             optional: the run's report, one self-contained page (training/report.py)

Integrity (format 2). ``config.json["files"]`` is a manifest ``{name: {"bytes", "sha256"}}`` of
every other file (an optional file is read only when the manifest lists it), and
``model_version`` is the first 16 hex digits of the SHA-256 of the canonical JSON of
``config.json`` without ``model_version`` (so it covers the manifest).
Loading checks the model version against its manifest, every file's size and, unless
``verify=False``, its digest: a truncated, replaced or hand-edited checkpoint is refused instead
of being served. Format 1 checkpoints (no manifest) still load, unverified, with a warning.

Layout. ``write_checkpoint(out)`` writes a hidden sibling ``.out.tmp-<token>``, renames it to
``.out.v-<model_version>-<token>`` (immutable from then on) and points ``out``, a relative
symlink, at it by ``os.replace`` of a temporary symlink, so ``out/<file>`` keeps working for
every reader. A format 1 checkpoint written as a real directory at ``out`` is moved aside to
``.out.v-legacy-<token>`` just before the switch. The previous version is kept (a reader may
still be reading it) and older ones are deleted. One writer at a time per ``out``.

Rewriting. history.json and report.html describe how the model was trained. A checkpoint
written again at the same ``out`` with the same weights, embeddings, entities and split (to add
its decisions, say) keeps those of the version it replaces, unless new ones are given.

A loader resolves ``out`` once and reads every file from that directory, so it never mixes two
checkpoints; when the checkpoint is replaced while it is being read (its directory deleted, or
a format 1 directory moved aside), it reads the new one instead. Directories are 0755 and files
0644, so a service running as another user can read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mimea.model.identifiers import identifier_problem, strip_bom

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
RANKING_TENSORS = ("csls_r", "sinkhorn_potential")
READABLE_FORMATS = (1, 2)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
ENTITIES_FILE = "entities.tsv"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
DECISIONS_FILE = "decisions.safetensors"
DECISIONS_KEY = "decisions"
DECISION_TENSORS = {"counterpart": torch.int64, "probability": torch.float32,
                    "runner_up": torch.int64, "seed": torch.bool}
HISTORY_FILE = "history.json"
REPORT_FILE = "report.html"
RUN_FILES = (HISTORY_FILE, REPORT_FILE)  # kept by a rewrite of the same model
DATA_FILES = (WEIGHTS_FILE, EMBEDDINGS_FILE, ENTITIES_FILE, SPLIT_FILE, METRICS_FILE)
# A rewrite whose files hash as these did is the same trained model.
MODEL_FILES = (WEIGHTS_FILE, EMBEDDINGS_FILE, ENTITIES_FILE, SPLIT_FILE)
REQUIRED_FILES = (CONFIG_FILE, *DATA_FILES)
GENERATED_KEYS = ("format_version", "model_version", "embedding_dims", "files")
ENTITIES_HEADER = "id\tkg\turi"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_CSLS_K = 100
# A trained model's embeddings are O(1); values beyond this come from a diverged run.
MAX_ABS_EMBEDDING = 1e6
CHECK_ROWS = 16_384  # rows tested at a time when a checkpoint loads
READ_ATTEMPTS = 5
MIGRATION_WAIT_S = 0.01
DIR_MODE, FILE_MODE = 0o755, 0o644
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTITY_ID = re.compile(r"-?[0-9]{1,20}")


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
    csls_r: torch.Tensor | None = None
    sinkhorn_potential: torch.Tensor | None = None


@dataclass(frozen=True)
class DecisionTables:
    """The decided alignment, row-aligned with the entity table (see the module docstring)."""

    counterpart: torch.Tensor
    probability: torch.Tensor
    runner_up: torch.Tensor
    seed: torch.Tensor


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
    decisions: DecisionTables | None = None
    history: dict[str, Any] | None = None

    @property
    def model_version(self) -> str:
        return str(self.config["model_version"])

    @property
    def modalities(self) -> list[str]:
        return list(self.config["modalities"])


# ------------------------------------------------------------------------------------ writing


def write_checkpoint(
    path: Path,
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    embeddings: EmbeddingTables,
    entities: EntityTable,
    split: Mapping[str, Any],
    metrics: Mapping[str, Any],
    decisions: DecisionTables | None = None,
    history: Mapping[str, Any] | None = None,
    report: str | None = None,
) -> str:
    """Write a checkpoint atomically (see the module docstring) and return its model version.

    ``config`` must contain ``modalities`` (the order of the columns of ``fusion_weights`` and
    ``mask``) and, with ``decisions``, a ``decisions`` object; the keys in ``GENERATED_KEYS``
    are computed here. The loader's rules are applied before anything is written, so whatever
    is written can be loaded. ``history`` and ``report`` (HTML) are the optional run files;
    one not given is kept from the version replaced when the model is the same.
    """
    path = Path(path)
    config = {k: v for k, v in config.items() if k not in GENERATED_KEYS}
    _check_model_config(config, where=f"checkpoint {path}: config")
    _check_entities(entities, source=path)
    _check_consistency(entities, embeddings, list(config["modalities"]), source=path)
    _check_decisions(decisions, config, entities.kgs, where=f"checkpoint {path}")
    _refuse_foreign(path)
    run_files: dict[str, bytes] = {}
    if history is not None:
        run_files[HISTORY_FILE] = _json_bytes(dict(history))
    if report is not None:
        run_files[REPORT_FILE] = report.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    token = tmp.name.rsplit("-", 1)[1]
    try:
        version = _write_files(tmp, config, weights, embeddings, entities, split, metrics,
                               decisions, run_files, replaced=_resolve(path))
        final = tmp.rename(path.parent / f".{path.name}.v-{version}-{token}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = _switch(path, final, token)
    _remove_old_versions(path, keep=(final, previous))
    return version


def _refuse_foreign(path: Path) -> None:
    """`mimea train --out DIR` must not delete an unrelated DIR (or file) of the user's."""
    if path.is_file() or (path.is_dir() and any(path.iterdir())
                          and not (path / CONFIG_FILE).is_file()):
        raise CheckpointError(f"{path} exists and is not a checkpoint; refusing to replace it")


def _write_files(directory: Path, config: dict[str, Any], weights: Mapping[str, torch.Tensor],
                 embeddings: EmbeddingTables, entities: EntityTable, split: Mapping[str, Any],
                 metrics: Mapping[str, Any], decisions: DecisionTables | None,
                 run_files: Mapping[str, bytes], *, replaced: Path | None) -> str:
    """Fill ``directory``; return the model version recorded in its config.json.
    ``replaced``: the version ``directory`` replaces, whose run files it may keep."""
    directory.chmod(DIR_MODE)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
              directory / WEIGHTS_FILE)
    save_file(_embedding_tensors(embeddings), directory / EMBEDDINGS_FILE)
    _write_entities(directory / ENTITIES_FILE, entities)
    _write_json(directory / SPLIT_FILE, dict(split))
    _write_json(directory / METRICS_FILE, dict(metrics))
    names = list(DATA_FILES)
    if decisions is not None:
        save_file({name: getattr(decisions, name).detach().cpu().contiguous()
                   for name in DECISION_TENSORS}, directory / DECISIONS_FILE)
        names.append(DECISIONS_FILE)
    files = {name: _file_entry(directory / name) for name in names}
    for name, content in run_files.items():
        (directory / name).write_bytes(content)
        files[name] = _file_entry(directory / name)
    files.update(_keep_run_files(replaced, directory, files))
    full = {
        **config,
        "format_version": FORMAT_VERSION,
        "embedding_dims": {"joint": int(embeddings.joint.shape[1]),
                           **{m: int(t.shape[1]) for m, t in embeddings.modalities.items()}},
        "files": files,
    }
    full = json.loads(json.dumps(full))  # hash exactly what a reader will parse
    full["model_version"] = _version_of(full)
    _write_json(directory / CONFIG_FILE, full)
    for name in (CONFIG_FILE, *files):
        (directory / name).chmod(FILE_MODE)
    return str(full["model_version"])


def _keep_run_files(replaced: Path | None, directory: Path,
                    files: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Copy into ``directory`` the run files of the ``replaced`` version that ``files`` lacks,
    when both hold the same model (``MODEL_FILES`` hash alike); return their manifest entries.
    A file that no longer matches the old manifest is not kept."""
    missing = [name for name in RUN_FILES if name not in files]
    if replaced is None or not missing:
        return {}
    try:
        old = _read_json(replaced / CONFIG_FILE, shown=replaced / CONFIG_FILE).get("files")
    except CheckpointError:
        return {}
    if not isinstance(old, dict) or any(old.get(name) != files[name] for name in MODEL_FILES):
        return {}
    kept = {}
    for name in missing:
        if name not in old:
            continue
        try:
            shutil.copyfile(replaced / name, directory / name)
        except OSError:
            continue
        entry = _file_entry(directory / name)
        if entry == old[name]:
            kept[name] = entry
        else:
            (directory / name).unlink()
    return kept


def _switch(path: Path, final: Path, token: str) -> Path | None:
    """Point ``path`` at ``final`` atomically; return the directory it pointed at before.

    A real directory at ``path`` (format 1 layout) cannot be replaced by a symlink in one step:
    an empty one is removed, a checkpoint is moved aside to a versioned sibling just before the
    switch (a reader starting in that instant finds ``path`` missing and looks again).
    """
    link = path.parent / f".{path.name}.link-{token}"
    moved = None
    try:
        os.symlink(final.name, link)
        previous = path.resolve() if path.is_symlink() else None
        if not path.is_symlink() and path.is_dir():
            moved = previous = _move_aside(path, token)
        os.replace(link, path)
    except BaseException:
        link.unlink(missing_ok=True)
        if moved is not None and not path.exists():
            moved.rename(path)
        shutil.rmtree(final, ignore_errors=True)
        raise
    return previous


def _move_aside(directory: Path, token: str) -> Path | None:
    """Remove an empty directory, or rename a format 1 checkpoint to a versioned sibling."""
    if not any(directory.iterdir()):
        directory.rmdir()
        return None
    return directory.rename(directory.parent / f".{directory.name}.v-legacy-{token}")


def _remove_old_versions(path: Path, *, keep: Sequence[Path | None]) -> None:
    """Delete versioned siblings of ``path`` other than ``keep`` (current and previous)."""
    pattern = re.compile(re.escape(f".{path.name}.v-") + r"(?:[0-9a-f]{16}|legacy)-[a-z0-9_]+")
    kept = {p.resolve() for p in keep if p is not None}
    for sibling in path.parent.iterdir():
        if (pattern.fullmatch(sibling.name) and not sibling.is_symlink()
                and sibling.resolve() not in kept):
            shutil.rmtree(sibling, ignore_errors=True)


def _embedding_tensors(embeddings: EmbeddingTables) -> dict[str, torch.Tensor]:
    tensors = {
        "joint": embeddings.joint.float(),
        "fusion_weights": embeddings.fusion_weights,
        "mask": embeddings.mask.bool(),
        **{f"modality.{m}": _half(t) for m, t in embeddings.modalities.items()},
        **{name: t.float() for name in RANKING_TENSORS
           if (t := getattr(embeddings, name)) is not None},
    }
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _half(table: torch.Tensor) -> torch.Tensor:
    """``table`` in float16 where that keeps it finite (half the bytes; the breakdown of a
    cosine into modalities needs no more), else as it is."""
    half = table.detach().half()
    return half if bool(torch.isfinite(half).all()) or not bool(torch.isfinite(table).all()) \
        else table


def _write_entities(path: Path, entities: EntityTable) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(ENTITIES_HEADER + "\n")
        for ent_id, kg, uri in zip(entities.ids, entities.kgs, entities.uris, strict=True):
            handle.write(f"{ent_id}\t{kg}\t{uri}\n")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_bytes(_json_bytes(value))


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


# ------------------------------------------------------------------------------------ loading


def load_checkpoint(path: Path, *, with_weights: bool = False, verify: bool = True) -> Checkpoint:
    """Read and validate a checkpoint directory; raise CheckpointError naming what is wrong.

    ``verify=False`` skips the SHA-256 of each file (sizes and the model version are still
    checked); it saves about a second per 600 MB.
    """
    path = Path(path)
    attempt = 1
    while True:
        directory = _resolve(path)
        try:
            return _load_unchanged(path, directory, with_weights=with_weights, verify=verify)
        except CheckpointError:
            if attempt == READ_ATTEMPTS or not _replaced(path, directory):
                raise
        logger.info("checkpoint %s was replaced while it was read; reading it again", path)
        attempt += 1


def _replaced(path: Path, directory: Path | None) -> bool:
    """Whether ``path`` names another directory than ``directory`` now. A missing ``path`` may
    be a format 1 directory moved aside for its symlink: give the switch an instant."""
    if directory is None:
        time.sleep(MIGRATION_WAIT_S)
    return _resolve(path) != directory


def _resolve(path: Path) -> Path | None:
    """The directory ``path`` names now (symlinks followed), or None."""
    return path.resolve() if path.is_dir() else None


def _load_unchanged(path: Path, directory: Path | None, *, with_weights: bool,
                    verify: bool) -> Checkpoint:
    """Load ``directory``; refuse if it was deleted or moved aside meanwhile."""
    if directory is None:
        raise CheckpointError(f"checkpoint directory {path} does not exist{_dangling(path)}")
    before = _identity(directory)
    checkpoint = _load(path, directory, with_weights=with_weights, verify=verify)
    if _identity(directory) != before:
        raise CheckpointError(f"checkpoint {path} was replaced while it was read")
    return checkpoint


def _dangling(path: Path) -> str:
    return f" (a symlink to the missing {os.readlink(path)})" if path.is_symlink() else ""


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = directory.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _load(path: Path, directory: Path, *, with_weights: bool, verify: bool) -> Checkpoint:
    """Read every file from ``directory``; name ``path`` (what the caller asked for) in errors."""
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    config = _read_json(directory / CONFIG_FILE, shown=path / CONFIG_FILE)
    _check_header(config, where=str(path / CONFIG_FILE))
    _check_model_config(config, where=str(path / CONFIG_FILE))
    _check_manifest(path, directory, config, digests=verify)
    modalities = list(config["modalities"])
    embeddings = _read_embeddings(directory / EMBEDDINGS_FILE, modalities,
                                  shown=path / EMBEDDINGS_FILE)
    entities = _read_entities(directory / ENTITIES_FILE, shown=path / ENTITIES_FILE)
    _check_consistency(entities, embeddings, modalities, source=path)
    _check_values(embeddings, shown=path / EMBEDDINGS_FILE)
    weights = (_read_safetensors(directory / WEIGHTS_FILE, shown=path / WEIGHTS_FILE)
               if with_weights else {})
    decisions = (_read_decisions(directory / DECISIONS_FILE, shown=path / DECISIONS_FILE)
                 if _lists(directory, config, DECISIONS_FILE) else None)
    history = (_read_json(directory / HISTORY_FILE, shown=path / HISTORY_FILE)
               if _lists(directory, config, HISTORY_FILE) else None)
    _check_decisions(decisions, config, entities.kgs, where=f"checkpoint {path}")
    return Checkpoint(path=path, config=config, entities=entities, embeddings=embeddings,
                      split=_read_json(directory / SPLIT_FILE, shown=path / SPLIT_FILE),
                      metrics=_read_json(directory / METRICS_FILE, shown=path / METRICS_FILE),
                      weights=weights, decisions=decisions, history=history)


# ----------------------------------------------------------------------------------- manifest


def _lists(directory: Path, config: Mapping[str, Any], name: str) -> bool:
    """Whether the checkpoint has the optional file ``name``: listed in the manifest (format 2;
    an unlisted file is unverified, so it is not read) or present (format 1)."""
    if config["format_version"] == 1:
        return (directory / name).is_file()
    return name in config["files"]


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version_of(config: Mapping[str, Any]) -> str:
    """The model version a config (with its manifest) must carry."""
    body = {k: v for k, v in config.items() if k != "model_version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_manifest(path: Path, directory: Path, config: Mapping[str, Any], *,
                    digests: bool) -> None:
    """Refuse a checkpoint whose files or model version disagree with its manifest."""
    if config["format_version"] == 1:
        logger.warning("checkpoint %s has format_version 1 (no manifest): its files are not "
                       "verified; write it again to get a verifiable one", path)
        return
    if config["model_version"] != _version_of(config):
        raise CheckpointError(
            f"checkpoint {path}: {CONFIG_FILE}: model_version {config['model_version']!r} does "
            f"not match its manifest (edited by hand or tampered with)")
    for name, entry in config["files"].items():
        try:
            size = (directory / name).stat().st_size
            actual = _sha256(directory / name) if digests and size == entry["bytes"] else None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {path}: {name} (listed in the manifest) is not "
                                  f"readable ({_one_line(exc)})") from exc
        if size != entry["bytes"]:
            raise CheckpointError(f"checkpoint {path}: {name} is {size} bytes, the manifest says "
                                  f"{entry['bytes']} (truncated or replaced)")
        if actual is not None and actual != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} sha256 does not match the manifest "
                                  f"(modified after it was written)")


# ------------------------------------------------------------------------------------- config


def _check_header(config: Mapping[str, Any], *, where: str) -> None:
    """The keys write_checkpoint generates: format, model version and manifest."""
    version = config.get("format_version")
    if type(version) is not int or version not in READABLE_FORMATS:
        raise CheckpointError(f"{where}: format_version {version!r} is not one this version "
                              f"reads {READABLE_FORMATS}")
    model_version = config.get("model_version")
    if not isinstance(model_version, str) or not model_version:
        raise CheckpointError(f"{where}: missing key 'model_version' (a non-empty string)")
    if "embedding_dims" in config and not isinstance(config["embedding_dims"], dict):
        raise CheckpointError(f"{where}: 'embedding_dims' must be a JSON object, not "
                              f"{_short(config['embedding_dims'])}")
    if version >= 2:
        _check_files(config.get("files"), where=where)


def _check_model_config(config: Mapping[str, Any], *, where: str) -> None:
    """The keys training supplies; checked before writing, so what is written loads."""
    _check_modalities(config.get("modalities"), where=where)
    for key in ("config", "data"):
        if key in config and not isinstance(config[key], dict):
            raise CheckpointError(f"{where}: {key!r} must be a JSON object, not "
                                  f"{_short(config[key])}")
    _check_csls_k(config.get("config", {}), where=where)


def _check_modalities(modalities: object, *, where: str) -> None:
    if modalities is None:
        raise CheckpointError(f"{where}: missing key 'modalities'")
    if (not isinstance(modalities, list) or not modalities
            or not all(isinstance(m, str) and m for m in modalities)
            or len(set(modalities)) != len(modalities)):
        raise CheckpointError(f"{where}: 'modalities' must be a non-empty list of unique "
                              f"names, not {_short(modalities)}")


def _check_csls_k(model_config: Mapping[str, Any], *, where: str) -> None:
    evaluation = model_config.get("eval", {})
    if not isinstance(evaluation, dict):
        raise CheckpointError(f"{where}: 'config.eval' must be a JSON object, not "
                              f"{_short(evaluation)}")
    k = evaluation.get("csls_k", 1)
    if type(k) is not int or not 1 <= k <= MAX_CSLS_K:
        raise CheckpointError(f"{where}: 'config.eval.csls_k' must be an integer in "
                              f"1..{MAX_CSLS_K}, not {_short(k)}")


def _check_files(files: object, *, where: str) -> None:
    """The manifest: plain file names, each with a size and a SHA-256, covering DATA_FILES."""
    if not isinstance(files, dict):
        raise CheckpointError(f"{where}: 'files' (the manifest) must be a JSON object, not "
                              f"{_short(files)}")
    missing = [name for name in DATA_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{where}: the manifest ('files') lacks {', '.join(missing)}")
    for name, entry in files.items():
        if name != Path(name).name or name.startswith(".") or name == CONFIG_FILE:
            raise CheckpointError(f"{where}: the manifest ('files') lists {name!r}, which is "
                                  f"not a data file of the checkpoint")
        if (not isinstance(entry, dict) or type(entry.get("bytes")) is not int
                or entry["bytes"] < 0 or not isinstance(entry.get("sha256"), str)
                or not _SHA256.fullmatch(entry["sha256"])):
            raise CheckpointError(f"{where}: 'files.{name}' must be {{\"bytes\": <int>, "
                                  f"\"sha256\": <64 hex digits>}}, not {_short(entry)}")


# -------------------------------------------------------------------------------- embeddings


def _read_embeddings(path: Path, modalities: list[str], *, shown: Path) -> EmbeddingTables:
    tensors = _read_safetensors(path, shown=shown)
    for key in ("joint", "fusion_weights", "mask", *(f"modality.{m}" for m in modalities)):
        if key not in tensors:
            raise CheckpointError(f"{shown}: missing tensor {key!r}")
    return EmbeddingTables(
        joint=tensors["joint"].float(),
        modalities={m: tensors[f"modality.{m}"].float() for m in modalities},
        fusion_weights=tensors["fusion_weights"].float(),
        mask=tensors["mask"].bool(),
        **{name: tensors[name].float() for name in RANKING_TENSORS if name in tensors},
    )


def _check_consistency(entities: EntityTable, embeddings: EmbeddingTables,
                       modalities: list[str], *, source: Path) -> None:
    n = len(entities)
    if n == 0:
        raise CheckpointError(f"checkpoint {source}: {ENTITIES_FILE} holds no entities")
    if sorted(embeddings.modalities) != sorted(modalities):
        raise CheckpointError(
            f"checkpoint {source}: embeddings for modalities {sorted(embeddings.modalities)} "
            f"do not match the configured modalities {sorted(modalities)}")
    shapes = {"joint": embeddings.joint.shape,
              **{f"modality.{m}": t.shape for m, t in embeddings.modalities.items()}}
    for name, shape in shapes.items():
        if len(shape) != 2 or shape[0] != n or shape[1] == 0:
            raise CheckpointError(
                f"checkpoint {source}: embedding {name!r} in {EMBEDDINGS_FILE} has shape "
                f"{tuple(shape)} but the entity table has {n} rows")
    for name in ("fusion_weights", "mask"):
        shape = getattr(embeddings, name).shape
        if tuple(shape) != (n, len(modalities)):
            raise CheckpointError(
                f"checkpoint {source}: {name!r} in {EMBEDDINGS_FILE} has shape {tuple(shape)}, "
                f"expected {(n, len(modalities))}")
    for name in RANKING_TENSORS:
        tensor = getattr(embeddings, name)
        if tensor is not None and tuple(tensor.shape) != (n,):
            raise CheckpointError(
                f"checkpoint {source}: {name!r} in {EMBEDDINGS_FILE} has shape "
                f"{tuple(tensor.shape)}, expected {(n,)}")
    if set(entities.kgs) != {1, 2}:
        raise CheckpointError(
            f"checkpoint {source}: {ENTITIES_FILE} must hold entities of both KGs 1 and 2")


def _check_values(embeddings: EmbeddingTables, *, shown: Path) -> None:
    """NaN and infinity break every ranking; huge finite values mean a diverged model."""
    tables = {"joint": embeddings.joint,
              **{f"modality.{m}": t for m, t in embeddings.modalities.items()}}
    ranking = {name: t[:, None] for name in RANKING_TENSORS
               if (t := getattr(embeddings, name)) is not None}
    for name, tensor in {**tables, "fusion_weights": embeddings.fusion_weights,
                         **ranking}.items():
        for kind, test in (("NaN", torch.isnan), ("infinity", torch.isinf)):
            _refuse_rows(tensor, test, f"{shown}: embedding {name!r} holds {kind}")
    for name, tensor in tables.items():
        _refuse_rows(tensor, lambda rows: rows.abs() > MAX_ABS_EMBEDDING,
                     f"{shown}: embedding {name!r} holds values beyond ±{MAX_ABS_EMBEDDING:g} "
                     f"(a diverged model)")


def _refuse_rows(tensor: torch.Tensor, test: Callable[[torch.Tensor], torch.Tensor],
                 message: str) -> None:
    """CheckpointError naming the first and the number of rows of ``tensor [N, d]`` where
    ``test`` holds anywhere. Rows are tested a block at a time: at 100k entities per KG a test
    of the whole joint embedding at once would copy it (2 GB) while the checkpoint loads."""
    rows = torch.cat([test(tensor[lo:lo + CHECK_ROWS]).any(dim=1)
                      for lo in range(0, len(tensor), CHECK_ROWS)])
    if bool(rows.any()):
        raise CheckpointError(f"{message}, first at row {int(rows.nonzero()[0, 0])} "
                              f"({int(rows.sum())} rows)")


def _read_safetensors(path: Path, *, shown: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(
            f"{shown}: not a readable safetensors file ({_one_line(exc)})") from exc


# ---------------------------------------------------------------------------------- decisions


def _read_decisions(path: Path, *, shown: Path) -> DecisionTables:
    tensors = _read_safetensors(path, shown=shown)
    for name, dtype in DECISION_TENSORS.items():
        if name not in tensors:
            raise CheckpointError(f"{shown}: missing tensor {name!r}")
        if tensors[name].dtype != dtype:
            raise CheckpointError(f"{shown}: tensor {name!r} is {tensors[name].dtype}, "
                                  f"expected {dtype}")
    return DecisionTables(**{name: tensors[name] for name in DECISION_TENSORS})


def _check_decisions(decisions: DecisionTables | None, config: Mapping[str, Any],
                     kgs: Sequence[int], *, where: str) -> None:
    """The decisions file and config.json's "decisions" object come together, and the
    tables describe a one-to-one alignment between the two KGs."""
    settings = config.get(DECISIONS_KEY)
    if decisions is None:
        if settings is not None:
            raise CheckpointError(f"{where}: {CONFIG_FILE} has {DECISIONS_KEY!r} but there is no "
                                  f"{DECISIONS_FILE}")
        return
    threshold = settings.get("threshold") if isinstance(settings, dict) else None
    if type(threshold) not in (int, float) or not 0.0 <= threshold <= 1.0:
        raise CheckpointError(f"{where}: {CONFIG_FILE} needs a {DECISIONS_KEY!r} object with a "
                              f"'threshold' in [0, 1] beside {DECISIONS_FILE}, not "
                              f"{_short(settings)}")
    problem = _decision_problem(decisions, torch.as_tensor(list(kgs)))
    if problem:
        raise CheckpointError(f"{where}: {DECISIONS_FILE}: {problem}")


def _decision_problem(tables: DecisionTables, kgs: torch.Tensor) -> str | None:
    """What makes ``tables`` no one-to-one alignment of these entities (None if nothing)."""
    n = len(kgs)
    for name in DECISION_TENSORS:
        shape = tuple(getattr(tables, name).shape)
        if shape != (n,):
            return f"{name!r} has shape {shape}, expected {(n,)}"
    counterpart, runner_up, probability = tables.counterpart, tables.runner_up, tables.probability
    for name, rows in (("counterpart", counterpart), ("runner_up", runner_up)):
        if bool(((rows < -1) | (rows >= n)).any()):
            return f"{name!r} holds a row outside -1..{n - 1}"
        linked = torch.nonzero(rows >= 0).squeeze(1)
        if bool((kgs[rows[linked]] == kgs[linked]).any()):
            return f"{name!r} pairs an entity with one of its own KG"
    paired = torch.nonzero(counterpart >= 0).squeeze(1)
    if bool((counterpart[counterpart[paired]] != paired).any()):
        return "'counterpart' is not one-to-one (a counterpart's counterpart is another entity)"
    if not bool(((probability >= 0) & (probability <= 1)).all()):
        return "'probability' holds values outside [0, 1] (or NaN)"
    if bool((probability[counterpart < 0] != 0).any()):
        return "an entity without a counterpart has a non-zero 'probability'"
    if bool(((counterpart < 0) | (probability != 1))[tables.seed].any()):
        return "a seed lacks a counterpart or a 'probability' of 1"
    return None


# ----------------------------------------------------------------------------------- entities


def _entity_problem(ent_id: int, kg: int, uri: object) -> str | None:
    """Why a row of the entity table cannot be stored (None when it can): one rule for the
    writer and the reader."""
    if not INT64_MIN <= ent_id <= INT64_MAX:
        return f"entity id {ent_id} does not fit in int64"
    if kg not in (1, 2):
        return f"kg {kg!r} is not 1 or 2"
    if not isinstance(uri, str):
        return f"the identifier {_short(uri)} is not a string"
    return identifier_problem(uri)


def _check_entities(entities: EntityTable, *, source: Path) -> None:
    """The writer's side of the entity rules: rows, then uniqueness."""
    for row, (ent_id, kg, uri) in enumerate(zip(entities.ids, entities.kgs, entities.uris,
                                                 strict=True)):
        problem = _entity_problem(int(ent_id), int(kg), uri)
        if problem:
            raise CheckpointError(f"checkpoint {source}: entity row {row} (id {ent_id}): "
                                  f"{problem}")
    for what, values in (("id", entities.ids), ("URI", entities.uris)):
        repeat = _first_repeat(values)
        if repeat:
            raise CheckpointError(f"checkpoint {source}: entity rows {repeat[0]} and "
                                  f"{repeat[1]} share the {what} {_short(values[repeat[1]])}")


def _first_repeat(values: Sequence[Hashable]) -> tuple[int, int] | None:
    """Indices (first, repeat) of the first value seen twice."""
    seen: dict[Hashable, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            return seen[value], index
        seen[value] = index
    return None


def _read_entities(path: Path, *, shown: Path) -> EntityTable:
    lines = _read_text(path, shown=shown).split("\n")
    if lines[0] != ENTITIES_HEADER:
        raise CheckpointError(f"{shown}:1: expected header 'id<TAB>kg<TAB>uri'")
    if lines[-1] == "":
        lines.pop()
    ids: list[int] = []
    kgs: list[int] = []
    uris: list[str] = []
    for line_no, line in enumerate(lines[1:], start=2):
        ent_id, kg, uri = _parse_entity(line, where=f"{shown}:{line_no}")
        ids.append(ent_id)
        kgs.append(kg)
        uris.append(uri)
    for what, values in (("id", ids), ("URI", uris)):
        repeat = _first_repeat(values)
        if repeat:
            raise CheckpointError(f"{shown}:{repeat[1] + 2}: {what} {_short(values[repeat[1]])} "
                                  f"repeats line {repeat[0] + 2}")
    return EntityTable(ids=ids, kgs=kgs, uris=uris)


def _parse_entity(line: str, *, where: str) -> tuple[int, int, str]:
    parts = line.split("\t")
    if len(parts) > 3:
        raise CheckpointError(f"{where}: expected 'id<TAB>kg(1|2)<TAB>uri', got {len(parts)} "
                              f"fields (a tab in the URI?)")
    if len(parts) != 3 or not _ENTITY_ID.fullmatch(parts[0]) or parts[1] not in {"1", "2"}:
        raise CheckpointError(f"{where}: expected 'id<TAB>kg(1|2)<TAB>uri', got {_short(line)}")
    ent_id, kg, uri = int(parts[0]), int(parts[1]), parts[2]
    problem = _entity_problem(ent_id, kg, uri)
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    return ent_id, kg, uri


# ---------------------------------------------------------------------------------- text/JSON


def _read_text(path: Path, *, shown: Path) -> str:
    """UTF-8 text without a leading BOM; a decoding error names the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{shown}: not readable ({_one_line(exc)})") from exc
    try:
        return strip_bom(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CheckpointError(f"{shown}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at "
                              f"offset {exc.start})") from exc


def _read_json(path: Path, *, shown: Path) -> dict[str, Any]:
    text = _read_text(path, shown=shown)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{shown}: not readable JSON ({_one_line(exc)})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{shown}: expected a JSON object")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

