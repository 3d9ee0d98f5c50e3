"""Per-service QPS limits: token buckets, exact in one process or shared by every gateway through Redis.

A bucket holds at most `burst` tokens and gains `rate` tokens per second; a request takes one or
is refused with the time until one is there (`Retry-After`). Invariant: over any interval of `t`
seconds a bucket admits at most `burst + rate * t` requests — per process for `LocalLimiter`, in
total for all gateways sharing a Redis for `RedisLimiter` (one Lua script does read-refill-take
atomically, on Redis' own clock, so the gateways' clocks do not matter).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Protocol

log = logging.getLogger("modelport.gateway")


def burst_for(rate: float, fraction: float) -> int:
    """The small burst a limit of `rate` requests/s allows: a fraction of a second's worth, at least 1."""
    return max(1, math.ceil(rate * fraction))


class Limiter(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> float:
        """0.0 if a request may pass now, else seconds until it could."""
        ...


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class LocalLimiter:
    """Exact buckets in this process (one gateway process: the platform's own)."""

    def __init__(self, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take_now(self, key: str, rate: float, burst: int) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        return bucket.take(now)

    async def take(self, key: str, rate: float, burst: int) -> float:
        return self.take_now(key, rate, burst)


# KEYS[1] bucket; ARGV rate, burst, n (requests asking at once). Returns {granted, tokens left as a string}.
_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local granted = math.min(n, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(tokens)}
"""

_Bucket = tuple[str, float, int]


class RedisLimiter:
    """Buckets shared by all gateways through Redis; while Redis is unreachable, exact local buckets stand in.

    At most one script call per bucket is in flight from this process; requests that arrive meanwhile
    wait for the next call, which takes all their tokens at once (atomically, so the invariant holds
    for every process together). Under load one round trip serves many requests.
    """

    def __init__(self, url: str, prefix: str = "modelport:") -> None:
        self._url = url
        self._prefix = prefix + "qps:"
        self._client = None
        self._script = None
        self._fallback = LocalLimiter()
        self._warned_at = 0.0
        self._queues: dict[_Bucket, list[asyncio.Future[float]]] = {}
        self._drains: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    def _connect(self) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(self._url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(_LUA)

    async def take(self, key: str, rate: float, burst: int) -> float:
        bucket = (key, rate, burst)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(bucket)
        if queue is None:
            self._queues[bucket] = [future]
            task = asyncio.get_running_loop().create_task(self._drain(bucket))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:
            queue.append(future)
        return await future

    async def _drain(self, bucket: _Bucket) -> None:
        """Serve the bucket's queue, one script call per batch, until nobody waits."""
        try:
            while self._queues[bucket]:
                batch, self._queues[bucket] = self._queues[bucket], []
                waits = await self._take_many(bucket, len(batch))
                for future, wait in zip(batch, waits, strict=True):
                    if not future.done():
                        future.set_result(wait)
        finally:
            for future in self._queues.pop(bucket, []):
                if not future.done():
                    future.set_result(self._fallback.take_now(*bucket))

    async def _take_many(self, bucket: _Bucket, n: int) -> list[float]:
        key, rate, burst = bucket
        if self._script is None:
            self._connect()
        try:
            granted, tokens = await self._script(keys=[self._prefix + key], args=[rate, burst, n])  # type: ignore[misc]
        except Exception as exc:  # redis.RedisError, timeouts, connection errors
            now = time.monotonic()
            if now - self._warned_at > 10:
                self._warned_at = now
                log.warning("QPS limiter: Redis unavailable (%s); limiting per process meanwhile", type(exc).__name__)
            return [self._fallback.take_now(key, rate, burst) for _ in range(n)]
        granted, left = int(granted), float(tokens)
        # the i-th refused request could pass once i + 1 tokens are back
        return [0.0] * granted + [(i + 1 - left) / rate for i in range(n - granted)]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._script = None


def make_limiter(redis_url: str | None, prefix: str) -> Limiter:
    return RedisLimiter(redis_url, prefix) if redis_url else LocalLimiter()
