"""Read and validate a KG-pair folder in the EVA/MCLEA layout (see ``../shared/data/README.md``).

Every problem with the input is reported as a :class:`DataError` whose one-line message names
the file and the line, so a user can fix the data without reading a stack trace. Problems that
the real benchmarks do have and that do not break alignment are counted warnings instead, kept
in :attr:`KGPairData.warnings`: duplicate gold lines, an entity in two gold pairs (the first
pair in file order is kept, so the gold is one-to-one), attribute rows for undeclared URIs, an
empty relation file. A UTF-8 byte order mark and CRLF line endings are accepted.

Row order is fixed: KG1's entities in file order, then KG2's. All arrays index entities by row.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimea.model.identifiers import identifier_problem, strip_bom

logger = logging.getLogger(__name__)

GOLD_FILES = ("ill_ent_ids", "ref_ent_ids")
VISUAL_NPZ = "visual_features.npz"
VISUAL_PICKLE_SUFFIX = "_id_img_feature_dict.pkl"
MIN_GOLD_PAIRS = 2  # one to train on and one to test on
# Pre-extracted CNN features stay well below 1e3; values beyond this are a unit or format
# mistake and make training diverge.
MAX_VISUAL_MAGNITUDE = 1e4
INT64 = np.iinfo(np.int64)
MAX_INT_CHARS = 40  # longer than any int64; int() of a huge string would only waste time
MAX_SHOWN_CHARS = 40  # how much of an offending value a message quotes
_DIGITS = re.compile(r"[+-]?\d+")

Warn = Callable[[str], None]


class DataError(ValueError):
    """Bad input data; the message names the file and line: ``f"{path}:{line_no}: problem"``."""

    def __init__(self, path: Path | str, line_no: int | None, message: str) -> None:
        where = f"{path}:{line_no}" if line_no is not None else f"{path}"
        # one line, whatever a wrapped exception's text held
        super().__init__(re.sub(r"[\r\n]+", " ", f"{where}: {message}"))
        self.path = Path(path)
        self.line_no = line_no


@dataclass(frozen=True, eq=False)
class KGPairData:
    """Two knowledge graphs and their gold alignment, indexed by entity row (KG1 rows first)."""

    root: Path
    ids: np.ndarray  # int64 [N] original entity ids
    kgs: np.ndarray  # int8 [N], 1 or 2
    uris: list[str]
    num_kg1: int
    triples: np.ndarray  # int64 [T, 3] (head_row, relation, tail_row)
    num_relations: int
    gold: np.ndarray  # int64 [P, 2] (kg1_row, kg2_row)
    attributes: list[list[str]]
    attribute_values: list[list[tuple[str, str]]] | None
    visual: np.ndarray | None  # float32 [N, Dv], zero rows where missing
    visual_mask: np.ndarray | None  # bool [N]
    warnings: list[str] = field(default_factory=list)
    # int64 [R, 2]: (kg, relation id in that KG's file) for each remapped relation id
    relation_sources: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    row_by_id: dict[int, int] = field(default_factory=dict)

    @property
    def num_entities(self) -> int:
        return len(self.ids)

    @property
    def num_kg2(self) -> int:
        return self.num_entities - self.num_kg1

    @property
    def kg1_rows(self) -> np.ndarray:
        return np.arange(self.num_kg1, dtype=np.int64)

    @property
    def kg2_rows(self) -> np.ndarray:
        return np.arange(self.num_kg1, self.num_entities, dtype=np.int64)

    @property
    def has_visual(self) -> bool:
        return self.visual is not None

    def row_of(self, entity_id: int) -> int:
        """Row of an original entity id; ``KeyError`` if the id is not declared."""
        return self.row_by_id[int(entity_id)]

    def rows_of(self, entity_ids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`row_of` for an int array of any shape; ``KeyError`` if undeclared."""
        query = np.asarray(entity_ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        rows = _lookup(self.ids[order], order.astype(np.int64), query)
        if (rows < 0).any():
            raise KeyError(int(query[rows < 0].ravel()[0]))
        return rows

    def summary(self) -> dict[str, int | bool]:
        """Sizes for logs and checkpoint metadata."""
        return {"kg1_entities": self.num_kg1, "kg2_entities": self.num_kg2,
                "triples": len(self.triples), "relations": self.num_relations,
                "gold_pairs": len(self.gold), "visual": self.has_visual,
                "entities_with_attributes": sum(1 for a in self.attributes if a)}


def _shown(value: str) -> str:
    """``repr`` of ``value``, cut to a readable length (a bad field can be megabytes)."""
    if len(value) <= MAX_SHOWN_CHARS:
        return repr(value)
    return f"{value[:MAX_SHOWN_CHARS]!r}... ({len(value)} characters)"


def _present(path: Path) -> bool:
    """Whether ``path`` exists; ``DataError`` if it does but cannot be read as a file."""
    if path.is_dir():
        raise DataError(path, None, "is a directory, expected a file")
    if path.exists() and not path.is_file():
        raise DataError(path, None, "is not a regular file")
    return path.exists()


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 without a byte order mark."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, f"cannot read the file: {err.strerror or err}") from None
    try:
        return strip_bom(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, raw.count(b"\n", 0, err.start) + 1,
                        f"not valid UTF-8 (byte {raw[err.start]:#04x}); save the file as "
                        f"UTF-8") from None


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, tab-separated fields) for each non-empty line.

    A CR is accepted only as part of a CRLF line ending: anywhere else it is a damaged line,
    and a NUL means a binary file; neither can be written back into a tab-separated table.
    """
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.removesuffix("\r")
        if "\x00" in line:
            raise DataError(path, line_no, "contains a NUL byte (a binary file?)")
        if "\r" in line:
            raise DataError(path, line_no, "contains a carriage return inside the line")
        if line.strip():
            yield line_no, line.split("\t")


def _field_count_problem(fields: list[str], width: int, names: str) -> str | None:
    """Why a line of ``fields`` is not ``width`` fields (``None`` when it is)."""
    if len(fields) == width:
        return None
    hint = " (a trailing tab?)" if len(fields) > width and fields[-1] == "" else ""
    return f"expected {width} tab-separated fields ({names}), got {len(fields)}{hint}"


def _int(path: Path, line_no: int, value: str, what: str) -> int:
    """``value`` as an int64, or a ``DataError`` quoting (a cut of) the offending field."""
    text = value.strip()
    number: int | None = None
    if len(text) <= MAX_INT_CHARS:
        with contextlib.suppress(ValueError):
            number = int(text)
    if number is None and not _DIGITS.fullmatch(text):
        raise DataError(path, line_no, f"{what} {_shown(value)} is not an integer")
    if number is None or not INT64.min <= number <= INT64.max:
        raise DataError(path, line_no, f"{what} {_shown(value)} is out of the 64-bit integer "
                                       f"range")
    return number


def _require(root: Path, name: str) -> Path:
    path = root / name
    if not _present(path):
        raise DataError(path, None, f"required file {name!r} is missing from {root}")
    return path


def _read_int_rows(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse lines of one integer per name; return ([n, width] int64, line numbers [n])."""
    width = len(names)
    values: list[int] = []
    line_nos: list[int] = []
    for line_no, fields in _lines(path):
        problem = _field_count_problem(fields, width, ", ".join(names))
        if problem:
            raise DataError(path, line_no, problem)
        values.extend(_int(path, line_no, f, name) for f, name in zip(fields, names, strict=True))
        line_nos.append(line_no)
    return (np.asarray(values, dtype=np.int64).reshape(-1, width),
            np.asarray(line_nos, dtype=np.int64))


