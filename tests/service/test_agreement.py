"""The service's numbers agree with a brute-force computation from the checkpoint's tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.checkpoint import load_checkpoint
from service.aligner import csls_pool_size

CSLS_K = 10
TEMPERATURE = 0.05


@dataclass
class Reference:
    """Dense float64 cosine/CSLS matrices between the two KGs."""

    uris: list[str]
    kg_of: dict[str, int]
    local_of: dict[str, int]
    kg_uris: dict[int, list[str]]
    cos: np.ndarray  # [n1, n2]
    r: dict[int, np.ndarray]
    mods: dict[str, np.ndarray]
    mask: np.ndarray
    weights: np.ndarray
    modalities: list[str]

    def row(self, uri: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Cosine and CSLS of ``uri`` against every entity of the other KG."""
        kg, i = self.kg_of[uri], self.local_of[uri]
        cos = self.cos[i] if kg == 1 else self.cos[:, i]
        csls = 2 * cos - self.r[kg][i] - self.r[3 - kg]
        return cos, csls, self.kg_uris[3 - kg]


def build_reference(path: Path) -> Reference:
    ckpt = load_checkpoint(path)
    emb = ckpt.embeddings
    joint = emb.joint.double().numpy()
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    kgs = np.asarray(ckpt.entities.kgs)
    uris = ckpt.entities.uris
    rows = {kg: np.flatnonzero(kgs == kg) for kg in (1, 2)}
    cos = joint[rows[1]] @ joint[rows[2]].T
    r = {1: np.sort(cos, axis=1)[:, -CSLS_K:].mean(1),
         2: np.sort(cos.T, axis=1)[:, -CSLS_K:].mean(1)}
    mods = {}
    for m, t in emb.modalities.items():
        x = t.double().numpy()
        mods[m] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    local_of = {}
    for kg in (1, 2):
        for i, row in enumerate(rows[kg]):
            local_of[uris[row]] = i
    return Reference(uris=uris, kg_of={u: int(k) for u, k in zip(uris, kgs, strict=True)},
                     local_of=local_of, kg_uris={kg: [uris[i] for i in rows[kg]] for kg in (1, 2)},
                     cos=cos, r=r, mods=mods, mask=emb.mask.numpy(),
                     weights=emb.fusion_weights.double().numpy(), modalities=ckpt.modalities)


@pytest.fixture(scope="module")
def ref(synthetic) -> Reference:
    return build_reference(synthetic.path)


def sample_entities(ref: Reference, count: int = 12) -> list[str]:
    rng = np.random.default_rng(1)
    return [ref.kg_uris[kg][i] for kg in (1, 2)
            for i in rng.choice(len(ref.kg_uris[kg]), count, replace=False)]


def modality_cos(ref: Reference, a: str, b: str) -> dict[str, float | None]:
    ia, ib = ref.uris.index(a), ref.uris.index(b)
    return {m: float(ref.mods[m][ia] @ ref.mods[m][ib]) if ref.mask[ia, j] and ref.mask[ib, j]
            else None for j, m in enumerate(ref.modalities)}


@pytest.mark.parametrize("k", [1, 10, 40])
def test_cosine_candidates_match_brute_force(client: TestClient, ref: Reference, k: int) -> None:
    for uri in sample_entities(ref):
        body = client.get(f"/candidates/{uri}", params={"k": k}).json()
        cos, csls, others = ref.row(uri)
        order = np.argsort(-cos)[:k]
        assert [c["entity"] for c in body["candidates"]] == [others[j] for j in order]
        np.testing.assert_allclose([c["score"] for c in body["candidates"]], cos[order],
                                   atol=1e-5)
        np.testing.assert_allclose([c["csls"] for c in body["candidates"]], csls[order],
                                   atol=1e-5)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_csls_candidates_match_pool_reranking(client: TestClient, ref: Reference, k: int) -> None:
    for uri in sample_entities(ref):
        body = client.get(f"/candidates/{uri}", params={"k": k, "csls": True}).json()
        cos, csls, others = ref.row(uri)
        pool = np.argsort(-cos)[:csls_pool_size(k, len(others))]
        order = pool[np.argsort(-csls[pool], kind="stable")][:k]
        assert [c["entity"] for c in body["candidates"]] == [others[j] for j in order]
        np.testing.assert_allclose([c["score"] for c in body["candidates"]], csls[order],
                                   atol=1e-5)
        np.testing.assert_allclose([c["cosine"] for c in body["candidates"]], cos[order],
                                   atol=1e-5)


