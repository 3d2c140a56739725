"""Fixtures: a realistic synthetic checkpoint with a known alignment, apps and Redis access."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from bench.checkpoints import noisy_copy_embeddings
from mimea.model.checkpoint import EntityTable, write_checkpoint
from mimea.model.ranking import serving_terms
from mimea.service.main import create_app
from mimea.service.settings import Settings
from mimea.training.calibration import decide_checkpoint, write_decisions
from tests.service.redis_process import RedisProcess

DIMS = {"structure": 32, "relation": 16, "attribute": 16, "visual": 24}
N1, N2, N_GOLD = 300, 320, 300
EVAL = {"csls_k": 10, "sinkhorn_reg": 0.02, "sinkhorn_iterations": 20, "candidates": 50,
        "headline": "sinkhorn"}
TEST_REDIS_URL = os.environ.get("MIMEA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass(frozen=True)
class SyntheticCheckpoint:
    path: Path
    uris: list[str]
    kgs: list[int]
    gold: list[tuple[str, str]]  # (KG1 uri, KG2 uri)
    model_version: str


def _kg1_uri(i: int) -> str:
    if i % 3 == 0:
        return f"/m/0abc{i:03d}"
    if i % 3 == 1:
        return f"http://example.org/resource/A_(b){i}"
    return f"http://zh.dbpedia.org/resource/阿卜杜拉_{i}"


def _kg2_uri(i: int) -> str:
    if i == 3:
        return "http://dbpedia.org/resource/What_turns_you_on%3F_#3"  # literal %3F as in DBpedia
    if i == 5:
        return "http://dbpedia.org/resource/Who?_(band) 100%"
    return f"http://dbpedia.org/resource/Entity_{i}" if i % 2 else f"/m/0xyz/{i}"


def build_checkpoint(path: Path, *, seed: int = 0, noise: float = 0.35,
                     ranking_terms: bool = True, decided: bool = False) -> SyntheticCheckpoint:
    """KG2 entity j < N_GOLD is a noisy copy of KG1 entity perm[j]; the rest are unmatched.

    With ``ranking_terms`` the checkpoint stores the terms of the Sinkhorn ranking, as training
    writes them now; without, it is one written before they were stored. ``decided`` adds the
    decided alignment as training stores it (calibrated on the validation pairs).
    """
    gen = torch.Generator().manual_seed(seed)
    perm, tables = noisy_copy_embeddings(N1, N2, N_GOLD, DIMS, noise=noise,
                                         missing={"visual": 0.3, "attribute": 0.1}, gen=gen)
    n = N1 + N2
    uris = [_kg1_uri(i) for i in range(N1)] + [_kg2_uri(j) for j in range(N2)]
    kgs = [1] * N1 + [2] * N2
    if ranking_terms:
        r, potential = serving_terms(tables.joint, torch.tensor(kgs), k=EVAL["csls_k"],
                                     candidates=EVAL["candidates"], reg=EVAL["sinkhorn_reg"],
                                     iterations=EVAL["sinkhorn_iterations"])
        tables = dataclasses.replace(tables, csls_r=r, sinkhorn_potential=potential)
    gold = [(uris[int(perm[j])], uris[N1 + j]) for j in range(N_GOLD)]
    pairs = [[int(perm[j]), N1 + j] for j in range(N_GOLD)]
    version = write_checkpoint(
        path,
        config={"modalities": list(DIMS), "model": {"hidden": 32},
                "config": {"eval": EVAL, "model": {"propagation": False}},
                "data": {"name": "synthetic", "kg1": "KG1", "kg2": "KG2"}},
        weights={"encoder.weight": torch.randn(4, 4, generator=gen)},
        embeddings=tables,
        entities=EntityTable(ids=list(range(n)), kgs=kgs, uris=uris),
        split={"train_ratio": 0.3, "seed": seed, "train": pairs[:90], "valid": pairs[90:120],
               "test": pairs[120:]},
        metrics={"test": {"hits@1": 0.9, "mrr": 0.93}, "epochs": 1, "wall_time_s": 1.0},
    )
    if decided:
        version = write_decisions(path, decide_checkpoint(path))
    return SyntheticCheckpoint(path=path, uris=uris, kgs=kgs, gold=gold, model_version=version)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCheckpoint:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthetic")


@pytest.fixture(scope="session")
def decided(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCheckpoint:
    """A noisier pair (so that some decisions are wrong) in a checkpoint that stores the
    decided alignment."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "decided", noise=1.2,
                            decided=True)


@pytest.fixture(scope="session")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCheckpoint:
    """The same data in a checkpoint without the ranking terms."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "legacy", ranking_terms=False)


@pytest.fixture
def make_settings(synthetic: SyntheticCheckpoint) -> Callable[..., Settings]:
    """Settings isolated from the caller's MIMEA_* environment."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"checkpoint": synthetic.path, "redis_url": None,
                                  "api_key": None, "index": "flat", "device": "cpu",
                                  "threads": 1, "cache_namespace": "mimea"}
        values.update(overrides)
        return Settings(**values)

    return make


def serving(checkpoint: Path) -> TestClient:
    """A client of an app over ``checkpoint`` with the in-process cache, isolated from the
    caller's MIMEA_* environment (enter it to start the app)."""
    return TestClient(create_app(Settings(checkpoint=checkpoint, redis_url=None, api_key=None,
                                          index="flat", device="cpu", threads=1)))


@pytest.fixture(scope="module")
def client(synthetic: SyntheticCheckpoint) -> Iterator[TestClient]:
    """A shared app over the synthetic checkpoint with the in-process cache."""
    with serving(synthetic.path) as test_client:
        yield test_client


def redis_available(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False
    return True


@pytest.fixture
def redis_url() -> str:
    """The test Redis; unreachable → skip locally, fail in CI (env CI set)."""
    if not redis_available(TEST_REDIS_URL):
        message = f"Redis not reachable at {TEST_REDIS_URL} (set MIMEA_TEST_REDIS_URL)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return TEST_REDIS_URL


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A unique key namespace per test, deleted afterwards."""
    import redis

    name = f"mimea-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a currently unused local TCP port."""
    return _free_port


@pytest.fixture
def private_redis(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (required in CI)")
        pytest.skip("redis-server is not installed")
    server = RedisProcess(binary, tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
