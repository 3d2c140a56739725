"""The service's numbers agree with a dense float64 computation from the checkpoint's tensors:
every ranking scored over every entity of the other KG with ``model.ranking.score_form``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mimea.model.checkpoint import load_checkpoint
from mimea.model.ranking import RANKINGS, score_form
from mimea.service.main import create_app
from mimea.service.settings import Settings
from tests.service.conftest import EVAL

REG = EVAL["sinkhorn_reg"]


@dataclass
class Reference:
    """Dense cosines between the two KGs and every entity's ranking terms (float64)."""

    uris: list[str]
    kg_of: dict[str, int]
    local_of: dict[str, int]
    kg_uris: dict[int, list[str]]
    cos: np.ndarray  # [n1, n2]
    r: dict[int, np.ndarray]  # CSLS terms at csls_k, from the dense cosines
    potential: dict[int, np.ndarray] | None  # the stored plan's, per KG
    mods: dict[str, np.ndarray]
    mask: np.ndarray
    weights: np.ndarray
    modalities: list[str]

    def row(self, uri: str) -> tuple[np.ndarray, list[str]]:
        """Cosines of ``uri`` to every entity of the other KG, and those entities."""
        kg, i = self.kg_of[uri], self.local_of[uri]
        return (self.cos[i] if kg == 1 else self.cos[:, i]), self.kg_uris[3 - kg]

    def scores(self, uri: str, ranking: str) -> np.ndarray:
        """``uri``'s score of every entity of the other KG under ``ranking``."""
        kg, i = self.kg_of[uri], self.local_of[uri]
        cos, _ = self.row(uri)
        other = 3 - kg
        form = score_form(
            ranking, r_query=torch.from_numpy(self.r[kg]), r_key=torch.from_numpy(self.r[other]),
            log_key=torch.from_numpy(self.potential[other]) if self.potential else None, reg=REG)
        out = form.scale * cos
        if form.row_bias is not None:
            out = out + form.row_bias[i].item()
        return out + (form.col_bias.numpy() if form.col_bias is not None else 0.0)

    def log_share(self, source: str, target: str) -> float:
        """log n + log u_s + log v_t + CSLS / reg of the plan over both KGs."""
        assert self.potential is not None
        kg, i, j = self.kg_of[source], self.local_of[source], self.local_of[target]
        cos, _ = self.row(source)
        csls = 2 * cos[j] - self.r[kg][i] - self.r[3 - kg][j]
        return float(np.log(len(self.kg_uris[kg])) + self.potential[kg][i]
                     + self.potential[3 - kg][j] + csls / REG)


def build_reference(path: Path) -> Reference:
    ckpt = load_checkpoint(path)
    emb = ckpt.embeddings
    joint = emb.joint.double().numpy()
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    kgs = np.asarray(ckpt.entities.kgs)
    uris = ckpt.entities.uris
    rows = {kg: np.flatnonzero(kgs == kg) for kg in (1, 2)}
    cos = joint[rows[1]] @ joint[rows[2]].T
    k = EVAL["csls_k"]
    r = {1: np.sort(cos, axis=1)[:, -k:].mean(1), 2: np.sort(cos.T, axis=1)[:, -k:].mean(1)}
    potential = None
    if emb.sinkhorn_potential is not None:
        potential = {kg: emb.sinkhorn_potential.double().numpy()[rows[kg]] for kg in (1, 2)}
    mods = {}
    for m, t in emb.modalities.items():
        x = t.double().numpy()
        mods[m] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    local_of = {uris[row]: i for kg in (1, 2) for i, row in enumerate(rows[kg])}
    return Reference(uris=uris, kg_of={u: int(k) for u, k in zip(uris, kgs, strict=True)},
                     local_of=local_of, kg_uris={kg: [uris[i] for i in rows[kg]] for kg in (1, 2)},
                     cos=cos, r=r, potential=potential, mods=mods, mask=emb.mask.numpy(),
                     weights=emb.fusion_weights.double().numpy(), modalities=ckpt.modalities)


