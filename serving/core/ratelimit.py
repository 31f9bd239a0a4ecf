"""Per-key, per-minute rate limits with the `limits` library (moving window).

In-memory storage by default; Redis when `settings.redis_url` is set, so several API processes
share one window. `RateLimiter.hit(key_id, per_minute)` returns the numbers for the
`RateLimit-*` headers, or raises `RateLimitExceeded` carrying them plus `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from retouch.serving.core.errors import RateLimitExceeded, ServiceUnavailable


@dataclass(frozen=True)
class RateLimitStatus:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_seconds)}


class RateLimiter:
    def __init__(self, storage_uri: str = "memory://", *, namespace: str = "retouch"):
        self.storage = storage_from_string(storage_uri)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.namespace = namespace
        self.in_memory = storage_uri.startswith("memory://")  # hit() does no I/O

    def hit(self, key_id: str, per_minute: int | None) -> RateLimitStatus | None:
        """Count one call for `key_id`; None when the key has no limit."""
        if not per_minute or per_minute <= 0:
            return None
        item = RateLimitItemPerMinute(per_minute, namespace=self.namespace)
        try:
            allowed = self.strategy.hit(item, key_id)
            stats = self.strategy.get_window_stats(item, key_id)
        except Exception as exc:  # the Redis backend raises its own connection errors
            raise ServiceUnavailable("the rate-limit store is unavailable") from exc
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        status = RateLimitStatus(per_minute, max(0, stats.remaining), reset)
        if not allowed:
            raise RateLimitExceeded(
                f"Too many requests: this API key allows {per_minute} calls per minute. "
                f"Retry in {reset} seconds.",
                details={"limit": per_minute, "retry_after_seconds": reset},
                headers={"Retry-After": str(reset), **status.headers()})
        return status


def make_rate_limiter(settings) -> RateLimiter:
    if settings.redis_url:
        uri = settings.redis_url
        if uri.startswith("redis://") or uri.startswith("rediss://"):
            return RateLimiter(uri)
        return RateLimiter(f"redis://{uri}")
    return RateLimiter("memory://")
