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
from redis.connection import parse_url

from mimea.service.index import IndexKind, Precision

# Named once, for the settings and for the choices of ``mimea serve``'s options.
DeviceName = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _default_threads() -> int:
    # Every core: a flat search of a few queries is bound by memory bandwidth, which a second
    # core nearly doubles, and the event loop's share of the CPU is small beside it
    # (BENCHMARKS.md, Serving, "Every core for the search").
    return os.cpu_count() or 1


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="MIMEA_", extra="ignore")

    checkpoint: Path | None = Field(None, description="Checkpoint directory written by training.")
    device: DeviceName = Field(
        "auto", description="Where embeddings live; auto picks cuda when torch sees a GPU.")
    index: IndexKind = Field(
        "flat", description="FAISS index per KG: exact flat inner product or approximate.")
    search_precision: Precision = Field(
        "auto", description="Scan of a CPU flat index: float32, or a bfloat16 or int8 copy "
                            "whose shortlist is rescored in float32 (same results, a half or "
                            "a quarter of the memory traffic); auto: int8 where the CPU has "
                            "VNNI, else bfloat16 where torch runs it natively.")
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
    max_request_candidates: int = Field(
        20_000, ge=1, le=1_048_576,
        description="Most candidates one request may ask for (entities x k); a larger request "
                    "is refused with 422 before any work, so no single request can pin the "
                    "search worker, the memory or the cache.")
    chunk_candidates: int = Field(
        2048, ge=1, le=1_048_576,
        description="Most candidates computed in one worker call. Batch requests beyond it are "
                    "split into chunks queued one after another, so other requests interleave "
                    "instead of waiting for the whole batch.")
    batch_window_ms: float = Field(
        2.0, ge=0.0, le=50.0,
        description="Most extra wait, under load only, for the last batch's clients to come back "
                    "so batches stay full; 0 merges only what is already queued.")

    redis_url: str | None = Field(None, description="Redis URL; unset = in-process LRU cache.")
    cache_ttl_s: int = Field(3600, ge=1)
    cache_size: int = Field(10_000, ge=0, description="Entries of the in-process LRU cache.")
    cache_namespace: str = Field("mimea", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    redis_timeout_s: float = Field(0.25, gt=0.0, le=10.0)
    redis_retry_s: float = Field(1.0, gt=0.0, le=300.0,
                                 description="Pause before retrying Redis once it has failed.")

    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024,
        description="Largest request body: a larger declared Content-Length is refused with 413 "
                    "before the body is read (and before the API key is checked); a streamed "
                    "body is cut off with 413 once it exceeds it.")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024,
        description="Largest request line plus headers; beyond it the server answers 431 and "
                    "closes the connection.")
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0,
        description="Time a connection has to deliver a request's headers, from connecting or "
                    "from the request's first byte; then it is answered 408 and closed, so "
                    "half-sent requests cannot hold connections open.")
    keep_alive_timeout_s: int = Field(
        5, ge=1, le=300, description="Idle time after which a keep-alive connection is closed.")
    limit_concurrency: int | None = Field(
        None, ge=1,
        description="Most connections plus requests in progress; beyond it the server answers "
                    "503 at once. None: no limit.")

    api_key: SecretStr | None = Field(
        None, description="If set, required as X-API-Key. Empty means unset; a blank key or "
                          "one with surrounding whitespace is refused at start-up.")
    log_level: LogLevel = "INFO"

    @field_validator("redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        # Only the empty string means "no key": a whitespace-only key (a quoting slip) would
        # otherwise silently turn authentication off, and HTTP strips surrounding whitespace
        # from header values, so such a key could never be matched either.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value == "":
            return None
        if isinstance(value, str) and value != value.strip():
            raise ValueError("api_key is blank or has surrounding whitespace; set a real key, "
                             "or leave MIMEA_API_KEY empty for no authentication")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        try:
            parse_url(value)
        except ValueError as exc:  # e.g. a port out of 0-65535; the URL may hold a password
            raise ValueError(f"redis_url is not a valid Redis URL: {exc}") from exc
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
