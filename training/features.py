"""Turn a :class:`~training.data.KGPairData` into the tensors the MIMEA encoders read.

* structure: one undirected graph over both KGs (their disjoint union), typed edges;
* relation: bag of (relation, direction) counts per entity;
* attribute: bag of attribute names, plus standardised numeric values where the data has them;
* visual: the pre-extracted image features as loaded.

Each modality comes with a bool mask: an entity whose feature row is empty is *missing* for
that modality (never a made-up vector), and the model must ignore it there.
Everything is built with numpy/scipy sparse matrices and converted to dense float32 at the end.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from mimea.model.config import DataConfig
from mimea.model.mimea import GraphInputs
from mimea.training.data import KGPairData

logger = logging.getLogger(__name__)

MIN_NUMERIC_COUNT = 5  # entities needed before an attribute's values are worth standardising
NUMERIC_TOP_K = 100  # most numeric value columns: the most widely filled numeric attributes
LOG_SCALE_RATIO = 100.0  # max|x| / median|x| above which values are log-compressed first
HUGE_VALUE = 1e100  # values are rescaled before standardising beyond this, so it cannot overflow
_DATE = re.compile(r"^(-?\d{1,4})-(\d{1,2})(?:-(\d{1,2}))?(?:$|[T\s])")


@dataclass(frozen=True)
class ModalInputs(GraphInputs):
    """Model inputs for all N entities (rows as in :class:`KGPairData`), with column labels.

    edge_index ``[2, E]`` holds both directions and no self-loops; edge_type is r for h→t and
    r + R for t→h (so num_edge_types = 2R); ``masks`` has "structure" and each feature modality.
    """

    feature_names: dict[str, list[str]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """Modality names in a fixed order: structure first, then the feature modalities."""
        return ["structure", *self.features]


def local_name(attribute: str) -> str:
    """``<http://dbpedia.org/property/birthDate>`` -> ``birthDate``, so both KGs share names."""
    text = attribute.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    tail = text[max(text.rfind("/"), text.rfind("#")) + 1:]
    return tail or text


