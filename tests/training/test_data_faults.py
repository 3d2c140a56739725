"""Broken datasets: each is a clean one-line DataError naming the file, or a documented warning.

Every case starts from the same small valid synthetic pair and damages one thing, the way a
careless export, an editor or a copy can.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mimea.training.data import DataError, KGPairData, load_kg_pair
from mimea.training.features import build_modal_inputs
from mimea.training.pipeline import unlabelled_rows
from mimea.training.split import split_pairs
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair

SPEC = SyntheticSpec(num_entities=40, num_relations=4, num_attributes=6, visual_dim=4, seed=3)
TEXT_FILES = ("ent_ids_1", "ent_ids_2", "triples_1", "triples_2", "ill_ent_ids",
              "training_attrs_1", "training_attrs_2", "attr_triples_1", "attr_triples_2")
HUGE_NUMBER = "9" * 10_000_000

Damage = Callable[[Path], None]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid pair every case copies (never modified)."""
    root = tmp_path_factory.mktemp("faults") / "base"
    write_synthetic_pair(root, SPEC)
    return root


@pytest.fixture
def pair_copy(base_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "pair"
    shutil.copytree(base_dir, root)
    return root


def _lines(root: Path, name: str) -> list[str]:
    return (root / name).read_text("utf-8").splitlines()


def set_line(name: str, line_no: int, text: str) -> Damage:
    """Replace line ``line_no`` (1-based) of ``name`` with ``text``."""

    def damage(root: Path) -> None:
        lines = _lines(root, name)
        lines[line_no - 1] = text
        (root / name).write_text("\n".join(lines) + "\n", "utf-8")

    return damage


def edit_line(name: str, line_no: int, edit: Callable[[str], str]) -> Damage:
    """Apply ``edit`` to line ``line_no`` of ``name``."""

    def damage(root: Path) -> None:
        set_line(name, line_no, edit(_lines(root, name)[line_no - 1]))(root)

    return damage


def write_bytes(name: str, data: bytes) -> Damage:
    def damage(root: Path) -> None:
        (root / name).write_bytes(data)

    return damage


def insert_bytes(name: str, line_no: int, data: bytes) -> Damage:
    """Put ``data`` at the start of line ``line_no`` of ``name``."""

    def damage(root: Path) -> None:
        lines = (root / name).read_bytes().split(b"\n")
        lines[line_no - 1] = data + lines[line_no - 1]
        (root / name).write_bytes(b"\n".join(lines))

    return damage


def make_dir(name: str) -> Damage:
    def damage(root: Path) -> None:
        (root / name).unlink(missing_ok=True)
        (root / name).mkdir()

    return damage


def make_fifo(name: str) -> Damage:
    def damage(root: Path) -> None:
        (root / name).unlink()
        os.mkfifo(root / name)

    return damage


def visual(vectors: np.ndarray | None = None, **arrays: np.ndarray) -> Damage:
    """Replace the npz with the base ids and ``vectors`` repeated (or with ``arrays``)."""

    def damage(root: Path) -> None:
        path = root / "visual_features.npz"
        if vectors is not None:
            with np.load(path) as archive:
                ids = archive["ids"]
            arrays.update(ids=ids, features=np.resize(vectors, (len(ids), vectors.shape[1])))
        np.savez(path, **arrays)

    return damage


def visual_pickle(table: dict[object, object]) -> Damage:
    def damage(root: Path) -> None:
        (root / "visual_features.npz").unlink()
        with (root / "x_id_img_feature_dict.pkl").open("wb") as handle:
            pickle.dump(table, handle)

    return damage


def visual_npy_ids(ids_text: str) -> Damage:
    def damage(root: Path) -> None:
        (root / "visual_features.npz").unlink()
        np.save(root / "img.npy", np.ones((2, 3), np.float32))
        (root / "img.ids").write_text(ids_text, "utf-8")

    return damage


@dataclass(frozen=True)
class Fault:
    name: str
    damage: Damage
    file: str
    line: int | None
    fragment: str


FAULTS = [
    # identifiers the service could not load back
    Fault("uri with a CR", edit_line("ent_ids_1", 2, lambda t: t + "\rx"), "ent_ids_1", 2,
          "carriage return inside the line"),
    Fault("uri with a NUL", edit_line("ent_ids_2", 3, lambda t: t + "\x00"), "ent_ids_2", 3,
          "NUL"),
    Fault("empty uri", set_line("ent_ids_1", 4, "3\t"), "ent_ids_1", 4, "identifier is empty"),
    Fault("uri too long", set_line("ent_ids_2", 1, "38\t" + "u" * 5000), "ent_ids_2", 1,
          "longer than 4096"),
    Fault("trailing tab", edit_line("ent_ids_1", 5, lambda t: t + "\t"), "ent_ids_1", 5,
          "got 3 (a trailing tab?)"),
    Fault("old Mac line endings", lambda root: (root / "ent_ids_2").write_bytes(
        (root / "ent_ids_2").read_bytes().replace(b"\n", b"\r")), "ent_ids_2", 1,
        "carriage return"),
    Fault("empty entity file", write_bytes("ent_ids_2", b""), "ent_ids_2", None,
          "no entities declared"),
    Fault("fractional id", set_line("ent_ids_1", 2, "1.5\thttp://x/y"), "ent_ids_1", 2,
          "entity id '1.5' is not an integer"),
    # numbers
    Fault("id beyond int64", set_line("ent_ids_2", 2, "99999999999999999999\t/m/x"), "ent_ids_2",
          2, "entity id '99999999999999999999' is out of the 64-bit integer range"),
    Fault("negative head beyond int64", set_line("triples_1", 3, "-99999999999999999999\t0\t7"),
          "triples_1", 3, "head '-99999999999999999999' is out of"),
    Fault("10 MB tail", edit_line("triples_1", 2, lambda t: t.rsplit("\t", 1)[0] + "\t"
                                  + HUGE_NUMBER), "triples_1", 2,
          f"tail '{'9' * 40}'... (10000000 characters) is out of the 64-bit integer range"),
    Fault("10 MB of letters", set_line("triples_2", 1, "42\t" + "x" * 10_000 + "\t63"),
          "triples_2", 1, "relation 'xxxx"),
    Fault("relation not a number", set_line("triples_1", 4, "37\tr\t7"), "triples_1", 4,
          "relation 'r' is not an integer"),
    Fault("triple with trailing tab", edit_line("triples_2", 2, lambda t: t + "\t"), "triples_2",
          2, "got 4 (a trailing tab?)"),
    Fault("CR inside a triple", set_line("triples_1", 5, "37\t3\r7"), "triples_1", 5,
          "carriage return"),
    Fault("gold id beyond int64", set_line("ill_ent_ids", 6, "1\t18446744073709551616"),
          "ill_ent_ids", 6, "kg2 id '18446744073709551616' is out of"),
    Fault("gold with spaces", set_line("ill_ent_ids", 3, "21 51"), "ill_ent_ids", 3,
          "expected 2 tab-separated fields"),
    # gold that cannot be split
    Fault("empty gold file", write_bytes("ill_ent_ids", b""), "ill_ent_ids", None,
          "no gold pairs: at least 2 needed"),
    Fault("blank gold file", write_bytes("ill_ent_ids", b"\n \n\r\n"), "ill_ent_ids", None,
          "no gold pairs"),
    Fault("one gold pair", write_bytes("ill_ent_ids", b"21\t51\n"), "ill_ent_ids", None,
          "only 1 gold pair: at least 2 needed"),
    Fault("one gold pair, repeated", write_bytes("ill_ent_ids", b"21\t51\n21\t51\n"),
          "ill_ent_ids", None, "only 1 gold pair"),
    Fault("gold pair naming a KG1 entity twice", set_line("ill_ent_ids", 2, "21\t21"),
          "ill_ent_ids", 2, "column 2 must be a KG2 entity id, but 21 is in KG1"),
    # encodings and binary files
    Fault("latin-1 uri", insert_bytes("ent_ids_1", 3, b"\xe9"), "ent_ids_1", 3,
          "not valid UTF-8"),
    Fault("latin-1 attribute", insert_bytes("training_attrs_2", 7, b"caf\xe9"),
          "training_attrs_2", 7, "not valid UTF-8 (byte 0xe9)"),
    Fault("binary garbage", write_bytes("triples_2", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
          "triples_2", 1, "not valid UTF-8"),
    Fault("NUL bytes", write_bytes("triples_1", b"37\t3\t7\n\x00\x00\x00\x00\n"), "triples_1", 2,
          "NUL byte"),
    Fault("UTF-16 file", lambda root: (root / "ill_ent_ids").write_bytes(
        (root / "ill_ent_ids").read_text("utf-8").encode("utf-16")), "ill_ent_ids", 1,
        "not valid UTF-8"),
    # files that are not files
    Fault("directory for a required file", make_dir("ent_ids_2"), "ent_ids_2", None,
          "is a directory, expected a file"),
    Fault("directory for the gold file", make_dir("ill_ent_ids"), "ill_ent_ids", None,
          "is a directory"),
    Fault("directory for an optional file", make_dir("training_attrs_1"), "training_attrs_1",
          None, "is a directory"),
    Fault("fifo for a required file", make_fifo("triples_1"), "triples_1", None,
          "is not a regular file"),
    # attribute files
    Fault("attribute value with a trailing tab", edit_line("attr_triples_1", 9,
                                                           lambda t: t + "\t"),
          "attr_triples_1", 9, "got 4 (a trailing tab?)"),
    Fault("attribute value missing", edit_line("attr_triples_2", 4,
                                               lambda t: t.rsplit("\t", 1)[0]),
          "attr_triples_2", 4, "expected 3 tab-separated fields"),
    # visual features
    Fault("visual 3e38", visual(np.full((1, 4), 3e38, np.float32)), "visual_features.npz", None,
          "have values beyond +-10000"),
    Fault("visual 1e39 in float64", visual(np.full((1, 4), 1e39)), "visual_features.npz", None,
          "have values beyond +-10000"),
    Fault("visual NaN", visual(np.full((1, 4), np.nan, np.float32)), "visual_features.npz", None,
          "contain NaN or inf (first: entity 0)"),
    Fault("visual strings", visual(ids=np.array([0, 1]), features=np.array([["a"], ["b"]])),
          "visual_features.npz", None, "features must be real numbers"),
    Fault("visual float ids", visual(ids=np.array([0.5]), features=np.ones((1, 2))),
          "visual_features.npz", None, "entity ids must be integers"),
    Fault("visual not a zip", write_bytes("visual_features.npz", b"not a zip archive"),
          "visual_features.npz", None, "cannot read visual features"),
    Fault("pickle key beyond int64", visual_pickle({2**70: [1.0, 2.0]}),
          "x_id_img_feature_dict.pkl", None, "cannot read visual features"),
    Fault("pickle huge value", visual_pickle({0: [1.0, 2e5]}), "x_id_img_feature_dict.pkl", None,
          "(first: entity 0)"),
    Fault("npy ids beyond int64", visual_npy_ids("0\n99999999999999999999\n"), "img.ids", 2,
          "out of the 64-bit integer range"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_a_one_line_data_error(pair_copy: Path, fault: Fault) -> None:
    fault.damage(pair_copy)
    with pytest.raises(DataError) as err:
        load_kg_pair(pair_copy, allow_pickle=True)
    message = str(err.value)
    where = f"{pair_copy / fault.file}" + (f":{fault.line}:" if fault.line else ":")
    assert message.startswith(where), message[:300]
    assert fault.fragment in message, message[:300]
    assert "\n" not in message and "\r" not in message
    assert len(message) < 400


def test_unreadable_file_is_a_data_error(pair_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root, so the refusal is simulated
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path.name == "triples_2":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=r"triples_2: cannot read the file: Permission denied$"):
        load_kg_pair(pair_copy)


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="does not exist"):
        load_kg_pair(tmp_path / "file")


# ---- harmless irregularities: loaded as the clean pair, with the documented warnings --------

def _same_pair(a: KGPairData, b: KGPairData) -> None:
    assert a.uris == b.uris and a.attributes == b.attributes
    assert a.attribute_values == b.attribute_values
    for name in ("ids", "triples", "gold", "visual"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def add_bom(name: str) -> Damage:
    def damage(root: Path) -> None:
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())

    return damage


def to_crlf(root: Path) -> None:
    for name in TEXT_FILES:
        path = root / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def append_first_gold_line(root: Path) -> None:
    with (root / "ill_ent_ids").open("a", encoding="utf-8") as handle:
        handle.write(_lines(root, "ill_ent_ids")[0] + "\n")


def reuse_gold_entities(root: Path) -> None:
    """A last line pairing line 1's KG1 entity with line 2's KG2 entity."""
    first, second = (line.split("\t") for line in _lines(root, "ill_ent_ids")[:2])
    with (root / "ill_ent_ids").open("a", encoding="utf-8") as handle:
        handle.write(f"{first[0]}\t{second[1]}\n")


def blank_lines(root: Path) -> None:
    for name in TEXT_FILES:
        lines = _lines(root, name)
        (root / name).write_text("\n\n".join(lines) + "\n  \n\t\n", "utf-8")


HARMLESS: list[tuple[str, Damage, list[str]]] = [
    *[(f"BOM in {name}", add_bom(name), []) for name in TEXT_FILES],
    ("CRLF line endings", to_crlf, []),
    ("blank and whitespace lines", blank_lines, []),
    ("duplicate gold line", append_first_gold_line,
     ["base/ill_ent_ids: 1 duplicate gold lines dropped (first: line 37)"]),
    ("entity in two gold pairs", reuse_gold_entities,
     ["base/ill_ent_ids: 1 gold pairs reuse an entity of an earlier pair and were dropped, the "
      "earlier pair kept (first: line 37)"]),
]


@pytest.mark.parametrize(("damage", "warnings"), [(d, w) for _, d, w in HARMLESS],
                         ids=[name for name, _, _ in HARMLESS])
def test_harmless_irregularity_loads_like_the_clean_pair(
        base_dir: Path, tmp_path: Path, damage: Damage, warnings: list[str]) -> None:
    root = tmp_path / "base"  # same folder name, so the warnings read the same
    shutil.copytree(base_dir, root)
    damage(root)
    data = load_kg_pair(root)
    _same_pair(data, load_kg_pair(base_dir))
    assert data.warnings == warnings


def test_bom_keeps_the_first_entity_attributes(pair_copy: Path, base_dir: Path) -> None:
    add_bom("training_attrs_1")(pair_copy)
    first_uri = _lines(base_dir, "training_attrs_1")[0].split("\t")[0]
    data = load_kg_pair(pair_copy)
    assert data.attributes[data.uris.index(first_uri)]


def test_empty_triples_file_is_a_warning(pair_copy: Path) -> None:
    write_bytes("triples_1", b"")(pair_copy)
    data = load_kg_pair(pair_copy)
    assert data.warnings == ["pair/triples_1: no relation triples (KG1 has no structure)"]
    assert (data.kgs[data.triples[:, 0]] == 2).all()


def test_duplicate_gold_line_splits_into_disjoint_parts(pair_copy: Path) -> None:
    """Once, the repeated pair landed in train and test, and test rows left the Sinkhorn pool."""
    append_first_gold_line(pair_copy)
    data = load_kg_pair(pair_copy)
    split = split_pairs(data.gold, train_ratio=0.3, seed=2)
    parts = [set(part.ravel().tolist()) for part in (split.train, split.valid, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    sources, targets = unlabelled_rows(data, split)
    assert np.isin(split.test[:, 0], sources.numpy()).all()
    assert np.isin(split.test[:, 1], targets.numpy()).all()


def test_non_finite_and_huge_attribute_values_give_finite_features(pair_copy: Path,
                                                                   base_dir: Path) -> None:
    """Overflowing literals are not numbers; values near 1e308 are standardised without
    overflow."""
    uris = [line.split("\t")[1] for line in _lines(base_dir, "ent_ids_1")]
    literals = ["1e400", "nan", "inf", "-inf", "1e308", "1.7e308", "-1e308", "9e307", "1e307"]
    with (pair_copy / "attr_triples_1").open("a", encoding="utf-8") as handle:
        for uri, literal in zip(uris, literals, strict=False):
            handle.write(f"{uri}\thttp://kg1.example.org/property/hugeValue\t{literal}\n")
    inputs = build_modal_inputs(load_kg_pair(pair_copy))
    attribute = inputs.features["attribute"].numpy()
    assert np.isfinite(attribute).all() and np.abs(attribute).max() <= 3.0
    assert "hugeValue=value" in inputs.feature_names["attribute"]
