"""``GET /alignment`` streams a large alignment from a real server without holding it whole."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from bench.server_process import Server
from mimea.model.checkpoint import DecisionTables, EmbeddingTables, EntityTable, write_checkpoint
from mimea.model.decisions import Calibration, Decisions

PER_KG = 60_000
MATCHED = 48_000  # KG1 row i and KG2 row i are the same entity for i < MATCHED
SEEDS = 15_000


def _large_checkpoint(path: Path) -> dict[str, int]:
    """A planted pair of ``PER_KG`` entities per KG with its decisions: seeds, matches with
    probabilities spread over (0, 1), and entities with no counterpart. Returns how many lines
    of each decision the stream holds at the threshold, 0.5."""
    gen = torch.Generator().manual_seed(0)
    n = 2 * PER_KG
    base = torch.randn(PER_KG, 8, generator=gen)
    kg2 = torch.randn(PER_KG, 8, generator=gen)
    kg2[:MATCHED] = base[:MATCHED] + 0.1 * torch.randn(MATCHED, 8, generator=gen)
    table = torch.cat([base, kg2])
    # The stream reads no CSLS term: a stored r of zeros spares the load its scan of every
    # pair, which a checkpoint without one needs.
    embeddings = EmbeddingTables(joint=table, modalities={"structure": table},
                                 mask=torch.ones(n, 1, dtype=torch.bool),
                                 fusion_weights=torch.ones(n, 1), csls_r=torch.zeros(n))
    counterpart = torch.full((n,), -1, dtype=torch.long)
    rows = torch.arange(MATCHED)
    counterpart[rows], counterpart[rows + PER_KG] = rows + PER_KG, rows
    probability = torch.zeros(n)
    probability[rows] = probability[rows + PER_KG] = torch.rand(MATCHED, generator=gen)
    seed = torch.zeros(n, dtype=torch.bool)
    seed[:SEEDS] = seed[PER_KG:PER_KG + SEEDS] = True
    probability[seed] = 1.0
    following = (torch.arange(PER_KG) + 1) % PER_KG  # a runner-up in the other KG
    runner_up = torch.cat([following + PER_KG, following])
    tables = DecisionTables(counterpart=counterpart, probability=probability,
                            runner_up=runner_up, seed=seed)
    calibration = Calibration(names=("plan_row",), center=(0.0,), scale=(1.0,),
                              weights=(1.0,), bias=0.0)
    decisions = Decisions(tables=tables, threshold=0.5, calibration=calibration,
                          target_precision=0.95)
    pairs = [[i, PER_KG + i] for i in range(SEEDS)]
    write_checkpoint(
        path, config={"modalities": ["structure"], "model": {"hidden": 8},
                      "config": {"model": {"propagation": False}},
                      "decisions": decisions.settings()},
        weights={"w": torch.zeros(1)}, embeddings=embeddings,
        entities=EntityTable(ids=list(range(n)), kgs=[1] * PER_KG + [2] * PER_KG,
                             uris=[f"http://kg1.example/e{i}" for i in range(PER_KG)]
                             + [f"http://kg2.example/e{i}" for i in range(PER_KG)]),
        split={"train_ratio": 0.25, "seed": 0, "train": pairs[:-100], "valid": pairs[-100:],
               "test": []},
        metrics={}, decisions=tables)
    matched = seed | (probability >= 0.5)
    kg1_matches = int((matched & ~seed)[:PER_KG].sum())
    unmatched = PER_KG - int(matched[:PER_KG].sum())
    return {"seed": SEEDS, "match": kg1_matches, "no_match": 2 * unmatched}


@pytest.mark.slow
def test_large_stream_is_not_held_whole(tmp_path: Path) -> None:
    expected = _large_checkpoint(tmp_path / "ckpt")
    server = Server(tmp_path / "ckpt", tmp_path / "server.log",
                    {"MIMEA_REDIS_URL": "", "MIMEA_THREADS": "1"}, startup_s=120)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.get("/alignment", params={"kg": 2, "decision": "seed"}).raise_for_status()
            before = server.rss_mb()
            peak, received, lines, decisions = before, 0, 0, {}
            with http.stream("GET", "/alignment") as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    record = json.loads(line)
                    decisions[record["decision"]] = decisions.get(record["decision"], 0) + 1
                    received += len(line) + 1
                    lines += 1
                    if lines % 5_000 == 0:
                        peak = max(peak, server.rss_mb())
    finally:
        server.stop()
    assert decisions == expected
    assert lines == sum(expected.values())
    body_mb = received / 2**20
    assert body_mb > 10
    # Holding the body (or its records) whole would add at least its size to the server.
    assert peak - before < body_mb / 3, (before, peak, body_mb)
