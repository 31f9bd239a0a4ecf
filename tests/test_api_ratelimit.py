"""Per-key rate limits: in memory by default, shared through Redis when configured."""

from __future__ import annotations

import uuid

import pytest

from retouch.serving.core.errors import RateLimitExceeded, ServiceUnavailable
from retouch.serving.core.ratelimit import RateLimiter, make_rate_limiter

from api_fixtures import api_for, assert_error, make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


def test_moving_window_counts_per_key():
    limiter = RateLimiter("memory://")
    assert limiter.hit("key_a", None) is None  # no limit configured
    first, second = limiter.hit("key_a", 2), limiter.hit("key_a", 2)
    assert (first.remaining, second.remaining) == (1, 0)
    with pytest.raises(RateLimitExceeded) as caught:
        limiter.hit("key_a", 2)
    assert caught.value.headers["Retry-After"] == caught.value.headers["RateLimit-Reset"]
    assert limiter.hit("key_b", 2).remaining == 1


@pytest.mark.skipif(not redis_available(), reason="no Redis server on 127.0.0.1:6379")
def test_two_apps_share_one_window_through_redis(tmp_path):
    settings = make_settings(tmp_path, redis_url=REDIS_URL)
    assert make_rate_limiter(settings).storage.__class__.__name__ == "RedisStorage"
    with api_for(settings) as first_app:
        _, secret = first_app.key(rate_limit_per_minute=3)
        # The second app (another API process) shares the database and the Redis window.
        second_app_limiter = make_rate_limiter(settings)
        key_id = first_app.client.get("/api/v1/credits",
                                      headers=first_app.headers(secret)).json()["credits"][
            "key"]["id"]
        assert second_app_limiter.hit(key_id, 3).remaining == 1
        assert first_app.client.get("/api/v1/credits",
                                    headers=first_app.headers(secret)).status_code == 200
        assert_error(first_app.client.get("/api/v1/credits", headers=first_app.headers(secret)),
                     429, "rate_limit_exceeded")


def test_an_unreachable_rate_limit_store_is_service_unavailable():
    limiter = RateLimiter("redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailable):
        limiter.hit(f"key_{uuid.uuid4().hex}", 5)