def parse_number(value: str) -> float | None:
    """A float from a literal, dates as year + fraction of the year; None if not numeric.

    ``nan``, ``inf`` and overflowing literals (``1e400``) count as not numeric: one of them
    would turn a whole value column into NaN.
    """
    text = value.strip()
    if "^^" in text:
        text = text[: text.index("^^")]
    text = text.strip().strip('"').strip()
    match = _DATE.match(text)
    if match:
        year, month, day = int(match[1]), int(match[2]), int(match[3] or 1)
        if 1 <= month <= 12 and 1 <= day <= 31:
            return year + (month - 1) / 12.0 + (day - 1) / 365.25
        return float(year)
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _top_columns(frequency: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most frequent non-zero columns; ties broken by index."""
    order = np.argsort(-frequency, kind="stable")
    order = order[frequency[order] > 0]
    return order[:k]


def _row_normalise(matrix: sp.csr_matrix) -> np.ndarray:
    """Dense float32 copy of ``matrix`` with unit L2 rows (empty rows stay zero)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    squares = matrix.copy()
    squares.data **= 2
    norms = np.sqrt(np.asarray(squares.sum(axis=1), dtype=np.float32).ravel())
    norms[norms == 0] = 1.0
    matrix.data /= np.repeat(norms, np.diff(matrix.indptr))
    return matrix.toarray()


def build_graph(data: KGPairData) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Typed undirected graph: each triple gives h->t (type r) and t->h (type r + R)."""
    heads, rels, tails = data.triples.T if len(data.triples) else (np.zeros(0, np.int64),) * 3
    keep = heads != tails  # self-loops are the model's business
    heads, rels, tails = heads[keep], rels[keep], tails[keep]
    num_rel = data.num_relations
    src = np.concatenate([heads, tails])
    dst = np.concatenate([tails, heads])
    typ = np.concatenate([rels, rels + num_rel])
    n, t = max(data.num_entities, 1), max(2 * num_rel, 1)
    if n * n * t < 2**62:  # one int64 key per edge is much faster than unique rows
        _, first = np.unique((src * n + dst) * t + typ, return_index=True)
    else:
        _, first = np.unique(np.stack([src, dst, typ], axis=1), axis=0, return_index=True)
    # ``first`` is ordered by (src, dst, type)
    edge_index = torch.from_numpy(np.stack([src[first], dst[first]]).astype(np.int64))
    edge_type = torch.from_numpy(typ[first].astype(np.int64))
    return edge_index, edge_type, 2 * num_rel


def relation_bag(data: KGPairData, top_k: int) -> tuple[np.ndarray, list[str]]:
    """[N, K] log1p counts of (relation, out) for heads and (relation, in) for tails, L2-rows."""
    n, num_rel = data.num_entities, data.num_relations
    heads, rels, tails = data.triples.T if len(data.triples) else (np.zeros(0, np.int64),) * 3
    rows = np.concatenate([heads, tails])
    cols = np.concatenate([rels, rels + num_rel])
    counts = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                           shape=(n, 2 * num_rel))
    top = _top_columns(np.asarray(counts.sum(axis=0)).ravel(), top_k)
    chosen = sp.csr_matrix(counts[:, top])
    chosen.data = np.log1p(chosen.data)
    matrix = _row_normalise(chosen)
    names = []
    for col in top:
        kg, raw = data.relation_sources[col % num_rel]
        names.append(f"kg{kg}:{raw}:{'out' if col < num_rel else 'in'}")
    return matrix, names


def attribute_bag(data: KGPairData, options: DataConfig) -> tuple[np.ndarray, np.ndarray,
                                                                  list[str]]:
    """([N, Ka] features, bool [N] mask, column names) for attribute names (+ values), as
    ``options.attribute_top_k`` and ``options.use_attribute_values`` say."""
    n = data.num_entities
    short: dict[str, str] = {}  # few distinct attribute URIs, many occurrences

    def local(attribute: str) -> str:
        name = short.get(attribute)
        if name is None:
            name = short[attribute] = local_name(attribute)
        return name

    per_row: list[list[str]] = []
    for row in range(n):
        names = [local(a) for a in data.attributes[row]]
        if data.attribute_values is not None:
            names.extend(local(a) for a, _ in data.attribute_values[row])
        per_row.append(list(dict.fromkeys(names)))
    frequency = Counter(name for names in per_row for name in names)
    vocabulary = sorted(frequency, key=lambda name: (-frequency[name], name))
    vocabulary = vocabulary[: options.attribute_top_k]
    column_of = {name: i for i, name in enumerate(vocabulary)}
    rows: list[int] = []
    cols: list[int] = []
    for row, names in enumerate(per_row):
        for name in names:
            col = column_of.get(name)
            if col is not None:
                rows.append(row)
                cols.append(col)
    presence = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                             shape=(n, len(vocabulary)))
    matrix = _row_normalise(presence)
    mask = np.asarray(presence.sum(axis=1)).ravel() > 0
    names = list(vocabulary)
    if options.use_attribute_values and data.attribute_values is not None:
        numeric, numeric_mask, numeric_names = _numeric_columns(data, column_of)
        matrix = np.concatenate([matrix, numeric], axis=1)
        mask |= numeric_mask
        names += numeric_names
    return matrix, mask, names


def _numeric_columns(data: KGPairData, column_of: dict[str, int],
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Standardised numeric values ([N, Kn], clipped to [-3, 3]) of frequent numeric attributes."""
    assert data.attribute_values is not None
    values: dict[str, dict[int, float]] = {}
    for row, pairs in enumerate(data.attribute_values):
        for attribute, literal in pairs:
            name = local_name(attribute)
            if name not in column_of:
                continue
            number = parse_number(literal)
            if number is not None:
                values.setdefault(name, {}).setdefault(row, number)  # first value wins
    candidates = [name for name, by_row in values.items() if len(by_row) >= MIN_NUMERIC_COUNT]
    candidates.sort(key=lambda name: (-len(values[name]), name))
    candidates = candidates[:NUMERIC_TOP_K]
    matrix = np.zeros((data.num_entities, len(candidates)), dtype=np.float32)
    mask = np.zeros(data.num_entities, dtype=bool)
    for col, name in enumerate(candidates):
        rows = np.fromiter(values[name].keys(), np.int64, len(values[name]))
        x = np.fromiter(values[name].values(), np.float64, len(values[name]))
        magnitude = np.abs(x)
        if magnitude.max() / LOG_SCALE_RATIO > np.median(magnitude) + 1e-9:
            x = np.sign(x) * np.log1p(magnitude)  # heavy tails (population, budget)
        scale = np.abs(x).max()
        if scale > HUGE_VALUE:  # z-scores do not depend on the scale, and std() squares values
            x = x / scale
        std = x.std()
        z = (x - x.mean()) / (std if std > 0 else 1.0)
        matrix[rows, col] = np.clip(z, -3.0, 3.0)
        mask[rows] = True
    return matrix, mask, [f"{name}=value" for name in candidates]


def build_modal_inputs(data: KGPairData, options: DataConfig | None = None) -> ModalInputs:
    """Graph, per-modality feature matrices and masks for every entity of ``data``, built as
    the run's ``data`` section says (its defaults when None)."""
    options = options or DataConfig()
    n = data.num_entities
    edge_index, edge_type, num_edge_types = build_graph(data)
    structure_mask = torch.zeros(n, dtype=torch.bool)
    structure_mask[edge_index.reshape(-1)] = True
    features: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {"structure": structure_mask}
    names: dict[str, list[str]] = {}

    if data.num_relations:
        relation, names["relation"] = relation_bag(data, options.relation_top_k)
        features["relation"] = torch.from_numpy(relation)
        masks["relation"] = torch.from_numpy(np.abs(relation).sum(axis=1) > 0)

    if any(data.attributes) or (data.attribute_values is not None and any(data.attribute_values)):
        attribute, attribute_mask, names["attribute"] = attribute_bag(data, options)
        features["attribute"] = torch.from_numpy(attribute)
        masks["attribute"] = torch.from_numpy(attribute_mask)

    if data.visual is not None and data.visual_mask is not None:
        features["visual"] = torch.from_numpy(np.ascontiguousarray(data.visual, np.float32))
        masks["visual"] = torch.from_numpy(data.visual_mask.astype(bool))

    logger.info("modal inputs: %d entities, %d edges, %s", n, edge_index.shape[1],
                {k: (tuple(v.shape), int(masks[k].sum())) for k, v in features.items()})
    return ModalInputs(num_entities=n, edge_index=edge_index, edge_type=edge_type,
                       num_edge_types=num_edge_types, features=features, masks=masks,
                       feature_names=names)
