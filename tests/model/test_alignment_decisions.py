"""Alignment decisions (model/decisions.py) and their place in the checkpoint contract."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimea.model.checkpoint import (
    CONFIG_FILE,
    DECISIONS_FILE,
    CheckpointError,
    DecisionTables,
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)
from mimea.model.config import EvalConfig
from mimea.model.decisions import (
    MATCH,
    NO_MATCH,
    PROPAGATED,
    SEED,
    Calibration,
    Decisions,
    PoolDecode,
    agreement_tables,
    alignment_rows,
    assemble,
    decode_pools,
    segment_argmax,
    stored_decisions,
)

SETTINGS = EvalConfig(csls_k=2, candidates=8, sinkhorn_reg=0.05, sinkhorn_iterations=50)
CALIBRATION = Calibration(names=("plan_row", "agree.x"), center=(1.0, 0.5), scale=(2.0, 0.25),
                          weights=(1.5, -0.5), bias=0.25)


def planted(n1: int = 50, n2: int = 45, shared: int = 40, *, noise: float = 0.3,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding [n1 + n2, 16], gold [shared, 2])``: KG1 rows first; KG2 row ``n1 + i``
    is a noisy copy of KG1 row i for i < ``shared``, every other row unrelated."""
    gen = torch.Generator().manual_seed(seed)
    kg1 = torch.randn(n1, 16, generator=gen)
    kg2 = torch.randn(n2, 16, generator=gen)
    kg2[:shared] = kg1[:shared] + noise * torch.randn(shared, 16, generator=gen)
    gold = torch.stack([torch.arange(shared), n1 + torch.arange(shared)], dim=1)
    return torch.cat([kg1, kg2]), gold


