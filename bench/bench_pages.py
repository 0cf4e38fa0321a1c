"""A whole page in one call against its widgets called one by one (issue 16): for sampled demo customers, each
looking at a random item, the same three widgets (home recommendations 10, "because you viewed" 2 rows of 6,
similar items 8) asked as three separate requests and as one ``POST /v1/pages``, over HTTP to gunicorn.

The separate recommendations call carries a fresh ``exclude`` pair so it misses the list cache, as the page (never
cached) does; the page also does what the three calls do not: no item twice across its widgets. Requests go one
at a time (nothing queues), alternating the two ways per customer so both see the same conditions. Then the same at
concurrency 4 (four client threads, each doing its own sequence).

Uses its own database (recsys_bench_pages: the demo data, its online state and a trained model, built on the
first run and reused) and Redis databases 40/41. Target: the page's p95 below the sum of the three calls' p95s.

Usage: flock /tmp/recsys-cpu.lock python bench/bench_pages.py [--pages 300] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import urllib.request
from typing import Any

from common import Server, demo_env, manage, print_environment, print_table


def _call(base: str, key: str, path: str, body: object | None = None) -> tuple[float, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = json.loads(response.read())
    return (time.perf_counter() - started) * 1000, payload


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _one(base: str, key: str, customer: str, item: str, exclude: tuple[str, str]) -> dict[str, float]:
    """The three separate calls, then the page, for one customer on one item page; ms each."""
    rec, _ = _call(
        base, key, f"/v1/recommendations?customer_id={customer}&count=10&context_item_id={item}"
        f"&exclude={exclude[0]},{exclude[1]}",
    )  # fmt: skip
    byv, _ = _call(base, key, f"/v1/customers/{customer}/because-you-viewed?count=6")
    sim, _ = _call(base, key, f"/v1/items/{item}/similar?count=8")
    page, body = _call(
        base, key, "/v1/pages",
        {
            "customer_id": customer, "context_item_id": item,
            "widgets": [
                {"kind": "recommendations", "count": 10}, {"kind": "because_you_viewed", "count": 6, "groups": 2},
                {"kind": "similar", "count": 8},
            ],
        },
    )  # fmt: skip
    ids = [i["item_id"] for w in body["widgets"] for i in w["items"]]
    ids += [i["item_id"] for w in body["widgets"] for g in w["groups"] for i in g["items"]]
    assert len(ids) == len(set(ids)), "a page repeated an item"
    return {"recommendations": rec, "because_you_viewed": byv, "similar": sim, "page": page, "sum": rec + byv + sim}


def _run(base: str, key: str, jobs: list[tuple[str, str, tuple[str, str]]], threads: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    lock = threading.Lock()

    def worker(part: list[tuple[str, str, tuple[str, str]]]) -> None:
        for customer, item, exclude in part:
            one = _one(base, key, customer, item, exclude)
            with lock:
                for name, ms in one.items():
                    results.setdefault(name, []).append(ms)

    pool = [threading.Thread(target=worker, args=(jobs[n::threads],)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    print_environment()
    env, key = demo_env("recsys_bench_pages", 40)
    code = (
        "from catalog.models import Customer, Item; from events.models import Interaction; import json;"
        "ids = list(Interaction.objects.filter(customer__isnull=False).values_list('customer__external_id', flat=True)"
        ".distinct()[:3000]); print(json.dumps([ids, list(Item.objects.values_list('external_id', flat=True)[:5000])]))"
    )
    _, out = manage(env, "shell", "-c", code)
    customers, items = json.loads(out.strip().splitlines()[-1])
    rng = random.Random(16)
    with Server(env, workers=args.workers) as server:
        warm = [(rng.choice(customers), rng.choice(items), tuple(rng.sample(items, 2))) for _ in range(60)]
        _run(server.base, key, warm, 2)  # every worker: model mapped, caches of slow lookups filled
        time.sleep(2)  # the ranker compiles in the background after a worker's first request
        _run(server.base, key, warm, 2)
        tables = []
        for threads in (1, 4):
            jobs = [(rng.choice(customers), rng.choice(items), tuple(rng.sample(items, 2))) for _ in range(args.pages)]
            results = _run(server.base, key, jobs, threads)
            p95_sum = sum(_p(results[name], 0.95) for name in ("recommendations", "because_you_viewed", "similar"))
            rows = [
                [name, statistics.median(results[name]), _p(results[name], 0.95), _p(results[name], 0.99)]
                for name in ("recommendations", "because_you_viewed", "similar", "sum", "page")
            ]
            rows.append(["sum of the three calls' p95s", "-", p95_sum, "-"])
            rows.append(["page p95 / that sum", "-", f"{_p(results['page'], 0.95) / p95_sum:.2f}", "-"])
            tables.append((threads, rows))
    for threads, rows in tables:
        print_table(
            f"A page of three widgets vs three calls, {args.pages} pages, {threads} client thread(s), gunicorn "
            f"{args.workers} workers, demo catalog; ms over HTTP (client's clock)",
            ["request", "p50 ms", "p95 ms", "p99 ms"],
            rows,
        )


if __name__ == "__main__":
    main()
