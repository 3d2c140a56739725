"""Response cache: Redis (``redis.asyncio``, hiredis parser) or an in-process LRU.

Values are the JSON bytes of one answer, keyed ``{namespace}:{model_version}:{kind}:...`` so a
new checkpoint never reads an old checkpoint's answers. Redis is an accelerator, not a
dependency: any Redis failure marks the cache *degraded* and the request goes on uncached; after
``retry_s`` the next request tries Redis again, and the first success marks it healthy.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

OK, DEGRADED, DISABLED = "ok", "degraded", "disabled"


class ResponseCache:
    """Interface shared by both backends."""

    backend = "none"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        raise NotImplementedError

    @property
    def status(self) -> str:
        return OK

    async def check(self) -> str:
        """Actively probe the backend (``/ready``) and return its status."""
        return self.status

    async def aclose(self) -> None:
        return None


class LRUCache(ResponseCache):
    """Bounded in-process cache with a TTL; size 0 disables it."""

    backend = "memory"

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def status(self) -> str:
        return OK if self._max > 0 else DISABLED

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry[0] < now:
                if entry is not None:
                    del self._data[key]
                out.append(None)
            else:
                self._data.move_to_end(key)
                out.append(entry[1])
        return out

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        if self._max <= 0:
            return
        expiry = time.monotonic() + self._ttl
        for key, value in items.items():
            self._data[key] = (expiry, value)
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class RedisCache(ResponseCache):
    """Redis with fail-fast timeouts, no client-side retries, and a degraded state.

    ``on_error`` is called once per failed Redis call, so that failures that the degraded
    state hides from clients still show in the service's metrics.
    """

    backend = "redis"

    def __init__(self, url: str, ttl_s: int, *, timeout_s: float = 0.25,
                 retry_s: float = 1.0, on_error: Callable[[], None] | None = None) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self._ttl = ttl_s
        self._retry_s = retry_s
        self._failed_at: float | None = None
        self._on_error = on_error

    @property
    def status(self) -> str:
        return OK if self._failed_at is None else DEGRADED

    def _usable(self) -> bool:
        return self._failed_at is None or time.monotonic() - self._failed_at >= self._retry_s

    def _failed(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error()
        if self._failed_at is None:
            logger.warning("Redis unavailable, serving uncached: %s", exc)
        self._failed_at = time.monotonic()

    def _succeeded(self) -> None:
        if self._failed_at is not None:
            logger.info("Redis is back; caching resumes")
        self._failed_at = None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._usable():
            return [None] * len(keys)
        try:
            if len(keys) == 1:
                values = [await self._client.get(keys[0])]
            else:
                values = await self._client.mget(list(keys))
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        return values

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items or not self._usable():
            return
        try:
            if len(items) == 1:
                ((key, value),) = items.items()
                await self._client.set(key, value, ex=self._ttl)
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, value in items.items():
                        pipe.set(key, value, ex=self._ttl)
                    await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._succeeded()

    async def check(self) -> str:
        try:
            await self._client.ping()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._succeeded()
        return self.status

    async def aclose(self) -> None:
        await self._client.aclose()


def build_cache(redis_url: str | None, *, ttl_s: int, max_entries: int, timeout_s: float,
                retry_s: float, on_error: Callable[[], None] | None = None) -> ResponseCache:
    """Redis when a URL is given, the in-process LRU otherwise (which cannot fail)."""
    if redis_url:
        return RedisCache(redis_url, ttl_s, timeout_s=timeout_s, retry_s=retry_s,
                          on_error=on_error)
    return LRUCache(max_entries, ttl_s)