@pytest.fixture(scope="module")
def ref(synthetic) -> Reference:
    return build_reference(synthetic.path)


@pytest.fixture(scope="module")
def legacy_ref(legacy) -> Reference:
    return build_reference(legacy.path)


@pytest.fixture(scope="module")
def legacy_client(legacy) -> Iterator[TestClient]:
    settings = Settings(checkpoint=legacy.path, redis_url=None, api_key=None, index="flat",
                        device="cpu", threads=1)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def sample_entities(ref: Reference, count: int = 12) -> list[str]:
    rng = np.random.default_rng(1)
    return [ref.kg_uris[kg][i] for kg in (1, 2)
            for i in rng.choice(len(ref.kg_uris[kg]), count, replace=False)]


def modality_cos(ref: Reference, a: str, b: str) -> dict[str, float | None]:
    ia, ib = ref.uris.index(a), ref.uris.index(b)
    return {m: float(ref.mods[m][ia] @ ref.mods[m][ib]) if ref.mask[ia, j] and ref.mask[ib, j]
            else None for j, m in enumerate(ref.modalities)}


def test_stored_csls_terms_are_the_dense_ones(ref: Reference, synthetic) -> None:
    stored = load_checkpoint(synthetic.path).embeddings.csls_r.double().numpy()
    np.testing.assert_allclose(stored[:300], ref.r[1], atol=1e-6)
    np.testing.assert_allclose(stored[300:], ref.r[2], atol=1e-6)


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("k", [1, 10, 40])
def test_candidates_match_dense_ranking(client: TestClient, ref: Reference, ranking: str,
                                        k: int) -> None:
    for uri in sample_entities(ref):
        body = client.get(f"/candidates/{uri}", params={"k": k, "metric": ranking}).json()
        assert body["metric"] == ranking
        cos, others = ref.row(uri)
        order = np.argsort(-ref.scores(uri, ranking), kind="stable")[:k]
        got = body["candidates"]
        assert [c["entity"] for c in got] == [others[j] for j in order]
        np.testing.assert_allclose([c["cosine"] for c in got], cos[order], atol=1e-5)
        np.testing.assert_allclose([c["csls"] for c in got], ref.scores(uri, "csls")[order],
                                   atol=1e-5)
        shares = [ref.log_share(uri, others[j]) for j in order]
        np.testing.assert_allclose([c["probability"] for c in got],
                                   np.exp(np.minimum(shares, 0)), rtol=1e-3, atol=1e-9)
        expected_score = {"cosine": cos[order], "csls": ref.scores(uri, "csls")[order],
                          "sinkhorn": shares}[ranking]
        np.testing.assert_allclose([c["score"] for c in got], expected_score, atol=1e-3)


def test_default_ranking_is_the_headline(client: TestClient) -> None:
    assert client.get("/model").json()["default_metric"] == "sinkhorn"
    uri = "/m/0abc000"
    default = client.get(f"/candidates/{uri}", params={"k": 5}).json()
    assert default == client.get(f"/candidates/{uri}",
                                 params={"k": 5, "metric": "sinkhorn"}).json()


def test_legacy_checkpoint_ranks_by_exact_csls(legacy_client: TestClient,
                                               legacy_ref: Reference) -> None:
    """r computed at load as the dense one; CSLS over every entity, no cosine pool."""
    for uri in sample_entities(legacy_ref):
        body = legacy_client.get(f"/candidates/{uri}", params={"k": 10}).json()
        assert body["metric"] == "csls"
        csls = legacy_ref.scores(uri, "csls")
        _, others = legacy_ref.row(uri)
        order = np.argsort(-csls, kind="stable")[:10]
        assert [c["entity"] for c in body["candidates"]] == [others[j] for j in order]
        np.testing.assert_allclose([c["score"] for c in body["candidates"]], csls[order],
                                   atol=1e-5)
        assert all(c["probability"] is None for c in body["candidates"])


