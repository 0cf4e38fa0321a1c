"""One shared redis-py client per process for the online state, with short timeouts so a slow Redis costs little."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

WORKER_HEARTBEAT_KEY = "sys:worker:heartbeat"

_client: redis.Redis | None = None
_lock = threading.Lock()


def get() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(
                    settings.REDIS_DATA_URL,
                    socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                    socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
                    health_check_interval=30,
                )
    return _client