def test_csls_top1_equals_exact_csls_top1(client: TestClient, ref: Reference) -> None:
    """The max(4k, 50) cosine pool is wide enough for CSLS's top-1 on this data."""
    for uri in sample_entities(ref):
        _, csls, others = ref.row(uri)
        body = client.get(f"/candidates/{uri}", params={"k": 1, "csls": True}).json()
        assert body["candidates"][0]["entity"] == others[int(np.argmax(csls))]


def test_candidate_modality_similarity_matches(client: TestClient, ref: Reference) -> None:
    for uri in sample_entities(ref, 4):
        for cand in client.get(f"/candidates/{uri}", params={"k": 5}).json()["candidates"]:
            expected = modality_cos(ref, uri, cand["entity"])
            for m, value in cand["modality_similarity"].items():
                assert (value is None) == (expected[m] is None)
                if value is not None:
                    assert value == pytest.approx(expected[m], abs=1e-5)


def expected_align(ref: Reference, source: str, target: str) -> dict:
    cos_s, csls_s, others_s = ref.row(source)
    cos_t, csls_t, others_t = ref.row(target)
    t, s = others_s.index(target), others_t.index(source)
    p_f = np.exp((cos_s - cos_s.max()) / TEMPERATURE)
    p_b = np.exp((cos_t - cos_t.max()) / TEMPERATURE)
    return {
        "cosine": cos_s[t], "csls": csls_s[t],
        "target_rank": {"cosine": 1 + int((cos_s > cos_s[t]).sum()),
                        "csls": 1 + int((csls_s > csls_s[t]).sum())},
        "source_rank": {"cosine": 1 + int((cos_t > cos_t[s]).sum()),
                        "csls": 1 + int((csls_t > csls_t[s]).sum())},
        "confidence": float(np.sqrt(p_f[t] / p_f.sum() * p_b[s] / p_b.sum())),
    }


def test_align_matches_brute_force(client: TestClient, ref: Reference, synthetic) -> None:
    rng = np.random.default_rng(2)
    gold = [synthetic.gold[i] for i in rng.choice(len(synthetic.gold), 15, replace=False)]
    random_pairs = [(ref.kg_uris[1][i], ref.kg_uris[2][j])
                    for i, j in zip(rng.integers(0, 300, 10), rng.integers(0, 320, 10),
                                    strict=True)]
    pairs = gold + random_pairs + [(b, a) for a, b in gold[:5]]
    mutual_seen = set()
    for source, target in pairs:
        body = client.post("/align", json={"source": source, "target": target}).json()
        want = expected_align(ref, source, target)
        assert body["cosine"] == pytest.approx(want["cosine"], abs=1e-5)
        assert body["csls"] == pytest.approx(want["csls"], abs=1e-5)
        assert body["target_rank"] == want["target_rank"]
        assert body["source_rank"] == want["source_rank"]
        assert body["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
        mutual = want["target_rank"]["cosine"] == 1 and want["source_rank"]["cosine"] == 1
        assert body["mutual_nearest"] == mutual
        mutual_seen.add(mutual)
        assert body["modalities"]["similarity"] == pytest.approx(
            modality_cos(ref, source, target), abs=1e-5)
        i = ref.uris.index(source)
        assert list(body["modalities"]["source_weights"].values()) == pytest.approx(
            ref.weights[i].tolist(), abs=1e-6)
    assert mutual_seen == {True, False}


def test_gold_pairs_rank_first_mostly(client: TestClient, synthetic) -> None:
    """The synthetic alignment is recoverable: the service finds most gold partners at top-1."""
    sources = [a for a, _ in synthetic.gold[:100]]
    body = client.post("/candidates:batch", json={"entities": sources, "k": 1}).json()
    hits = sum(r["candidates"][0]["entity"] == b
               for r, (_, b) in zip(body["results"], synthetic.gold[:100], strict=True))
    assert hits >= 90
