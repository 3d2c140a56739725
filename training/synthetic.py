"""Synthetic multi-modal KG pairs in the benchmark folder layout, for tests and the demo.

A latent "world" is generated first: entities with types, a relation graph with a skewed
degree distribution (Chung-Lu weights from a power law: a few hubs, many entities of degree
1-2), typed relations, attributes with numeric and date values, and a latent visual vector.
Each KG is a noisy view of that world: its own subset of entities (those outside the other
KG's subset have no counterpart there: ``dangling``), ids, URIs and relation ids (some relations
merged), a fraction of edges dropped and random ones added, attributes dropped
or renamed, image features from a shared random projection plus per-KG noise, some images
missing. The views agree enough to be learnable, and no single modality aligns them perfectly.

Whether an entity has attributes or an image at all depends mostly on the entity (how well it
is documented), not on the KG. Drawn per KG independently, a third of the gold pairs would
have an image on one side only (at visual_missing = 0.2): the gap that costs a model the most
(README, quick start), and one that real pairs, documented alike in both KGs, show less often.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

NUM_TYPES = 8
LATENT_DIM = 16
# Share of the entities whose having attributes (an image) is decided once for both KGs; the
# others draw it again in each KG. Either way the rate per KG is attribute_missing
# (visual_missing); an image on one side only then takes 1 - 0.8² = 36% of the independent rate.
COVERAGE_SHARED = 0.8
_STEMS = ("birth", "death", "founding", "release", "opening", "area", "population", "height",
          "weight", "length", "budget", "gross", "runtime", "capacity", "elevation", "depth",
          "width", "speed", "score", "rank", "award", "genre", "language", "country", "style",
          "color", "origin", "status", "range", "volume")
_SUFFIXES = ("", "Date", "Year", "Total", "Count", "Place", "Name", "Value", "Code", "Class")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and noise of a synthetic KG pair; deterministic given ``seed``."""

    num_entities: int = 2000  # entities in the latent world; each KG sees most of them
    num_relations: int = 40
    avg_degree: float = 6.0
    num_attributes: int = 60
    visual_dim: int = 64
    overlap: float = 0.9  # fraction of world entities present in both KGs (gold pairs)
    # Share of each KG's entities present in that KG only; when set it fixes ``overlap``
    # (a share d of each KG is (1 - o) / 2 of the world over o + (1 - o) / 2, so o = (1-d)/(1+d)).
    dangling: float | None = None
    edge_noise: float = 0.15  # fraction of each KG's edges dropped, and as many random ones added
    visual_missing: float = 0.2  # fraction of entities per KG with no image
    attribute_missing: float = 0.1  # fraction of entities per KG with no attribute
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_entities < 10:
            raise ValueError(f"num_entities must be >= 10, got {self.num_entities}")
        if self.num_relations < 2:
            raise ValueError(f"num_relations must be >= 2, got {self.num_relations}")
        if not 1 <= self.num_attributes <= len(_STEMS) * len(_SUFFIXES):
            raise ValueError(f"num_attributes must be in [1, {len(_STEMS) * len(_SUFFIXES)}], "
                             f"got {self.num_attributes}")
        if self.avg_degree <= 0 or self.visual_dim < 1:
            raise ValueError("avg_degree must be > 0 and visual_dim >= 1")
        if self.dangling is not None:
            if not 0.0 <= self.dangling < 1.0:
                raise ValueError(f"dangling must be in [0, 1), got {self.dangling}")
            object.__setattr__(self, "overlap", (1.0 - self.dangling) / (1.0 + self.dangling))
        if not 0.0 < self.overlap <= 1.0:
            raise ValueError(f"overlap must be in (0, 1], got {self.overlap}")
        for name in ("edge_noise", "visual_missing", "attribute_missing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class _World:
    types: np.ndarray  # [n]
    weights: np.ndarray  # [n] sampling probability (degree propensity)
    edges: np.ndarray  # [E, 3] (head, relation, tail), world relation ids
    rel_popularity: np.ndarray  # [R]
    attr_names: list[str]
    attr_kind: np.ndarray  # [A]: 0 categorical, 1 number, 2 date
    has_attr: np.ndarray  # bool [n, A]
    attr_latent: np.ndarray  # float [n, A]
    visual_latent: np.ndarray  # [n, LATENT_DIM]
    coverage: np.ndarray  # float [n, 2]: each entity's draw for having attributes, an image
    shared: np.ndarray  # bool [2, n, 2]: whether each KG keeps that draw (else draws anew)


def _generate_world(spec: SyntheticSpec, rng: np.random.Generator) -> _World:
    n, num_rel = spec.num_entities, spec.num_relations
    # A stream of its own, so that how coverage is drawn changes no other draw of a pair.
    coverage_rng = np.random.default_rng([spec.seed, 1])
    coverage = coverage_rng.random((n, 2))
    shared = coverage_rng.random((2, n, 2)) < COVERAGE_SHARED
    type_probs = rng.dirichlet(np.full(NUM_TYPES, 2.0))
    types = rng.choice(NUM_TYPES, size=n, p=type_probs)
    # Chung-Lu: endpoint probability ~ rank^-0.75 gives hubs and a long tail of small degrees.
    weights = (np.arange(1, n + 1, dtype=np.float64) ** -0.75)[rng.permutation(n)]
    weights /= weights.sum()
    num_edges = max(1, round(spec.avg_degree * n / 2))
    heads = rng.choice(n, size=num_edges, p=weights)
    tails = rng.choice(n, size=num_edges, p=weights)
    isolated = np.setdiff1d(np.arange(n), np.concatenate([heads, tails]))
    heads = np.concatenate([heads, isolated])
    tails = np.concatenate([tails, rng.choice(n, size=len(isolated), p=weights)])
    keep = heads != tails
    heads, tails = heads[keep], tails[keep]
    # Each (head type, tail type) pair is expressed by a few relations, popular ones more often.
    rel_popularity = (np.arange(1, num_rel + 1, dtype=np.float64) ** -0.8)[rng.permutation(num_rel)]
    rel_popularity /= rel_popularity.sum()
    options = rng.choice(num_rel, size=(NUM_TYPES, NUM_TYPES, 3), p=rel_popularity)
    pick = rng.integers(0, 3, size=len(heads))
    rels = options[types[heads], types[tails], pick]
    edges = np.unique(np.stack([heads, rels, tails], axis=1), axis=0)

    attr_names = _attribute_names(spec.num_attributes, rng)
    attr_kind = rng.choice(3, size=spec.num_attributes, p=[0.4, 0.4, 0.2])
    attr_popularity = np.arange(1, spec.num_attributes + 1, dtype=np.float64) ** -0.7
    attr_popularity /= attr_popularity.sum()
    per_type = min(spec.num_attributes, 10)
    type_attrs = np.zeros((NUM_TYPES, spec.num_attributes), dtype=bool)
    for t in range(NUM_TYPES):
        type_attrs[t, rng.choice(spec.num_attributes, per_type, replace=False,
                                 p=attr_popularity)] = True
    has_attr = type_attrs[types] & (rng.random((n, spec.num_attributes)) < 0.7)
    has_attr |= rng.random((n, spec.num_attributes)) < 1.0 / spec.num_attributes  # extras
    attr_latent = rng.standard_normal((n, spec.num_attributes))

    centroids = rng.standard_normal((NUM_TYPES, LATENT_DIM))
    visual_latent = centroids[types] + 0.7 * rng.standard_normal((n, LATENT_DIM))
    return _World(types=types, weights=weights, edges=edges, rel_popularity=rel_popularity,
                  attr_names=attr_names, attr_kind=attr_kind, has_attr=has_attr,
                  attr_latent=attr_latent, visual_latent=visual_latent, coverage=coverage,
                  shared=shared)


def _attribute_names(count: int, rng: np.random.Generator) -> list[str]:
    names = [stem + suffix for stem in _STEMS for suffix in _SUFFIXES]
    return [names[i] for i in rng.choice(len(names), size=count, replace=False)]


def _unique_tokens(rng: np.random.Generator, count: int, alphabet: str, length: int) -> list[str]:
    codes = rng.choice(len(alphabet) ** length, size=count, replace=False)
    tokens = []
    for code in codes.tolist():
        chars = []
        for _ in range(length):
            code, digit = divmod(code, len(alphabet))
            chars.append(alphabet[digit])
        tokens.append("".join(chars))
    return tokens


def _format_value(kind: int, name: str, latent: float, noise: float) -> str:
    """A literal for one attribute value; KGs disagree slightly through ``noise``."""
    if kind == 0:
        return f"{name}_v{int(abs(latent) * 3)}"
    if kind == 1:
        return f"{100.0 * np.exp(latent + 0.05 * noise):.4g}"
    day_of_century = int(36525 * (0.5 + 0.2 * latent)) + int(3 * noise)
    year, rest = divmod(min(max(day_of_century, 0), 36524), 365)
    month, day = min(rest // 30 + 1, 12), rest % 28 + 1
    return f"{1900 + year}-{month:02d}-{day:02d}"


def _view(spec: SyntheticSpec, world: _World, members: np.ndarray, kg: int, first_id: int,
          rng: np.random.Generator) -> dict[str, list[str] | np.ndarray]:
    """One KG's files (as lines) and its world -> local id map for ``members`` (world ids)."""
    n, num_rel = spec.num_entities, spec.num_relations
    local = np.full(n, -1, dtype=np.int64)
    local[members] = first_id + np.arange(len(members))
    if kg == 1:
        uris = [f"http://kg1.example.org/resource/E{t}" for t in
                _unique_tokens(rng, len(members), "0123456789abcdef", 7)]
        rel_ids = rng.permutation(num_rel)
        attr_uri = [f"http://kg1.example.org/property/{a}" for a in world.attr_names]
    else:
        uris = [f"/m/0{t}" for t in _unique_tokens(rng, len(members),
                                                   "0123456789abcdefghijklmnopqrstuvwxyz", 5)]
        rel_ids = num_rel + rng.permutation(num_rel)
        merged = rng.choice(num_rel, size=num_rel // 10, replace=False)
        rel_ids[merged] = rel_ids[rng.choice(num_rel, size=len(merged))]
        renamed = rng.random(len(world.attr_names)) < 0.1
        attr_uri = [f"<http://kg2.example.org/ontology/{a}{'Alt' if r else ''}>"
                    for a, r in zip(world.attr_names, renamed, strict=True)]

    edges = world.edges[(local[world.edges[:, 0]] >= 0) & (local[world.edges[:, 2]] >= 0)]
    edges = edges[rng.random(len(edges)) >= spec.edge_noise]
    num_noise = round(spec.edge_noise * len(edges))
    member_p = world.weights[members] / world.weights[members].sum()
    noise = np.stack([rng.choice(members, num_noise, p=member_p),
                      rng.choice(num_rel, num_noise, p=world.rel_popularity),
                      rng.choice(members, num_noise, p=member_p)], axis=1)
    edges = np.concatenate([edges, noise])
    edges = np.unique(edges[edges[:, 0] != edges[:, 2]], axis=0)
    edges = edges[rng.permutation(len(edges))]
    triples = [f"{local[h]}\t{rel_ids[r]}\t{local[t]}" for h, r, t in edges.tolist()]

    # A KG that holds no triple about an entity still records something of it: such an entity
    # keeps its attributes (without them, and without an image, nothing could align it).
    linked = np.zeros(n, dtype=bool)
    linked[edges[:, [0, 2]].reshape(-1)] = True
    no_attrs = (_coverage(world, members, kg, 0, rng) < spec.attribute_missing) & linked[members]
    observed = world.has_attr[members] & (rng.random((len(members), len(attr_uri))) < 0.85)
    observed |= rng.random(observed.shape) < 0.02  # spurious attributes
    observed[no_attrs] = False
    value_noise = rng.standard_normal(observed.shape)
    attrs_lines: list[str] = []
    value_lines: list[str] = []
    for i, w in enumerate(members.tolist()):
        present = np.flatnonzero(observed[i])
        if not len(present):
            continue
        attrs_lines.append("\t".join([uris[i], *(attr_uri[a] for a in present)]))
        for a in present.tolist():
            literal = _format_value(int(world.attr_kind[a]), world.attr_names[a],
                                    float(world.attr_latent[w, a]), float(value_noise[i, a]))
            value_lines.append(f"{uris[i]}\t{attr_uri[a]}\t{literal}")

    has_image = _coverage(world, members, kg, 1, rng) >= spec.visual_missing
    return {"entities": [f"{first_id + i}\t{u}" for i, u in enumerate(uris)],
            "triples": triples, "attrs": attrs_lines, "values": value_lines,
            "local": local, "image_members": members[has_image]}


def _coverage(world: _World, members: np.ndarray, kg: int, column: int,
              rng: np.random.Generator) -> np.ndarray:
    """Uniform draws deciding whether ``members`` have attributes (``column`` 0) or an image
    (1) in KG ``kg``: the entity's own draw where the KG shares it, else a fresh one."""
    fresh = rng.random(len(members))
    return np.where(world.shared[kg - 1, members, column], world.coverage[members, column],
                    fresh)


def _visual_features(spec: SyntheticSpec, world: _World, members: np.ndarray,
                     projection: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shared projection of the latent vector plus per-KG noise (a different photo)."""
    clean = world.visual_latent[members] @ projection
    noisy = clean + 0.6 * rng.standard_normal(clean.shape) * clean.std()
    return noisy.astype(np.float32)


def write_synthetic_pair(out_dir: Path, spec: SyntheticSpec | None = None, *,
                         overwrite: bool = False) -> dict[str, int | float | str]:
    """Write a synthetic KG pair into ``out_dir`` and return its sizes.

    Refuses a non-empty ``out_dir`` unless ``overwrite``; files are written to a temporary
    sibling folder first and moved in, so a failure never leaves half-written files behind.
    """
    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite)")
    rng = np.random.default_rng(spec.seed)
    world = _generate_world(spec, rng)

    n = spec.num_entities
    order = rng.permutation(n)
    num_shared = round(spec.overlap * n)
    shared, rest = order[:num_shared], order[num_shared:]
    members1 = rng.permutation(np.concatenate([shared, rest[: len(rest) // 2]]))
    members2 = rng.permutation(np.concatenate([shared, rest[len(rest) // 2:]]))
    kg1 = _view(spec, world, members1, 1, 0, rng)
    kg2 = _view(spec, world, members2, 2, len(members1), rng)

    shared = shared[rng.permutation(len(shared))]
    local1, local2 = kg1["local"], kg2["local"]
    assert isinstance(local1, np.ndarray) and isinstance(local2, np.ndarray)
    gold = [f"{local1[w]}\t{local2[w]}" for w in shared.tolist()]

    projection = rng.standard_normal((LATENT_DIM, spec.visual_dim)) / np.sqrt(LATENT_DIM)
    image_ids, image_features = [], []
    for view, local in ((kg1, local1), (kg2, local2)):
        members = view["image_members"]
        assert isinstance(members, np.ndarray)
        image_ids.append(local[members])
        image_features.append(_visual_features(spec, world, members, projection, rng))

    summary: dict[str, int | float | str] = {
        "kg1_entities": len(members1), "kg2_entities": len(members2),
        "kg1_triples": len(kg1["triples"]), "kg2_triples": len(kg2["triples"]),
        "gold_pairs": len(gold), "kg1_dangling": len(members1) - len(gold),
        "kg2_dangling": len(members2) - len(gold),
        "dangling_share": round(1.0 - 2 * len(gold) / (len(members1) + len(members2)), 6),
        "kg1_images": len(image_ids[0]), "kg2_images": len(image_ids[1]),
        "out_dir": str(out_dir),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for kg, view in ((1, kg1), (2, kg2)):
            for stem, key in (("ent_ids", "entities"), ("triples", "triples"),
                              ("training_attrs", "attrs"), ("attr_triples", "values")):
                lines = view[key]
                assert isinstance(lines, list)
                (tmp / f"{stem}_{kg}").write_text("".join(f"{x}\n" for x in lines), "utf-8")
        (tmp / "ill_ent_ids").write_text("".join(f"{x}\n" for x in gold), "utf-8")
        np.savez(tmp / "visual_features.npz", ids=np.concatenate(image_ids).astype(np.int64),
                 features=np.concatenate(image_features))
        (tmp / "synthetic.json").write_text(
            json.dumps({"spec": asdict(spec), "summary": summary}, indent=2) + "\n", "utf-8")
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("synthetic KG pair written: %s", summary)
    return summary
