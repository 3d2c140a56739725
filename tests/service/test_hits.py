"""What the service answers is what is measured: Hits@1 of a checkpoint's test pairs asked
through the HTTP API equals the figure computed densely over every entity of the other KG."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mimea.model.checkpoint import load_checkpoint
from mimea.model.ranking import score_form
from tests.service.conftest import EVAL, SyntheticCheckpoint, build_checkpoint, serving

BATCH = 64
DIRECTIONS = {"kg1_to_kg2": (0, 1), "kg2_to_kg1": (1, 0)}


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCheckpoint:
    """Noisy enough that the rankings differ: Hits@1 about 0.76 (cosine) to 0.87 (Sinkhorn)."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "hard", seed=1, noise=1.6)


@pytest.fixture(scope="module")
def hard_client(hard: SyntheticCheckpoint) -> Iterator[TestClient]:
    with serving(hard.path) as test_client:
        yield test_client


def dense_gold_ranks(hard: SyntheticCheckpoint, ranking: str, direction: str) -> np.ndarray:
    """Rank of each test pair's gold among every entity of the other KG (ties count against
    it), from the checkpoint's tensors in float64."""
    ckpt = load_checkpoint(hard.path)
    emb = ckpt.embeddings
    row_of = {ent_id: row for row, ent_id in enumerate(ckpt.entities.ids)}
    pairs = np.array([[row_of[a], row_of[b]] for a, b in ckpt.split["test"]])
    src_col, gold_col = DIRECTIONS[direction]
    sources, gold = pairs[:, src_col], pairs[:, gold_col]
    kgs = np.asarray(ckpt.entities.kgs)
    keys = np.flatnonzero(kgs == kgs[gold[0]])
    joint = torch.nn.functional.normalize(emb.joint.double(), dim=1)
    r, potential = emb.csls_r.double(), emb.sinkhorn_potential.double()
    form = score_form(ranking, r_query=r[sources], r_key=r[keys], log_key=potential[keys],
                      reg=EVAL["sinkhorn_reg"])
    scores = form.scale * (joint[sources] @ joint[keys].T)
    if form.col_bias is not None:
        scores = scores + form.col_bias[None, :]
    at_gold = scores[:, np.searchsorted(keys, gold)].diagonal()
    return (scores >= at_gold[:, None]).sum(dim=1).numpy()


def api_hits1(client: TestClient, hard: SyntheticCheckpoint, direction: str,
              metric: str | None = None) -> float:
    """Hits@1 from ``/candidates:batch`` at k = 1, by the service's default ranking unless
    ``metric`` is given."""
    ckpt = load_checkpoint(hard.path)
    uri_of = dict(zip(ckpt.entities.ids, ckpt.entities.uris, strict=True))
    src_col, gold_col = DIRECTIONS[direction]
    pairs = [(uri_of[p[src_col]], uri_of[p[gold_col]]) for p in ckpt.split["test"]]
    hits = 0
    for lo in range(0, len(pairs), BATCH):
        chunk = pairs[lo:lo + BATCH]
        body = {"entities": [s for s, _ in chunk], "k": 1}
        if metric is not None:
            body["metric"] = metric
        response = client.post("/candidates:batch", json=body)
        assert response.status_code == 200, response.text
        hits += sum(r["candidates"][0]["entity"] == gold
                    for r, (_, gold) in zip(response.json()["results"], chunk, strict=True))
    return hits / len(pairs)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_http_hits1_is_the_all_targets_figure(hard_client: TestClient, hard, direction: str
                                              ) -> None:
    assert hard_client.get("/model").json()["default_metric"] == "sinkhorn"
    expected = float((dense_gold_ranks(hard, "sinkhorn", direction) == 1).mean())
    assert abs(api_hits1(hard_client, hard, direction) - expected) <= 0.001
    # the default is the better ranking here, so the service answers what is measured
    csls = float((dense_gold_ranks(hard, "csls", direction) == 1).mean())
    assert expected > csls
    assert abs(api_hits1(hard_client, hard, direction, "csls") - csls) <= 0.001


def test_align_ranks_are_the_dense_ranks(hard_client: TestClient, hard) -> None:
    ckpt = load_checkpoint(hard.path)
    uri_of = dict(zip(ckpt.entities.ids, ckpt.entities.uris, strict=True))
    pairs = [{"source": uri_of[a], "target": uri_of[b]} for a, b in ckpt.split["test"]]
    results = []
    for lo in range(0, len(pairs), BATCH):
        response = hard_client.post("/align:batch", json={"pairs": pairs[lo:lo + BATCH]})
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    for ranking in ("cosine", "csls", "sinkhorn"):
        assert [r["target_rank"][ranking] for r in results] == \
            dense_gold_ranks(hard, ranking, "kg1_to_kg2").tolist()
        assert [r["source_rank"][ranking] for r in results] == \
            dense_gold_ranks(hard, ranking, "kg2_to_kg1").tolist()
