"""Shared bench helpers: a separate database on the same server, subprocess timing, table printing."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bench_env(database: str = "recsys_bench") -> dict[str, str]:
    """Environment for manage.py pointing at a scratch database ``database`` on the configured (or local) server.

    Benchmarks never touch the demo's database.
    """
    from kernel.localservices import ensure_local_services

    ensure_local_services()
    import psycopg

    url = os.environ["DATABASE_URL"]
    parts = urlsplit(url)
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    env = dict(os.environ)
    env["DATABASE_URL"] = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))
    env.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
    return env


def manage(env: dict[str, str], *args: str, capture: bool = True) -> tuple[float, str]:
    """Run ``manage.py args`` and return (seconds, stdout); raises on failure."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, text=True,
        capture_output=capture, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return seconds, result.stdout or ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def environment() -> list[tuple[str, str]]:
    """What a figure depends on besides the code: CPU, cores, numpy and its BLAS, the native thread pools (this
    process's, as the host sets them, and a web process's, as kernel.native_threads sets them) and the BLAS/OpenMP
    variables of the environment."""
    import platform

    import numpy as np
    from threadpoolctl import threadpool_info

    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )  # fmt: skip
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"

    def pools(info: list[dict[str, object]]) -> str:
        return ", ".join(
            f"{p.get('internal_api')} {p.get('version') or ''} ({p.get('architecture') or '-'}) x{p.get('num_threads')}"
            .replace(" (-)", "").replace("  ", " ")
            for p in info
        )  # fmt: skip

    host_pools = pools(threadpool_info())
    web = subprocess.run(
        [sys.executable, "-c", "import json; from kernel.native_threads import limit_for_serving, describe; "
         "limit_for_serving(); print(json.dumps(describe()))"],
        cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ},
    )  # fmt: skip
    web_pools = pools(json.loads(web.stdout)) if web.returncode == 0 else f"? ({web.stderr.strip()[-80:]})"
    variables = [
        f"{name}={os.environ[name]}" for name in sorted(os.environ)
        if name.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO", "WEB_NATIVE"))
    ]  # fmt: skip
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)"),
        ("python / numpy", f"{platform.python_version()} / {np.__version__}"),
        ("native pools, bench process (host defaults)", host_pools),
        ("native pools, web process (as served)", web_pools),
        ("BLAS/OpenMP variables", " ".join(variables) or "none set"),
        # A cached list's cost depends on it: no Redis round trip when tracked (docs/operations.md).
        ("Redis", _redis_mode()),
    ]


def _redis_mode() -> str:
    from kernel.env import env_bool  # the settings' own parsing (the bench process has no Django settings)

    cluster, tracked = env_bool("REDIS_CLUSTER", False), env_bool("REDIS_VERSION_TRACKING", True)
    if cluster:
        return "cluster (REDIS_CLUSTER=1): versions read every time"
    return f"one server; cache versions {'tracked' if tracked else 'read every time (REDIS_VERSION_TRACKING=0)'}"


def print_environment() -> None:
    """Print ``environment()`` beside a bench's tables, so a figure says where it comes from."""
    rows = environment()
    width = max(len(name) for name, _ in rows)
    print("\nEnvironment")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:,.3f}"
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def demo_env(database: str, redis_db: int) -> tuple[dict[str, str], str]:
    """A scratch database with the demo data, its online state and a trained model (built once, then reused),
    its own Redis databases, and an API key with every scope. Returns (env, key)."""
    from kernel.redis_urls import with_db

    env = bench_env(database)
    env["REDIS_URL"] = with_db(env["REDIS_URL"], redis_db)
    env["ARTIFACT_ROOT"] = str(ROOT / "var" / f"{database}-artifacts")
    env["DEBUG"] = "0"
    env["API_DEFAULT_RATE_PER_MINUTE"] = "100000000"
    # The benches send hundreds of requests a second for a few dozen customers: not what the limits are for.
    env["API_CUSTOMER_RATE_PER_MINUTE"] = "100000000"
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "load_demo", "--quiet")
    code = (
        "from ranking.selectors import active_version_id; from events import keys; from kernel import redis_client;"
        "print(active_version_id() or 0, int(bool(redis_client.get().exists(keys.ONLINE_STATE_COMPLETE))))"
    )
    _, out = manage(env, "shell", "-c", code)
    version, has_state = (int(x) for x in out.strip().splitlines()[-1].split())
    if not has_state:
        manage(env, "rebuild_online_state")
    if not version:
        print("training the first model (once) ...", file=sys.stderr)
        manage(env, "train", "--force", "--quiet")
    _, key = manage(env, "create_api_key", "bench", "--scope", "admin")
    return env, key.strip().splitlines()[-1]