def pools_of(n1: int, n2: int, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    free = torch.ones(n1 + n2, dtype=torch.bool)
    free[seeds.reshape(-1)] = False
    rows = torch.arange(n1 + n2)
    return rows[free & (rows < n1)], rows[free & (rows >= n1)]


def test_segment_argmax_first_of_ties_and_none_for_empty_segments() -> None:
    values = torch.tensor([1.0, 3.0, 3.0, -math.inf, 2.0, 0.5])
    index = torch.tensor([0, 0, 0, 2, 3, 3])
    assert segment_argmax(values, index, 5).tolist() == [1, -1, -1, 4, -1]


def test_decode_is_one_to_one_mutual_best_and_finds_the_planted_pairs() -> None:
    embedding, gold = planted()
    seeds = gold[:10]
    pools = pools_of(50, 45, seeds)
    decode = decode_pools(embedding, pools, SETTINGS, {})
    assert len(set(decode.sources.tolist())) == len(decode.sources)
    assert len(set(decode.targets.tolist())) == len(decode.targets)
    assert not set(decode.sources.tolist()) & set(seeds.reshape(-1).tolist())
    truth = dict(gold.tolist())
    right = sum(truth.get(s) == t for s, t in zip(decode.sources.tolist(),
                                                  decode.targets.tolist(), strict=True))
    assert right >= 28  # of the 30 planted pairs outside the seeds
    assert torch.isfinite(decode.features["plan_row"]).all()
    assert (decode.runner_up[seeds.reshape(-1)] == -1).all()
    paired = dict(zip(decode.sources.tolist(), decode.targets.tolist(), strict=True))
    for row in pools[0].tolist():
        if decode.runner_up[row] >= 0:
            assert decode.runner_up[row] >= 50 and decode.runner_up[row] != paired.get(row)


def test_decode_of_an_empty_pool_decides_nothing() -> None:
    embedding, _ = planted()
    tables = {"x": (embedding, torch.ones(len(embedding), dtype=torch.bool))}
    decode = decode_pools(embedding, (torch.arange(50), torch.arange(0)), SETTINGS, tables)
    assert len(decode.sources) == len(decode.targets) == 0
    assert set(decode.features) == {"plan_row", "plan_col", "agree.x"}
    assert (decode.runner_up == -1).all()


def test_agreement_is_nan_where_an_entity_lacks_the_modality() -> None:
    embedding, gold = planted()
    mask = torch.ones(len(embedding), 1, dtype=torch.bool)
    mask[gold[:20, 0], 0] = False
    joint = torch.cat([embedding, torch.zeros(len(embedding), 4)], dim=1)
    joint[:60, 16:] = 1.0
    tables = agreement_tables({"x": embedding}, mask, ["x"], joint, propagated_width=4)
    assert set(tables) == {"x", PROPAGATED}
    decode = decode_pools(embedding, pools_of(50, 45, gold[:0]), SETTINGS, tables)
    missing = torch.isin(decode.sources, gold[:20, 0])
    assert torch.isnan(decode.features["agree.x"][missing]).all()
    assert torch.isfinite(decode.features["agree.x"][~missing]).all()
    unreached = decode.targets >= 60
    assert torch.isnan(decode.features[f"agree.{PROPAGATED}"][unreached]).all()


def test_confident_pairs_hold_most_of_their_row_and_column() -> None:
    features = {"plan_row": torch.tensor([3.0, 1.0, 5.0]),
                "plan_col": torch.tensor([3.0, 5.0, 2.1])}
    decode = PoolDecode(sources=torch.tensor([0, 1, 2]), targets=torch.tensor([7, 8, 9]),
                        features=features, runner_up=torch.full((10,), -1))
    assert decode.confident(0.9).tolist() == [[0, 7]]  # log(9) = 2.197


def test_calibration_probability_json_round_trip_and_missing_features() -> None:
    features = {"plan_row": torch.tensor([1.0, 5.0]), "agree.x": torch.tensor([0.5, math.nan])}
    p = CALIBRATION.probability(features)
    assert p[0] == pytest.approx(torch.sigmoid(torch.tensor(0.25)).item())
    assert p[1] == pytest.approx(torch.sigmoid(torch.tensor(0.25 + 1.5 * 2)).item())
    assert Calibration.from_json(json.loads(json.dumps(CALIBRATION.to_json()))) == CALIBRATION


@pytest.mark.parametrize("raw", [None, {"names": ["a"]}, {**CALIBRATION.to_json(), "bias": "x"},
                                 {**CALIBRATION.to_json(), "scale": [1.0, 0.0]},
                                 {**CALIBRATION.to_json(), "weights": [1.0]}])
def test_calibration_from_json_refuses_malformed(raw: object) -> None:
    with pytest.raises(ValueError):
        Calibration.from_json(raw)


def small_decisions() -> DecisionTables:
    """6 entities: KG1 rows 0-2, KG2 rows 3-5; seed 0-3, decoded 1-4 (p 0.8), 2 alone."""
    decode = PoolDecode(sources=torch.tensor([1]), targets=torch.tensor([4]), features={},
                        runner_up=torch.tensor([-1, 5, 4, -1, 2, 1]))
    return assemble(6, torch.tensor([[0, 3]]), decode, torch.tensor([0.8]))


def test_assemble_pairs_seeds_and_decoded_pairs_both_ways() -> None:
    tables = small_decisions()
    assert tables.counterpart.tolist() == [3, 4, -1, 0, 1, -1]
    assert tables.probability.tolist() == pytest.approx([1, 0.8, 0, 1, 0.8, 0])
    assert tables.seed.tolist() == [True, False, False, True, False, False]
    assert tables.runner_up.tolist() == [-1, 5, 4, -1, 2, 1]


def test_alignment_rows_at_thresholds() -> None:
    tables, kgs = small_decisions(), torch.tensor([1, 1, 1, 2, 2, 2])
    rows = list(alignment_rows(tables, kgs, 0.5))
    assert [(r.row, r.decision, r.counterpart, r.runner_up) for r in rows] == [
        (0, SEED, 3, None), (1, MATCH, 4, 5), (2, NO_MATCH, None, 4), (5, NO_MATCH, None, 1)]
    assert rows[1].probability == pytest.approx(0.8) and rows[2].probability is None
    strict = list(alignment_rows(tables, kgs, 0.9))
    assert [(r.row, r.decision, r.counterpart, r.runner_up) for r in strict] == [
        (0, SEED, 3, None), (1, NO_MATCH, None, 4), (2, NO_MATCH, None, 4),
        (4, NO_MATCH, None, 1), (5, NO_MATCH, None, 1)]
    assert strict[1].probability == pytest.approx(0.8)  # the rejected pairing's


# ------------------------------------------------------------------------ checkpoint contract


def write_small(path: Path, tables: DecisionTables | None = None,
                settings: dict | None = None) -> str:
    n = 6
    gen = torch.Generator().manual_seed(0)
    config = {"modalities": ["structure"]}
    if settings is not None:
        config["decisions"] = settings
    return write_checkpoint(
        path, config=config, weights={"w": torch.zeros(1)},
        embeddings=EmbeddingTables(joint=torch.randn(n, 4, generator=gen),
                                   modalities={"structure": torch.randn(n, 4, generator=gen)},
                                   fusion_weights=torch.ones(n, 1),
                                   mask=torch.ones(n, 1, dtype=torch.bool)),
        entities=EntityTable(ids=list(range(n)), kgs=[1, 1, 1, 2, 2, 2],
                             uris=[f"e{i}" for i in range(n)]),
        split={"train": [[0, 3]], "valid": [], "test": [[1, 4]]}, metrics={},
        decisions=tables)


def decisions_of(tables: DecisionTables) -> Decisions:
    return Decisions(tables=tables, threshold=0.5, calibration=CALIBRATION,
                     target_precision=0.95)


def test_checkpoint_stores_and_loads_the_decisions(tmp_path: Path) -> None:
    decisions = decisions_of(small_decisions())
    write_small(tmp_path / "ckpt", decisions.tables, decisions.settings())
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert DECISIONS_FILE in loaded.config["files"]
    stored = stored_decisions(loaded)
    assert stored is not None and stored.threshold == 0.5 and stored.calibration == CALIBRATION
    for name in ("counterpart", "probability", "runner_up", "seed"):
        assert torch.equal(getattr(stored.tables, name), getattr(decisions.tables, name))


def test_a_malformed_calibration_is_a_checkpoint_error(tmp_path: Path) -> None:
    settings = {**decisions_of(small_decisions()).settings(), "calibration": {"names": 3}}
    write_small(tmp_path / "ckpt", small_decisions(), settings)
    with pytest.raises(CheckpointError, match=r"decisions\.calibration: the calibration must"):
        stored_decisions(load_checkpoint(tmp_path / "ckpt"))


def test_checkpoint_without_decisions_still_loads(tmp_path: Path) -> None:
    write_small(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.decisions is None and stored_decisions(loaded) is None
    assert DECISIONS_FILE not in loaded.config["files"]


def test_an_unlisted_decisions_file_is_not_read(tmp_path: Path) -> None:
    write_small(tmp_path / "ckpt")
    save_file({"counterpart": torch.zeros(2, dtype=torch.long)},
              tmp_path / "ckpt" / DECISIONS_FILE)
    assert load_checkpoint(tmp_path / "ckpt").decisions is None


BAD_TABLES = {
    "shape": (lambda t: replace(t, seed=t.seed[:4]), "shape"),
    "range": (lambda t: replace(t, runner_up=t.runner_up + 9), "outside"),
    "own kg": (lambda t: replace(t, counterpart=torch.tensor([3, 2, 1, 0, -1, -1])),
               "its own KG"),
    "one to one": (lambda t: replace(t, counterpart=torch.tensor([3, 3, -1, 0, 1, -1])),
                   "one-to-one"),
    "probability": (lambda t: replace(t, probability=t.probability * 2), r"outside \[0, 1\]"),
    "nan": (lambda t: replace(t, probability=t.probability.masked_fill(t.seed, math.nan)),
            r"outside \[0, 1\]"),
    "unpaired": (lambda t: replace(t, probability=t.probability.index_fill(
        0, torch.tensor([2]), 0.1)), "non-zero"),
    "seed": (lambda t: replace(t, probability=t.probability.masked_fill(t.seed, 0.5)), "seed"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_writer_refuses_inconsistent_decisions(tmp_path: Path, case: str) -> None:
    damage, fragment = BAD_TABLES[case]
    with pytest.raises(CheckpointError, match=fragment) as info:
        write_small(tmp_path / "ckpt", damage(small_decisions()), {"threshold": 0.5})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ckpt").exists()


def unverified_small(path: Path) -> Path:
    """A small decided checkpoint at ``path`` made format 1 (no digests, so a file can be
    altered and its values are what the loader checks); its version directory."""
    write_small(path, small_decisions(), {"threshold": 0.5})
    directory = path.resolve()
    config = json.loads((directory / CONFIG_FILE).read_text())
    config.update(format_version=1)
    config.pop("files")
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("case", ["one to one", "probability"])
def test_loader_refuses_a_damaged_decisions_file(tmp_path: Path, case: str) -> None:
    """A format 1 checkpoint has no digests: the values themselves are checked on load."""
    directory = unverified_small(tmp_path / "ckpt")
    damage, fragment = BAD_TABLES[case]
    damaged = damage(DecisionTables(**load_file(directory / DECISIONS_FILE)))
    save_file({k: getattr(damaged, k) for k in ("counterpart", "probability", "runner_up",
                                                "seed")}, directory / DECISIONS_FILE)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("settings", [None, {}, {"threshold": 1.5}, {"threshold": "high"}])
def test_decisions_need_a_threshold_in_the_config(tmp_path: Path, settings: object) -> None:
    with pytest.raises(CheckpointError, match=r"threshold|no decisions"):
        write_small(tmp_path / "ckpt", small_decisions(), settings)  # type: ignore[arg-type]


def test_a_threshold_without_decisions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"there is no {DECISIONS_FILE}"):
        write_small(tmp_path / "ckpt", None, {"threshold": 0.5})


def test_loader_refuses_a_decisions_file_of_the_wrong_dtype(tmp_path: Path) -> None:
    directory = unverified_small(tmp_path / "ckpt")
    tensors = load_file(directory / DECISIONS_FILE)
    save_file({**tensors, "probability": tensors["probability"].double()},
              directory / DECISIONS_FILE)
    with pytest.raises(CheckpointError, match=r"float64, expected torch\.float32"):
        load_checkpoint(tmp_path / "ckpt")
