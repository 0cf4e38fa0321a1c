"""Per-key rate limiting in Redis: a fixed one-minute window counted with INCR, shared by every web process."""

from __future__ import annotations

import logging
import time

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from recsys import redis_client
from recsys.auth import ApiClient

logger = logging.getLogger(__name__)


class ApiKeyRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: object) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return True
        limit = client.rate_per_minute or settings.API_DEFAULT_RATE_PER_MINUTE
        now = time.time()
        window = int(now // 60)
        key = f"throttle:key:{client.key_id}:{window}"
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 120)
            count = pipe.execute()[0]
        except redis.RedisError:
            # Fail open: a Redis outage must not take the storefront's recommendations down with it.
            logger.warning("throttle_unavailable", exc_info=True)
            return True
        if count > limit:
            self._wait = (window + 1) * 60 - now
            return False
        return True

    def wait(self) -> float | None:
        return self._wait