class Server:
    """gunicorn serving the project on a free loopback port, stopped on exit."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 4,
        threads: int = 1,
        log: Path | None = None,
        access_log: Path | None = None,
    ) -> None:
        """``access_log``: gunicorn writes each request's time in the worker there, in microseconds, one per line
        (``%(D)s``: from the parsed request to the response written and closed)."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.args = ["--workers", str(workers), "--threads", str(threads)]
        if access_log is not None:
            self.args += ["--access-logfile", str(access_log), "--access-logformat", "%(D)s"]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log  # where the server's stdout/stderr go (default: this process's)

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "recsys.wsgi", "--bind", f"127.0.0.1:{self.port}",
             *self.args, "--log-level", "warning"],
            cwd=ROOT, env=self.env,
            stdout=self.log.open("ab") if self.log else None, stderr=subprocess.STDOUT if self.log else None,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/healthz", timeout=1).read()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)


def debug_trace(base: str, key: str, customer: str, timeout: float = 5) -> dict[str, object]:
    """The ``?debug=true`` trace of one personalised list (admin key)."""
    request = urllib.request.Request(
        f"{base}/v1/recommendations?customer_id={customer}&count=10&debug=true",
        headers={"Authorization": f"Bearer {key}"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=timeout).read())["debug"]


def wait_for_compiled_ranker(base: str, key: str, customers: list[str]) -> set[str]:
    """Every worker compiles (or loads) the ranker in the background after its first request: measure once the
    traces of 20 requests in a row (spread over the workers) name the compiled engine, or after 60 s, whichever
    comes first. Returns the engines seen last."""
    deadline = time.monotonic() + 60
    while True:
        engines = {str(debug_trace(base, key, c)["ranker_engine"]) for c in random.sample(customers, 20)}
        if engines == {"lleaves"} or time.monotonic() > deadline:
            return engines
        time.sleep(0.5)


def redis_forks(env: dict[str, str]) -> int:
    """How many times the Redis server of ``env`` has forked since it started (``INFO stats`` ``total_forks``): an
    AOF rewrite or an RDB save runs in a child that copies the dataset, on the same cores as what a bench measures."""
    import redis

    return int(redis.Redis.from_url(env["REDIS_URL"]).info("stats").get("total_forks", 0))


def compact_redis_aof(env: dict[str, str], timeout: float = 300.0) -> str:
    """Rewrite the append-only file of the Redis server of ``env`` now (``BGREWRITEAOF``) and wait until it is done,
    so the automatic rewrite (when the file has doubled since the last: ``auto-aof-rewrite-percentage``) does not fall
    inside a measured phase; each run's list-cache stores grow it, and on two cores the child that copies the dataset
    weighs on that phase's tail. Returns what it did, for the bench's output."""
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        if not int(client.info("persistence").get("aof_enabled", 0)):
            return "no append-only file"
        client.bgrewriteaof()
    except redis.ResponseError as exc:  # a rewrite already running, or a managed Redis that refuses the command
        if "already in progress" not in str(exc):
            return f"not compacted ({exc})"
    deadline = time.monotonic() + timeout
    while True:
        info = client.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"]):
            return f"append-only file rewritten before measuring ({int(info['aof_current_size']) / 2**20:.0f} MiB)"
        if time.monotonic() > deadline:
            return f"append-only file still being rewritten after {timeout:.0f} s"
        time.sleep(0.2)


def fresh_env(database: str, redis_db: int) -> dict[str, str]:
    """An EMPTY scratch database ``database`` (dropped and created again), Redis databases ``redis_db`` and
    ``redis_db + 1`` flushed, its own artifact directory (emptied) and the rate limits lifted; migrated."""
    import shutil

    import psycopg
    import redis

    from kernel.localservices import ensure_local_services
    from kernel.redis_urls import with_db

    ensure_local_services()
    parts = urlsplit(os.environ["DATABASE_URL"])
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    env = bench_env(database)
    env["REDIS_URL"] = with_db(env["REDIS_URL"], redis_db)
    for db in (redis_db, redis_db + 1):
        redis.Redis.from_url(with_db(env["REDIS_URL"], db)).flushdb()
    artifacts = ROOT / "var" / f"{database}-artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    env["ARTIFACT_ROOT"] = str(artifacts)
    env["DEBUG"] = "0"
    env["API_DEFAULT_RATE_PER_MINUTE"] = "100000000"
    env["API_CUSTOMER_RATE_PER_MINUTE"] = "100000000"
    manage(env, "migrate", "--verbosity", "0")
    return env
