"""Readiness under probing (issue 14): /readyz latency with 16 concurrent probes, and what they cost the API.

gunicorn as ``make run`` starts it (2 workers x 4 threads) on the demo data, and NO Celery worker (readiness must
not need one). Phases of ``--seconds`` each:

1. cached recommendations alone, open loop at ``--rate`` req/s (the API's latency without probes);
2. the same load while 16 probe threads each send GET /readyz every ``--probe-interval`` seconds (16 probes in
   flight at once, 160 probes/s at the default 0.1 s: ten times what 16 load balancers probing every second send);
3. the same load while the 16 probe threads send back to back (a flood: thousands of probes a second, which no
   load balancer sends; what is left of the API's latency then is CPU shared on this 2-core machine);
4. the 16 back-to-back probes alone.

Acceptance (issue 14): /readyz p99 < 50 ms with 16 concurrent probes, the API's latency kept, 200 without a worker.

    flock /tmp/recsys-cpu.lock .venv/bin/python bench/bench_readyz.py [--seconds 20] [--rate 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from common import Server, demo_env, manage, print_environment, print_table
from loadgen import OpenLoop, Request, Result, percentile

DATABASE, REDIS_DB = "recsys_bench_readyz", 44  # and 45 (its broker): clear of the demo, the tests, other benches
PROBES = 16


class Probes:
    """``n`` threads sending GET /readyz back to back, each on its own keep-alive connection."""

    def __init__(self, host: str, port: int, n: int = PROBES, interval: float = 0.0) -> None:
        self.host, self.port, self.n, self.interval = host, port, n, interval
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.bodies: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        # Paced probers start spread over one interval, as independent load balancers would.
        due = time.perf_counter() + random.random() * self.interval
        while not self._stop.is_set():
            if self.interval:
                time.sleep(max(0.0, due - time.perf_counter()))
                due += self.interval
            started = time.perf_counter()
            try:
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                body = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status, body = 0, b"{}"
            elapsed = time.perf_counter() - started
            with self._lock:
                self.latencies.append(elapsed)
                self.statuses[status] += 1
                self.bodies[json.loads(body or b"{}").get("status", "?")] += 1
        conn.close()

    def __enter__(self) -> Probes:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.n)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def _customers(env: dict[str, str]) -> list[str]:
    code = (
        "from catalog.models import Customer;"
        "print(' '.join(Customer.objects.values_list('external_id', flat=True)[:2000]))"
    )
    _, out = manage(env, "shell", "-c", code)
    return out.strip().splitlines()[-1].split()


def _recommendations(base: str, key: str, customers: list[str], rate: float, seconds: float) -> list[Result]:
    parts = urlsplit(base)
    results: list[Result] = []
    lock = threading.Lock()
    hot = random.Random(7).sample(customers, 50)

    def make(n: int) -> Request:
        return Request("GET", f"/v1/recommendations?customer_id={hot[n % len(hot)]}&count=10", "rec")

    def on_result(result: Result) -> None:
        with lock:
            results.append(result)

    OpenLoop(parts.hostname or "127.0.0.1", parts.port or 80, key, make, on_result, connections=8).run(rate, seconds)
    return results


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=50, help="cached recommendations per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--probe-interval", type=float, default=0.1, help="seconds between one prober's probes")
    args = parser.parse_args()
    env, key = demo_env(DATABASE, REDIS_DB)
    customers = _customers(env)
    rows: list[list[object]] = []
    with Server(env, workers=args.workers, threads=4) as server:
        parts = urlsplit(server.base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        _recommendations(server.base, key, customers, args.rate, 3)  # warm every worker and fill the caches

        alone = _recommendations(server.base, key, customers, args.rate, args.seconds)
        with Probes(host, port, interval=args.probe_interval) as paced:
            loaded = _recommendations(server.base, key, customers, args.rate, args.seconds)
        with Probes(host, port) as probes:
            flooded = _recommendations(server.base, key, customers, args.rate, args.seconds)
        with Probes(host, port) as probes_alone:
            time.sleep(args.seconds)

    for name, results in (
        ("recommendations alone", alone),
        (f"recommendations + 16 probes every {args.probe_interval:g} s", loaded),
        ("recommendations + 16 probes back to back", flooded),
    ):
        latencies = [r.latency for r in results if r.status == 200]
        rows.append([
            name, len(results), sum(r.status != 200 for r in results), _ms(latencies, 50), _ms(latencies, 99),
            _ms(latencies, 100),
        ])  # fmt: skip
    for name, probe in (
        (f"readyz, 16 probes every {args.probe_interval:g} s + API", paced),
        ("readyz, 16 probes back to back + API", probes),
        ("readyz, 16 probes back to back alone", probes_alone),
    ):
        rows.append([
            name, len(probe.latencies), sum(n for status, n in probe.statuses.items() if status != 200),
            _ms(probe.latencies, 50), _ms(probe.latencies, 99), _ms(probe.latencies, 100),
        ])  # fmt: skip
    print_table(
        f"/readyz and the API, gunicorn {args.workers} workers x 4 threads, no Celery worker, {args.seconds:.0f} s "
        f"per phase, recommendations at {args.rate:.0f} req/s (open loop, cached)",
        ["phase", "requests", "non-200", "p50 ms", "p99 ms", "max ms"],
        rows,
    )
    every = (paced, probes, probes_alone)
    statuses = sum((p.statuses for p in every), Counter())
    print(f"\nreadyz statuses: {dict(statuses)}; bodies: {dict(sum((p.bodies for p in every), Counter()))}")
    ok = max(_ms(p.latencies, 99) for p in every) < 50 and not (statuses.keys() - {200})
    print(
        "acceptance (readyz p99 < 50 ms with 16 concurrent probes, all 200 without a worker):",
        "met" if ok else "NOT met",
    )
    print_environment()


if __name__ == "__main__":
    main()
