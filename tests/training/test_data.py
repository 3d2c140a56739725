"""Loading and validating KG-pair folders (training/data.py)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mimea.training.data import DataError, load_kg_pair

PairWriter = Callable[..., Path]
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data


def test_synthetic_pair_loads_consistently(synthetic_dir: Path) -> None:
    data = load_kg_pair(synthetic_dir)
    n = data.num_entities
    assert data.ids.dtype == np.int64 and data.ids.shape == (n,)
    assert data.kgs.dtype == np.int8
    assert (data.kgs[: data.num_kg1] == 1).all() and (data.kgs[data.num_kg1:] == 2).all()
    assert len(data.uris) == n == len(data.attributes)
    assert data.triples.dtype == np.int64 and data.triples.shape[1] == 3
    assert data.triples[:, 1].min() >= 0 and data.triples[:, 1].max() < data.num_relations
    # triples never cross the two KGs
    assert (data.kgs[data.triples[:, 0]] == data.kgs[data.triples[:, 2]]).all()
    assert (data.kgs[data.gold[:, 0]] == 1).all() and (data.kgs[data.gold[:, 1]] == 2).all()
    for row in (0, data.num_kg1, n - 1):
        assert data.row_of(int(data.ids[row])) == row
    assert data.visual is not None and data.visual_mask is not None
    assert data.visual.shape[0] == n and data.visual.dtype == np.float32
    assert not data.visual[~data.visual_mask].any()
    assert data.attribute_values is not None and any(data.attribute_values)
    assert data.warnings == []


def test_ids_rows_relations_of_tiny_pair(write_pair: PairWriter) -> None:
    data = load_kg_pair(write_pair())
    assert data.ids.tolist() == [0, 1, 2, 3, 10, 11, 12]
    assert data.num_kg1 == 4 and data.num_kg2 == 3
    assert data.gold.tolist() == [[0, 4], [1, 5], [2, 6]]
    # KG1's relation 0 and KG2's relation 0 are different relations: 4 in all.
    assert data.num_relations == 4
    assert data.relation_sources.tolist() == [[1, 0], [1, 1], [2, 0], [2, 5]]
    assert data.triples[0].tolist() == [0, 0, 1] and data.triples[3].tolist() == [4, 2, 5]
    assert data.rows_of(np.array([[10, 0]])).tolist() == [[4, 0]]
    assert data.attributes[0] == ["http://kg1.org/property/birthDate",
                                  "http://kg1.org/property/name"]
    assert data.attributes[3] == [] and data.attribute_values is None
    assert data.visual is None and data.visual_mask is None
    with pytest.raises(KeyError):
        data.row_of(99)
    with pytest.raises(KeyError, match="99"):
        data.rows_of(np.array([0, 99]))


@pytest.mark.parametrize(
    ("file", "text", "where", "message"),
    [
        ("ent_ids_1", "0\thttp://x/A\n\n1\n", "ent_ids_1:3", "expected 2"),
        ("ent_ids_1", "0\thttp://x/A\nx1\thttp://x/B\n", "ent_ids_1:2", "not an integer"),
        ("ent_ids_2", "10\t/m/0a\n10\t/m/0b\n", "ent_ids_2:2", "duplicate entity id"),
        ("ent_ids_2", "10\t/m/0a\n2\t/m/0b\n", "ent_ids_2:2", "id ranges overlap"),
        ("ent_ids_2", "10\t/m/0a\n11\thttp://kg1.org/resource/B\n", "ent_ids_2:2",
         "duplicate URI"),
        ("triples_1", "0\t0\t1\n0\t1\n", "triples_1:2", "expected 3"),
        ("triples_1", "0\tr\t1\n", "triples_1:1", "not an integer"),
        ("triples_1", "0\t0\t1\n0\t0\t99\n", "triples_1:2", "tail entity 99 is not declared"),
        ("triples_2", "10\t0\t1\n", "triples_2:1", "belongs to the other KG"),
        ("ill_ent_ids", "0\t10\n1\t99\n", "ill_ent_ids:2", "undeclared"),
        ("ill_ent_ids", "10\t0\n", "ill_ent_ids:1", "must be a KG1 entity id"),
        ("ill_ent_ids", "0\t10\t5\n", "ill_ent_ids:1", "expected 2"),
        ("attr_triples_1", "http://kg1.org/resource/A\tbirthDate\n", "attr_triples_1:1",
         "expected 3"),
    ],
)
def test_bad_line_names_file_and_line(write_pair: PairWriter, file: str, text: str, where: str,
                                      message: str) -> None:
    root = write_pair(**{file: text})
    with pytest.raises(DataError) as err:
        load_kg_pair(root)
    assert f"{root / file}:{where.split(':')[1]}:" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("file", ["ent_ids_1", "ent_ids_2", "triples_1", "triples_2",
                                  "ill_ent_ids"])
def test_missing_required_file_is_named(write_pair: PairWriter, file: str) -> None:
    with pytest.raises(DataError, match=f"'{file}'.*missing"):
        load_kg_pair(write_pair(**{file: None}))


def test_ref_ent_ids_used_when_ill_ent_ids_absent(write_pair: PairWriter) -> None:
    data = load_kg_pair(write_pair(ill_ent_ids=None, ref_ent_ids="1\t11\n2\t12\n"))
    assert data.gold.tolist() == [[1, 5], [2, 6]]


def test_invalid_utf8_names_line(write_pair: PairWriter) -> None:
    root = write_pair()
    (root / "ent_ids_2").write_bytes(b"10\t/m/0a\n11\t/m/\xff\n")
    with pytest.raises(DataError, match=r"ent_ids_2:2: not valid UTF-8"):
        load_kg_pair(root)


def test_unknown_attribute_uris_are_counted_warnings(write_pair: PairWriter) -> None:
    root = write_pair(training_attrs_2="/m/0a\tp\n/m/unknown\tp\n/m/other\tq\n",
                      attr_triples_1="http://kg1.org/resource/A\tp\t1\nnobody\tp\t2\n")
    data = load_kg_pair(root)
    assert data.attributes[4] == ["p"]
    assert any("training_attrs_2: 2 lines name an undeclared" in w for w in data.warnings)
    assert any("attr_triples_1: 1 lines name an undeclared" in w for w in data.warnings)


def test_gold_is_made_one_to_one_first_pair_kept(write_pair: PairWriter) -> None:
    # line 2 reuses KG2 entity 10, line 4 repeats line 3, line 5 reuses KG1 entity 2
    data = load_kg_pair(write_pair(ill_ent_ids="0\t10\n1\t10\n2\t12\n2\t12\n2\t11\n"
                                               "1\t11\n"))
    assert data.gold.tolist() == [[0, 4], [2, 6], [1, 5]]
    assert data.warnings == [
        "pair/ill_ent_ids: 1 duplicate gold lines dropped (first: line 4)",
        "pair/ill_ent_ids: 2 gold pairs reuse an entity of an earlier pair and were dropped, "
        "the earlier pair kept (first: line 2)"]


def test_attribute_names_come_from_attr_triples_when_names_file_absent(
        write_pair: PairWriter) -> None:
    root = write_pair(training_attrs_1=None, training_attrs_2=None,
                      attr_triples_2="/m/0b\theight\t1.8\n/m/0b\theight\t1.9\n/m/0b\tyear\t1990\n")
    data = load_kg_pair(root)
    assert data.attributes[5] == ["height", "year"]
    assert data.attribute_values is not None
    assert data.attribute_values[5][0] == ("height", "1.8")


# ---- visual features -------------------------------------------------------------------------

def _vectors(ids: list[int], dim: int = 3) -> np.ndarray:
    return np.arange(len(ids) * dim, dtype=np.float32).reshape(len(ids), dim) + 1.0


def test_npz_visual_masks_missing_entities(write_pair: PairWriter) -> None:
    root = write_pair()
    np.savez(root / "visual_features.npz", ids=np.array([1, 11, 500]),
             features=_vectors([1, 11, 500]))
    data = load_kg_pair(root)
    assert data.visual is not None and data.visual_mask is not None
    assert data.visual_mask.tolist() == [False, True, False, False, False, True, False]
    assert data.visual[1].tolist() == [1.0, 2.0, 3.0] and not data.visual[0].any()
    assert any("1 vectors for undeclared entity ids" in w for w in data.warnings)


def test_npy_with_ids_file(write_pair: PairWriter) -> None:
    root = write_pair()
    np.save(root / "images.npy", _vectors([0, 12]))
    (root / "images.ids").write_text("0\n12\n")
    data = load_kg_pair(root)
    assert data.visual_mask is not None
    assert data.visual_mask.nonzero()[0].tolist() == [0, 6]


def test_explicit_visual_path_outside_root(write_pair: PairWriter, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.npz"
    np.savez(path, ids=np.array([2]), features=_vectors([2], dim=5))
    data = load_kg_pair(write_pair(), visual=path)
    assert data.visual is not None and data.visual.shape == (7, 5)


def test_pickle_refused_without_allow_pickle(write_pair: PairWriter) -> None:
    root = write_pair()
    with (root / "fb_id_img_feature_dict.pkl").open("wb") as handle:
        pickle.dump({0: [1.0, 2.0], 10: np.array([3.0, 4.0])}, handle)
    with pytest.raises(DataError, match="--allow-pickle"):
        load_kg_pair(root)
    data = load_kg_pair(root, allow_pickle=True)
    assert data.visual is not None and data.visual_mask is not None
    assert data.visual[4].tolist() == [3.0, 4.0] and data.visual_mask.sum() == 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.array([0])}, "lacks array"),
        ({"ids": np.array([0, 0]), "features": _vectors([0, 0])}, "more than one vector"),
        ({"ids": np.array([0]), "features": np.full((1, 2), np.nan, np.float32)}, "NaN"),
        ({"ids": np.array([0, 1]), "features": _vectors([0])}, "expected ids"),
    ],
)
def test_bad_npz_is_a_data_error(write_pair: PairWriter, arrays: dict[str, np.ndarray],
                                 message: str) -> None:
    root = write_pair()
    np.savez(root / "visual_features.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_kg_pair(root)


def test_missing_visual_file_is_a_data_error(write_pair: PairWriter, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_kg_pair(write_pair(), visual=tmp_path / "nope.npz")


# ---- the real benchmark ----------------------------------------------------------------------

@pytest.mark.skipif(not (REAL_DATA / "dbp15k" / "zh_en").is_dir(),
                    reason=f"benchmark data not present at {REAL_DATA}/dbp15k/zh_en")
def test_real_dbp15k_zh_en_has_documented_sizes() -> None:
    data = load_kg_pair(REAL_DATA / "dbp15k" / "zh_en")
    assert (data.num_kg1, data.num_kg2) == (19_388, 19_572)
    assert len(data.gold) == 15_000
    assert len(data.triples) == 70_414 + 95_142
    assert data.warnings == []
