"""Service configuration: one pydantic-settings class, read from ``MIMEA_*`` environment variables.

CLI options override the environment by being passed as keyword arguments (init arguments take
priority over the environment in pydantic-settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_threads() -> int:
    # Every core: a flat search of a few queries is bound by memory bandwidth, which a second
    # core nearly doubles, and the event loop's share of the CPU is small beside it
    # (BENCHMARKS.md, Serving, "Every core for the search").
    return os.cpu_count() or 1


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="MIMEA_", extra="ignore")

    checkpoint: Path | None = Field(None, description="Checkpoint directory written by training.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where embeddings live; auto picks cuda when torch sees a GPU.")
    index: Literal["flat", "hnsw", "ivf"] = Field(
        "flat", description="FAISS index per KG: exact flat inner product or approximate.")
    search_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Scan of a CPU flat index: float32, or a bfloat16 copy whose "
                            "shortlist is rescored in float32 (same results, half the memory "
                            "traffic); auto: bfloat16 where torch runs it natively.")
    csls_k: int | None = Field(None, ge=1, le=100, description="Neighbours averaged for CSLS "
                               "r_k; None: the k the checkpoint was evaluated with.")
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_search: int = Field(128, ge=8, le=4096)
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; None = about 4*sqrt(n).")
    ivf_nprobe: int = Field(16, ge=1)
    threads: int = Field(default_factory=_default_threads, ge=1,
                         description="FAISS/torch CPU threads for searches.")
    max_batch_size: int = Field(256, ge=1, le=4096,
                                description="Most queries merged into one index search.")
    batch_window_ms: float = Field(
        2.0, ge=0.0, le=50.0,
        description="Most extra wait, under load only, for the last batch's clients to come back "
                    "so batches stay full; 0 merges only what is already queued.")
    confidence_temperature: float = Field(0.05, gt=0.0, le=10.0)

    redis_url: str | None = Field(None, description="Redis URL; unset = in-process LRU cache.")
    cache_ttl_s: int = Field(3600, ge=1)
    cache_size: int = Field(10_000, ge=0, description="Entries of the in-process LRU cache.")
    cache_namespace: str = Field("mimea", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    redis_timeout_s: float = Field(0.25, gt=0.0, le=10.0)
    redis_retry_s: float = Field(1.0, gt=0.0, le=300.0,
                                 description="Pause before retrying Redis once it has failed.")

    api_key: SecretStr | None = Field(None, description="If set, required as X-API-Key.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("redis_url", "api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