def _lookup(sorted_ids: np.ndarray, order_rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each query id, -1 if undeclared; ``order_rows[i]`` is ``sorted_ids[i]``'s row."""
    if len(sorted_ids) == 0:
        return np.full(query.shape, -1, np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, query), 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == query
    return np.where(found, order_rows[pos], -1)


def load_kg_pair(root: Path, *, visual: Path | None = None,
                 allow_pickle: bool = False) -> KGPairData:
    """Load and validate a KG-pair folder; raises :class:`DataError` on any bad input."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "data folder does not exist")
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning("%s", message)

    ids, uris, num_kg1, row_by_id, row_by_uri = _read_entity_tables(root)
    kgs = np.where(np.arange(len(ids)) < num_kg1, 1, 2).astype(np.int8)
    order = np.argsort(ids, kind="stable")
    index = (ids[order], order.astype(np.int64))  # (sorted ids, their rows) for _lookup
    triples, relation_sources = _read_triples(root, index, kgs, warn)
    gold = _read_gold(root, index, kgs, warn)

    attributes: list[list[str]] = [[] for _ in ids]
    for row, fields in _attribute_lines(root, "training_attrs", None, row_by_uri, warn):
        names = attributes[row]
        names.extend(a for a in fields if a and a not in names)
    attribute_values: list[list[tuple[str, str]]] | None = None
    if any(_present(root / f"attr_triples_{kg}") for kg in (1, 2)):
        attribute_values = [[] for _ in ids]
        for row, fields in _attribute_lines(root, "attr_triples", 3, row_by_uri, warn):
            attribute_values[row].append((fields[0], fields[1]))
        if not any(attributes):  # only attr_triples were shipped: take the names from them
            attributes = [list(dict.fromkeys(a for a, _ in vals)) for vals in attribute_values]

    visual_matrix, visual_mask = _load_visual(root, visual, index, warn,
                                              allow_pickle=allow_pickle)
    data = KGPairData(
        root=root, ids=ids, kgs=kgs, uris=uris, num_kg1=num_kg1, triples=triples,
        num_relations=len(relation_sources), gold=gold, attributes=attributes,
        attribute_values=attribute_values, visual=visual_matrix, visual_mask=visual_mask,
        warnings=warnings, relation_sources=relation_sources, row_by_id=row_by_id,
    )
    logger.info("loaded %s: %s", root, data.summary())
    return data


Index = tuple[np.ndarray, np.ndarray]


def _read_entity_tables(root: Path) -> tuple[np.ndarray, list[str], int, dict[int, int],
                                               dict[str, int]]:
    """Entities of both KGs (KG1 rows first, file order) with id and URI uniqueness checked."""
    ids: list[int] = []
    uris: list[str] = []
    row_by_id: dict[int, int] = {}
    row_by_uri: dict[str, int] = {}
    num_kg1 = 0
    for kg in (1, 2):
        path = _require(root, f"ent_ids_{kg}")
        count = 0
        for line_no, fields in _lines(path):
            problem = _field_count_problem(fields, 2, "id, uri")
            if problem:
                raise DataError(path, line_no, problem)
            eid, uri = _int(path, line_no, fields[0], "entity id"), fields[1]
            problem = identifier_problem(uri)  # the service must be able to load it back
            if problem:
                raise DataError(path, line_no, f"bad entity URI: {problem}")
            first = row_by_id.get(eid)
            if first is not None:
                first_kg = 1 if first < num_kg1 or kg == 1 else 2
                problem = ("duplicate entity id" if first_kg == kg
                           else "the two KGs' id ranges overlap")
                raise DataError(path, line_no, f"{problem}: id {eid} is already declared in "
                                               f"ent_ids_{first_kg}")
            first = row_by_uri.get(uri)
            if first is not None:
                first_kg = 1 if first < num_kg1 or kg == 1 else 2
                raise DataError(path, line_no, f"duplicate URI {_shown(uri)}, already declared in "
                                               f"ent_ids_{first_kg}")
            row_by_id[eid] = row_by_uri[uri] = len(ids)
            ids.append(eid)
            uris.append(uri)
            count += 1
        if count == 0:
            raise DataError(path, None, "no entities declared")
        if kg == 1:
            num_kg1 = count
    return np.asarray(ids, dtype=np.int64), uris, num_kg1, row_by_id, row_by_uri


def _read_triples(root: Path, index: Index, kgs: np.ndarray,
                  warn: Warn) -> tuple[np.ndarray, np.ndarray]:
    """Triples as rows, with relations remapped to 0..R-1 over (kg, file relation id).

    Relation ids are namespaced by KG: fbdb15k numbers both KGs' relations from 0, and relation
    5 of FB15K has nothing to do with relation 5 of DB15K. An empty file is allowed (a KG of
    attributes and images alone) but warned about, as it is more often a copying mistake.
    """
    parts: list[np.ndarray] = []
    for kg in (1, 2):
        path = _require(root, f"triples_{kg}")
        raw, line_nos = _read_int_rows(path, ["head", "relation", "tail"])
        if len(raw) == 0:
            warn(f"{root.name}/{path.name}: no relation triples (KG{kg} has no structure)")
        rows = {col: _lookup(*index, raw[:, col]) for col in (0, 2)}
        for col, role in ((0, "head"), (2, "tail")):
            bad = np.flatnonzero(rows[col] < 0)
            if len(bad):
                raise DataError(path, int(line_nos[bad[0]]), f"{role} entity {raw[bad[0], col]} "
                                f"is not declared in ent_ids_1 or ent_ids_2")
            bad = np.flatnonzero(kgs[rows[col]] != kg)
            if len(bad):
                raise DataError(path, int(line_nos[bad[0]]), f"{role} entity {raw[bad[0], col]} "
                                f"belongs to the other KG (ent_ids_{3 - kg})")
        parts.append(np.stack([rows[0], raw[:, 1], rows[2], np.full(len(raw), kg)], axis=1))
    stacked = np.concatenate(parts).astype(np.int64)
    sources, relation = np.unique(stacked[:, [3, 1]], axis=0, return_inverse=True)
    triples = stacked[:, :3].copy()
    triples[:, 1] = relation.ravel()
    return triples, sources.astype(np.int64).reshape(-1, 2)


def _read_gold(root: Path, index: Index, kgs: np.ndarray, warn: Warn) -> np.ndarray:
    """Gold pairs as rows, one-to-one (see :func:`_one_to_one`), at least ``MIN_GOLD_PAIRS``."""
    path = next((root / n for n in GOLD_FILES if _present(root / n)), None)
    if path is None:
        raise DataError(root / GOLD_FILES[0], None,
                        f"required file {GOLD_FILES[0]!r} (or {GOLD_FILES[1]!r}) is missing "
                        f"from {root}")
    raw, line_nos = _read_int_rows(path, ["kg1 id", "kg2 id"])
    rows = _lookup(*index, raw)
    for col, kg in ((0, 1), (1, 2)):
        bad = np.flatnonzero((rows[:, col] < 0) | (kgs[np.maximum(rows[:, col], 0)] != kg))
        if len(bad):
            i = bad[0]
            where = "undeclared" if rows[i, col] < 0 else f"in KG{3 - kg}"
            raise DataError(path, int(line_nos[i]), f"gold pair column {col + 1} must be a KG{kg} "
                            f"entity id, but {raw[i, col]} is {where}")
    keep = _one_to_one(rows, line_nos, lambda message: warn(f"{root.name}/{path.name}: {message}"))
    if len(keep) < MIN_GOLD_PAIRS:
        found = f"only {len(keep)} gold pair" if len(keep) else "no gold pairs"
        raise DataError(path, None, f"{found}: at least {MIN_GOLD_PAIRS} needed (one to train "
                                    f"on, one to test on)")
    return rows[keep].astype(np.int64).reshape(-1, 2)


def _one_to_one(rows: np.ndarray, line_nos: np.ndarray, warn: Warn) -> np.ndarray:
    """Indices of the pairs kept: in file order, each pair whose two entities no kept pair has.

    Gold links are one-to-one; a repeated line or an entity in two pairs (FB15K-DB15K has four)
    would otherwise put the same entity in the training and the test part.
    """
    seen: set[tuple[int, int]] = set()
    used: tuple[set[int], set[int]] = (set(), set())
    keep: list[int] = []
    repeated: list[int] = []
    reused: list[int] = []
    for i, (a, b) in enumerate(rows.tolist()):
        if (a, b) in seen:
            repeated.append(i)
        elif a in used[0] or b in used[1]:
            reused.append(i)
        else:
            keep.append(i)
            used[0].add(a)
            used[1].add(b)
        seen.add((a, b))
    if repeated:
        warn(f"{len(repeated)} duplicate gold lines dropped (first: line "
             f"{line_nos[repeated[0]]})")
    if reused:
        warn(f"{len(reused)} gold pairs reuse an entity of an earlier pair and were dropped, the "
             f"earlier pair kept (first: line {line_nos[reused[0]]})")
    return np.asarray(keep, dtype=np.int64)


def _attribute_lines(root: Path, stem: str, width: int | None, row_by_uri: dict[str, int],
                     warn: Warn) -> Iterator[tuple[int, list[str]]]:
    """Yield (row, fields after the URI) from ``{stem}_1`` and ``{stem}_2`` where present.

    Lines naming an undeclared URI occur in real releases; they are counted, not fatal.
    """
    for kg in (1, 2):
        path = root / f"{stem}_{kg}"
        if not _present(path):
            continue
        unknown = 0
        for line_no, fields in _lines(path):
            problem = (None if width is None
                       else _field_count_problem(fields, width, "uri, attribute, value"))
            if problem:
                raise DataError(path, line_no, problem)
            row = row_by_uri.get(fields[0])
            if row is None:
                unknown += 1
            else:
                yield row, fields[1:]
        if unknown:
            warn(f"{root.name}/{path.name}: {unknown} lines name an undeclared entity URI "
                 f"(ignored)")


def _discover_visual(folder: Path) -> Path | None:
    """Find image features in ``folder``: npz first, then npy with ``.ids``, then a pickle."""
    if _present(folder / VISUAL_NPZ):
        return folder / VISUAL_NPZ
    for candidates in (
        sorted(p for p in folder.glob("*.npy") if _present(p.with_suffix(".ids"))),
        sorted(folder.glob("*" + VISUAL_PICKLE_SUFFIX)),
    ):
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(folder, None, f"several visual feature files ({names}); "
                                          f"choose one with --visual")
        if candidates:
            return candidates[0]
    return None


def _read_visual_file(path: Path, *, allow_pickle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids [K] int64, features [K, Dv] float32) from an npz, npy+ids or pickle file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                missing = {"ids", "features"} - set(archive.files)
                if missing:
                    raise DataError(path, None, f"npz archive lacks array(s) {sorted(missing)}; "
                                                f"expected 'ids' [K] and 'features' [K, Dv]")
                ids, features = archive["ids"], archive["features"]
        elif suffix == ".npy":
            features = np.load(path, allow_pickle=False)
            ids_path = path.with_suffix(".ids")
            if not _present(ids_path):
                raise DataError(ids_path, None, f"{path.name} needs a sibling {ids_path.name} "
                                                f"with one entity id per line")
            ids = np.asarray([_int(ids_path, n, f[0], "entity id") for n, f in _lines(ids_path)],
                             dtype=np.int64)
        elif suffix == ".pkl":
            if not allow_pickle:
                raise DataError(path, None, "refusing to read a pickle: unpickling runs code the "
                                            "file contains; pass --allow-pickle if you trust it")
            with path.open("rb") as handle:
                table = pickle.load(handle)  # the user opted in to this
            if not isinstance(table, dict) or not table:
                raise DataError(path, None, "expected a non-empty dict entity id -> vector")
            ids = np.asarray([int(k) for k in table], dtype=np.int64)
            features = np.stack([np.asarray(v).ravel() for v in table.values()])
        else:
            raise DataError(path, None, "unsupported visual feature file; use .npz (ids, "
                                        "features), .npy with a sibling .ids, or .pkl")
    except (OSError, ValueError, TypeError, AttributeError, ImportError, EOFError, OverflowError,
            zipfile.BadZipFile, pickle.UnpicklingError) as err:  # whatever a bad file raises
        if isinstance(err, DataError):
            raise
        raise DataError(path, None, f"cannot read visual features: {err}") from None
    if ids.dtype.kind not in "iu":
        raise DataError(path, None, f"entity ids must be integers, got dtype {ids.dtype}")
    if features.dtype.kind not in "biuf":
        raise DataError(path, None, f"features must be real numbers, got dtype {features.dtype}")
    if features.ndim != 2 or ids.ndim != 1 or len(ids) != len(features) or features.shape[1] == 0:
        raise DataError(path, None, f"expected ids [K] and features [K, Dv] with Dv > 0, got "
                                    f"{tuple(ids.shape)} and {tuple(features.shape)}")
    _check_feature_values(path, ids, features)  # before float32, which turns 1e39 into inf
    return ids.astype(np.int64), features.astype(np.float32)


def _check_feature_values(path: Path, ids: np.ndarray, features: np.ndarray) -> None:
    """Refuse NaN, inf and magnitudes beyond ``MAX_VISUAL_MAGNITUDE``, naming an entity."""
    for bad_rows, problem in (
        (~np.isfinite(features).all(axis=1), "contain NaN or inf"),
        ((np.abs(features) > MAX_VISUAL_MAGNITUDE).any(axis=1),
         f"have values beyond +-{MAX_VISUAL_MAGNITUDE:g} (CNN features are far smaller; "
         f"rescale them)"),
    ):
        bad = np.flatnonzero(bad_rows)
        if len(bad):
            raise DataError(path, None, f"{len(bad)} feature vectors {problem} (first: entity "
                                        f"{ids[bad[0]]})")


def _load_visual(root: Path, visual: Path | None, index: Index, warn: Warn, *,
                 allow_pickle: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Visual matrix [N, Dv] and mask [N]; entities without a vector get zeros, mask False."""
    if visual is None:
        path = _discover_visual(root)
    elif Path(visual).is_dir():
        path = _discover_visual(Path(visual))
        if path is None:
            raise DataError(visual, None, "no visual feature file found in this folder")
    else:
        path = Path(visual)
        if not _present(path):
            raise DataError(path, None, "visual feature file does not exist")
    if path is None:
        return None, None
    ids, features = _read_visual_file(path, allow_pickle=allow_pickle)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(path, None, f"entity id {uniq[counts > 1][0]} has more than one vector")
    rows = _lookup(*index, ids)
    unknown = int((rows < 0).sum())
    if unknown:
        warn(f"{root.name}/{path.name}: {unknown} vectors for undeclared entity ids (ignored)")
    n = len(index[0])
    matrix = np.zeros((n, features.shape[1]), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    known = rows >= 0
    matrix[rows[known]] = features[known]
    mask[rows[known]] = True
    logger.info("visual features from %s: %d of %d entities, dim %d", path, int(mask.sum()), n,
                features.shape[1])
    return matrix, mask
