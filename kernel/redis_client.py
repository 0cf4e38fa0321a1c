"""One shared redis-py client per process for the online state, with short timeouts so a slow Redis costs little.

With ``REDIS_CLUSTER=1`` the client is redis-py's ``RedisCluster`` (``REDIS_URL`` names any node; it discovers the
rest). The rules every caller follows so that the same code runs on one Redis and on a cluster (docs/operations.md,
"Redis Cluster"):

- Keys of one owner share a hash tag (``hist:{<owner>}``, ``aff:{<owner>}``, ``cv:{<owner>}``); global keys that are
  written or read together share one too (``{online}``, ``{model}``, ``{items}``, ``{impressions}``).
- A MULTI/EXEC or a Lua script touches keys of one slot only: :func:`atomic` opens such a transaction on the node
  that owns the slot (``RedisCluster`` has no MULTI of its own), :func:`script` runs a script there.
- Plain pipelines (``get().pipeline(transaction=False)``) may mix slots: ``RedisCluster`` splits them by node. So
  may DEL/UNLINK/EXISTS of several keys (split per slot); MGET may not (use a plain pipeline).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from django.conf import settings
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import LockError, LockNotOwnedError, RedisClusterException

logger = logging.getLogger(__name__)

WORKER_HEARTBEAT_KEY = "sys:worker:heartbeat"

Client = redis.Redis | RedisCluster

_client: Client | None = None
_lock = threading.Lock()


def _unavailable(error: RedisClusterException) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster unavailable: {error}")


class _ClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except RedisClusterException as error:
            raise _unavailable(error) from error


class _Cluster(RedisCluster):
    """redis-py's cluster client whose "cannot reach the cluster" errors are ``redis.ConnectionError``s.

    ``RedisClusterException`` (and ``SlotNotCoveredError``) do not derive from ``redis.RedisError``, which every
    fallback here catches: with a node killed under load, requests answered 500 instead of degrading (found by a
    sixth tester, 5 December). Every command and pipeline goes through here, so the fallbacks hold as written.
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as error:
            raise _unavailable(error) from error

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _ClusterPipeline:
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)  # type: ignore[return-value]  # raises, as upstream
        return _ClusterPipeline(
            nodes_manager=self.nodes_manager, commands_parser=self.commands_parser,
            startup_nodes=self.nodes_manager.startup_nodes, result_callbacks=self.result_callbacks,
            cluster_response_callbacks=self.cluster_response_callbacks,
            cluster_error_retry_attempts=self.cluster_error_retry_attempts,
            read_from_replicas=self.read_from_replicas, reinitialize_steps=self.reinitialize_steps, lock=self._lock,
        )  # fmt: skip


def _build() -> Client:
    options: dict[str, Any] = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "health_check_interval": 30,
    }
    if settings.REDIS_CLUSTER:
        # Two attempts (redis-py makes 1 + cluster_error_retry_attempts), not the default four with backoff, which
        # held requests 4-5 s while the cluster voted (the sixth tester): after a failed attempt redis-py re-reads
        # the slot map, so the second finds a failover that is done (an hours-long rebuild must not die of a stale
        # map), and a node still voting costs one more socket timeout before the caller degrades.
        try:
            return _Cluster.from_url(settings.REDIS_DATA_URL, cluster_error_retry_attempts=1, **options)
        except RedisClusterException as error:  # no node answers at start: the next get() tries again
            raise _unavailable(error) from error
    return redis.Redis.from_url(settings.REDIS_DATA_URL, **options)


def get() -> Client:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = _build()
    return _client


def is_cluster() -> bool:
    return isinstance(get(), RedisCluster)


def node_client(slot_key: str) -> redis.Redis:
    """A plain client of the node that holds ``slot_key``'s hash slot (the one client itself when not a cluster)."""
    client = get()
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(slot_key))
    return client


def atomic(slot_key: str) -> Pipeline:
    """A MULTI/EXEC pipeline for keys in ``slot_key``'s hash slot (every key queued on it must share its hash tag;
    on a cluster a key of another slot fails the EXEC with CROSSSLOT / MOVED)."""
    return node_client(slot_key).pipeline(transaction=True)


def batch() -> Pipeline:
    """A pipeline for a batch of writes that may span owners: all-or-nothing (MULTI) on a single Redis; on a cluster
    split by node and not atomic across them (``RedisCluster`` has no cross-slot transactions). For derived state
    only (the online state, rebuildable from Postgres), never where atomicity across keys is the point."""
    client = get()
    if isinstance(client, RedisCluster):
        return client.pipeline(transaction=False)  # type: ignore[return-value]
    return client.pipeline(transaction=True)


def script(source: str, *, slot_key: str) -> Script:
    """A Lua script for keys in ``slot_key``'s hash slot, run on the node that holds it."""
    return node_client(slot_key).register_script(source)


def reset() -> None:
    """Forget the client (tests and benches that point the settings at another server)."""
    global _client
    with _lock:
        _client = None


class KeptLock:
    """What :func:`kept_lock` yields: true while this job holds the lock. ``lost`` turns true (and stays) once the
    heartbeat finds the lock no longer ours (it expired through a long Redis outage, or the Redis holding it
    restarted empty): another job may hold it now, so work that must be the only one of its kind stops before
    it publishes anything."""

    def __init__(self, held: bool, lock: Any = None) -> None:
        self.held = held
        self._lock = lock
        self._lost = threading.Event()

    def __bool__(self) -> bool:
        return self.held

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def confirm(self) -> bool:
        """Whether the lock is still this job's, asked of Redis now (and extended): the heartbeat's last look may
        be a beat old. Raises ``redis.RedisError`` when Redis cannot say."""
        if not self.held or self.lost:
            return False
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            self._lost.set()
            logger.error("lock_lost", extra={"lock": self._lock.name})
            return False
        return True


@contextlib.contextmanager
def kept_lock(
    key: str, *, seconds: float, heartbeat: float, on_beat: Callable[[], object] | None = None
) -> Iterator[KeptLock]:
    """A Redis lock held for a long job and kept alive by a heartbeat thread: yields a false :class:`KeptLock` (and
    holds nothing) when another holder has it. A job that dies (a killed worker, a Ctrl-C'd command) frees it within
    ``seconds`` instead of blocking every later run for as long as the job might have taken. ``on_beat`` runs on
    the heartbeat thread after each beat that found the lock still ours: whatever else the job keeps alive with a
    short expiry while it runs (a Redis error there is logged and tried again at the next beat)."""
    # thread_local=False: the heartbeat thread extends the lock with the token this thread acquired.
    lock = get().lock(key, timeout=seconds, blocking=False, thread_local=False)
    if not lock.acquire():
        yield KeptLock(False)
        return
    kept = KeptLock(True, lock)
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(heartbeat):
            try:
                if not kept.confirm():  # gone or someone else's: no beat can win it back
                    return
                if on_beat is not None:
                    on_beat()
            except (redis.RedisError, LockError) as exc:  # a Redis blip: again at the next beat
                logger.warning("lock_heartbeat_failed", extra={"lock": key, "error": str(exc)})

    beat = threading.Thread(target=keep_alive, name=f"lock-heartbeat {key}", daemon=True)
    beat.start()
    try:
        yield kept
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(redis.RedisError, LockError):
            lock.release()
