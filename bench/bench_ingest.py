"""Event ingestion through HTTP: gunicorn (2 sync workers) serving the project on 127.0.0.1.

Measures POST /v1/events with batches of 500 (events/s with a few concurrent client threads) and single-event
requests (p50/p95/p99 latency, sequential and at concurrency 4); prints the median over rounds.
Target: >= 5,000 events/s with batches of 500 on the 2-core machine.

Runs on the configured (or local) Postgres and Redis servers, in a scratch database (recsys_bench_ingest) and a
Redis database of its own, with 5,000 items it creates: the demo's data is neither needed nor touched. Bounded in
time (about a minute); the server is stopped at the end. Usage: python bench/bench_ingest.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from common import ROOT, bench_env, manage, median, print_environment, print_table

DATABASE = "recsys_bench_ingest"
REDIS_DB = 36  # data in database 36 (37 its broker): clear of the demo (0/1), the tests (2-29), other benches
ITEMS = 5_000
CUSTOMERS = 20_000
BATCH = 500
TYPES = ["view"] * 12 + ["click"] * 5 + ["add_to_cart"] * 2 + ["purchase"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="total duration of the throughput rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads for batches")
    parser.add_argument("--singles", type=int, default=400, help="single-event requests per round and mode")
    args = parser.parse_args()
    print_environment()

    env = _environment()
    manage(env, "migrate", "--verbosity", "0")
    key = _prepare(env)
    port = _free_port()
    server = _start_gunicorn(env, port)
    try:
        _wait_ready(port)
        client = Client(port, key)
        for _ in range(5):  # warm both workers: imports, connections, auth cache
            client.post_batch(_single(0))
        rows = []
        throughput = [_throughput(client, args.clients, args.seconds / args.rounds) for _ in range(args.rounds)]
        rows.append(
            (f"batches of {BATCH}, {args.clients} clients", "events/s", median([t[0] for t in throughput]),
             "requests/s", median([t[1] for t in throughput]))
        )  # fmt: skip
        for concurrency in (1, 4):
            rounds = [_latencies(client, concurrency, args.singles) for _ in range(args.rounds)]
            for name, index in (("p50", 0), ("p95", 1), ("p99", 2)):
                rows.append(
                    (f"single event, concurrency {concurrency}", f"{name} ms", median([r[index] for r in rounds]),
                     "requests/s", median([r[3] for r in rounds]))
                )  # fmt: skip
        print_table(
            f"POST /v1/events through gunicorn --workers 2 ({os.cpu_count()} CPUs), median of {args.rounds} rounds",
            ["measure", "unit", "value", "unit", "value"],
            rows,
        )
        if client.errors:
            print(f"\n{client.errors} requests failed (non-202); see above")
    finally:
        _stop(server)


# --- Set-up -------------------------------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = bench_env(DATABASE)
    from kernel.redis_urls import with_db

    env["REDIS_URL"] = with_db(env["REDIS_URL"], REDIS_DB)
    env["DJANGO_SETTINGS_MODULE"] = "recsys.settings.dev"
    # DEBUG would keep every SQL statement in memory and slow each request: measure the production code path.
    env["DEBUG"] = "0"
    env.setdefault("LOG_LEVEL", "WARNING")
    os.environ.update(env)
    return env


def _prepare(env: dict[str, str]) -> str:
    """Items (bulk insert), an API key; empty interactions and online state, so every run measures the same."""
    import django

    django.setup()
    from django.db import connection

    from catalog.models import Category, Item
    from events import keys
    from kernel import redis_client
    from kernel.api_keys import api_key_create
    from kernel.models import ApiKey

    Category.objects.bulk_create(
        [Category(external_id=f"bench-cat-{i}", name=f"Bench {i}") for i in range(50)], ignore_conflicts=True
    )
    category_pks = list(Category.objects.filter(external_id__startswith="bench-cat-").values_list("pk", flat=True))
    rng = random.Random(7)
    Item.objects.bulk_create(
        [
            Item(external_id=f"bench-{i}", title=f"Bench item {i}", category_id=rng.choice(category_pks))
            for i in range(ITEMS)
        ],
        batch_size=1000,
        ignore_conflicts=True,
    )
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE events_interaction")
        cursor.execute("ANALYZE catalog_item")
    client = redis_client.get()
    for prefix in (*keys.REBUILDABLE_PREFIXES, keys.CACHE_VERSION_PREFIX):
        for chunk in _chunks(list(client.scan_iter(match=prefix + "*", count=1000)), 1000):
            client.unlink(*chunk)
    ApiKey.objects.filter(name="bench_ingest").delete()  # the previous run's
    _, plaintext = api_key_create(name="bench_ingest", scopes=["events"], rate_per_minute=100_000_000)
    connection.close()
    return plaintext


def _chunks(values: list[bytes], size: int) -> list[list[bytes]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_gunicorn(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "recsys.wsgi:application", "--workers", "2",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "256",
        ],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /healthz within 60 s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # gunicorn's graceful stop of the master and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- Load ---------------------------------------------------------------------------------------------------


class Client:
    """Posts prepared bodies; gunicorn's sync workers close every connection, so one connection per request."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.errors = 0
        self._lock = threading.Lock()

    def post_batch(self, body: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/v1/events", body=body, headers=self.headers)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        if response.status != 202:
            with self._lock:
                self.errors += 1
                if self.errors <= 3:
                    print(f"HTTP {response.status}: {payload[:300]!r}", file=sys.stderr)
            return 0
        return int(json.loads(payload)["accepted"])


_RUN = uuid.uuid4().hex[:8]
_counter = iter(range(10**12))
_counter_lock = threading.Lock()


def _event(rng: random.Random, now: datetime) -> str:
    with _counter_lock:
        n = next(_counter)
    occurred = (now - timedelta(seconds=rng.random() * 3600)).isoformat()
    owner = f'"customer_id":"bc-{rng.randrange(CUSTOMERS)}"' if rng.random() < 0.8 else f'"session_id":"bs-{n % 997}"'
    return (
        f'{{"event_id":"b-{_RUN}-{n}",{owner},"item_id":"bench-{rng.randrange(ITEMS)}",'
        f'"type":"{rng.choice(TYPES)}","occurred_at":"{occurred}"}}'
    )


def _batch(rng: random.Random) -> bytes:
    now = datetime.now(UTC)
    return ('{"events":[' + ",".join(_event(rng, now) for _ in range(BATCH)) + "]}").encode()


def _single(seed: int) -> bytes:
    return _event(random.Random(seed), datetime.now(UTC)).encode()


def _throughput(client: Client, threads: int, seconds: float) -> tuple[float, float]:
    """Events/s and requests/s over ``seconds`` with ``threads`` clients posting batches back to back."""
    accepted = [0] * threads
    requests = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(i: int) -> None:
        rng = random.Random(1000 + i)
        body = _batch(rng)
        while time.perf_counter() < deadline:
            accepted[i] += client.post_batch(body)
            requests[i] += 1
            body = _batch(rng)  # the next body is built while nothing waits on this thread's previous one

    started = time.perf_counter()
    _run_threads(threads, work)
    elapsed = time.perf_counter() - started
    return sum(accepted) / elapsed, sum(requests) / elapsed


def _latencies(client: Client, concurrency: int, count: int) -> tuple[float, float, float, float]:
    """p50, p95, p99 in ms and requests/s for ``count`` single-event requests at ``concurrency``."""
    samples: list[float] = []
    lock = threading.Lock()
    per_thread = count // concurrency

    def work(i: int) -> None:
        rng = random.Random(5000 + i)
        own = []
        for _ in range(per_thread):
            body = _single(rng.randrange(1 << 30))
            started = time.perf_counter()
            client.post_batch(body)
            own.append((time.perf_counter() - started) * 1000)
        with lock:
            samples.extend(own)

    started = time.perf_counter()
    _run_threads(concurrency, work)
    elapsed = time.perf_counter() - started
    samples.sort()

    def pct(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    return pct(0.50), pct(0.95), pct(0.99), len(samples) / elapsed


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
