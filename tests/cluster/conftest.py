"""A real 3-master Redis Cluster (the bundled redis-server, kernel.rediscluster) for the session, and a fixture that
points kernel.redis_client at it.

In the default run these tests start the cluster themselves; the Makefile's cluster group (``REDIS_CLUSTER=1``,
docs/operations.md) runs them again with the whole settings on the cluster, beside the events, serving, cache,
throttling, experiments and rebuild tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.conf import settings
from redis.cluster import RedisCluster

from kernel import redis_client, rediscluster


def _port() -> int:
    # One cluster per test slot, so runs side by side on one machine never share one.
    return rediscluster.DEFAULT_PORT + 10 * (int(os.environ.get("RECSYS_TEST_SLOT", "0")) % 14)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """The URL of a node of the running cluster: the configured one in the cluster group, else one started here
    (and stopped at the session's end if this session started it: a fresh clone's CI left its three servers
    running)."""
    if settings.REDIS_CLUSTER:
        yield settings.REDIS_DATA_URL
        return
    port = _port()
    found = rediscluster.running(port)  # another run's (the same slot): used, and left running
    url = rediscluster.start(port=port)
    try:
        yield url
    finally:
        if not found:
            rediscluster.stop(port=port)


@pytest.fixture
def on_cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """kernel.redis_client on the cluster for one test (flushed first), then back on the configured Redis."""
    previous = (settings.REDIS_CLUSTER, settings.REDIS_DATA_URL)
    settings.REDIS_CLUSTER, settings.REDIS_DATA_URL = True, redis_cluster_url
    redis_client.reset()
    client = redis_client.get()
    assert isinstance(client, RedisCluster)
    client.flushdb()
    try:
        yield client
    finally:
        settings.REDIS_CLUSTER, settings.REDIS_DATA_URL = previous
        redis_client.reset()