def test_candidate_modality_similarity_matches(client: TestClient, ref: Reference) -> None:
    for uri in sample_entities(ref, 4):
        for cand in client.get(f"/candidates/{uri}", params={"k": 5}).json()["candidates"]:
            expected = modality_cos(ref, uri, cand["entity"])
            for m, value in cand["modality_similarity"].items():
                assert (value is None) == (expected[m] is None)
                if value is not None:
                    assert value == pytest.approx(expected[m], abs=1e-5)


def dense_rank(scores: np.ndarray, gold: int) -> int:
    return 1 + int((scores > scores[gold]).sum())


def align_pairs(ref: Reference, gold: list[tuple[str, str]]) -> list[tuple[str, str]]:
    rng = np.random.default_rng(2)
    picked = [gold[i] for i in rng.choice(len(gold), 15, replace=False)]
    random_pairs = [(ref.kg_uris[1][i], ref.kg_uris[2][j])
                    for i, j in zip(rng.integers(0, 300, 10), rng.integers(0, 320, 10),
                                    strict=True)]
    return picked + random_pairs + [(b, a) for a, b in picked[:5]]


def test_align_matches_dense(client: TestClient, ref: Reference, synthetic) -> None:
    mutual_seen = set()
    for source, target in align_pairs(ref, synthetic.gold):
        body = client.post("/align", json={"source": source, "target": target}).json()
        cos, others_s = ref.row(source)
        _, others_t = ref.row(target)
        t, s = others_s.index(target), others_t.index(source)
        assert body["cosine"] == pytest.approx(cos[t], abs=1e-5)
        assert body["csls"] == pytest.approx(ref.scores(source, "csls")[t], abs=1e-5)
        share = ref.log_share(source, target)
        assert body["sinkhorn"] == pytest.approx(share, abs=1e-3)
        assert body["probability"] == pytest.approx(min(1.0, np.exp(share)), rel=1e-3, abs=1e-9)
        for ranking in RANKINGS:
            assert body["target_rank"][ranking] == dense_rank(ref.scores(source, ranking), t)
            assert body["source_rank"][ranking] == dense_rank(ref.scores(target, ranking), s)
        mutual = body["target_rank"]["sinkhorn"] == 1 and body["source_rank"]["sinkhorn"] == 1
        assert body["mutual_nearest"] == mutual
        mutual_seen.add(mutual)
        assert body["modalities"]["similarity"] == pytest.approx(
            modality_cos(ref, source, target), abs=1e-5)
        i = ref.uris.index(source)
        assert list(body["modalities"]["source_weights"].values()) == pytest.approx(
            ref.weights[i].tolist(), abs=1e-6)
    assert mutual_seen == {True, False}


def test_legacy_align_has_no_plan(legacy_client: TestClient, legacy_ref: Reference,
                                  legacy) -> None:
    for source, target in align_pairs(legacy_ref, legacy.gold)[:10]:
        body = legacy_client.post("/align", json={"source": source, "target": target}).json()
        t = legacy_ref.row(source)[1].index(target)
        assert body["target_rank"]["csls"] == dense_rank(legacy_ref.scores(source, "csls"), t)
        assert body["target_rank"]["sinkhorn"] is body["source_rank"]["sinkhorn"] is None
        assert body["sinkhorn"] is body["probability"] is None
        assert body["mutual_nearest"] == (body["target_rank"]["csls"] == 1
                                          and body["source_rank"]["csls"] == 1)


def test_gold_pairs_rank_first_mostly(client: TestClient, synthetic) -> None:
    """The synthetic alignment is recoverable: the service finds most gold partners at top-1."""
    sources = [a for a, _ in synthetic.gold[:100]]
    body = client.post("/candidates:batch", json={"entities": sources, "k": 1}).json()
    hits = sum(r["candidates"][0]["entity"] == b
               for r, (_, b) in zip(body["results"], synthetic.gold[:100], strict=True))
    assert hits >= 90
