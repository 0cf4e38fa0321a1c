"""Sustained throughput: open-loop uncached recommendation load at increasing fixed arrival rates.

wrk (bench_serving.py) is closed-loop: while the server is slow it sends less, so queueing never shows in its
percentiles. Here requests are scheduled at a fixed rate (``bench/loadgen.py``, a small wrk2) and every latency is
measured from the scheduled send time, so once the server cannot keep up the queue, and the latency, grows. Each
request excludes a random pair of real items (as in bench_serving.py), so every one runs the whole pipeline: this is the
uncached capacity. A rate is *sustained* when the answers kept pace (at least 95% of the scheduled requests sent
during the step, none left queued), none failed, and p95 stayed under ``--target-ms`` (25 ms, the serving target).

Uses the serving bench's database (recsys_bench_serving: demo data, online state, a trained model; built on the
first run) and Redis databases 32/33; gunicorn on loopback.

Usage: flock /tmp/recsys-cpu.lock python bench/bench_throughput.py [--rates 10,20,40,60,80] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time

from common import Server, demo_env, manage, print_environment, print_table
from loadgen import OpenLoop, Request, Result, percentile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,20,30,40,50,60,80,100", help="requests per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=20, help="per rate")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker")
    parser.add_argument("--connections", type=int, default=32, help="client connections (threads)")
    parser.add_argument("--target-ms", type=float, default=25, help="p95 target")
    args = parser.parse_args()
    print_environment()
    rates = [float(r) for r in args.rates.split(",")]
    env, key = demo_env("recsys_bench_serving", 32)
    _, out = manage(env, "shell", "-c", (
        "import json; from catalog.models import Customer, Item; print(json.dumps(["
        "list(Customer.objects.order_by('pk').values_list('external_id', flat=True)[:5000]),"
        "list(Item.objects.order_by('pk').values_list('external_id', flat=True)[:5000])]))"
    ))  # fmt: skip
    customers, items = json.loads(out.strip().splitlines()[-1])
    tag = f"{random.randrange(16**6):06x}"

    def uncached(n: int) -> Request:
        rng = random.Random(f"{tag}-{n}")
        # A random pair of real items to exclude (as a storefront excludes the cart), with a random customer: a
        # cache key never seen before, so the whole pipeline runs.
        exclude = ",".join(rng.sample(items, 2))
        return Request("GET", f"/v1/recommendations?customer_id={rng.choice(customers)}&count=10&exclude={exclude}",
                       "rec uncached")  # fmt: skip

    rows: list[list[object]] = []
    sustained: float | None = None
    failures_in_a_row = 0
    errors_total = 0
    with Server(env, workers=args.workers, threads=args.threads) as server:
        OpenLoop("127.0.0.1", server.port, key, uncached, lambda r: None, connections=4).run(rate=10, seconds=5)
        for rate in rates:
            results: list[Result] = []
            lock = threading.Lock()

            def record(result: Result, results: list[Result] = results, lock: threading.Lock = lock) -> None:
                with lock:
                    results.append(result)

            load = OpenLoop("127.0.0.1", server.port, key, uncached, record, connections=args.connections)
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            started = time.monotonic()
            load.start(rate)
            time.sleep(args.seconds)
            # Only what was scheduled inside the window counts; the backlog gets 2 s, then is dropped (unsent).
            load.stop(drain=2)
            wall = time.monotonic() - started
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu.ru_utime - cpu.ru_stime
            ms = [r.latency * 1000 for r in results]
            ok = sum(1 for r in results if r.status == 200)
            failed = len(results) - ok
            errors_total += failed
            p95 = percentile(ms, 95)
            kept_pace = load.stats.unsent == 0 and ok >= 0.95 * rate * args.seconds
            good = kept_pace and failed == 0 and p95 < args.target_ms
            if good:
                sustained = rate
            rows.append([
                f"{rate:g}", ok / args.seconds, percentile(ms, 50), p95, percentile(ms, 99), max(ms, default=0.0),
                percentile([r.service * 1000 for r in results], 95), load.stats.unsent, failed,
                f"{100 * client_cpu / wall:.0f}%", "yes" if good else "no",
            ])  # fmt: skip
            print(f"[throughput] {rate:g} req/s: p95 {p95:.1f} ms, sent {len(results)}, unsent {load.stats.unsent}",
                  file=sys.stderr, flush=True)  # fmt: skip
            failures_in_a_row = 0 if good else failures_in_a_row + 1
            if failures_in_a_row >= 2:
                break  # far past saturation: more rates only queue more
            time.sleep(2)
    print_table(
        "Open-loop uncached recommendations (a random pair of items excluded per request), "
        f"gunicorn {args.workers}x{args.threads}, {args.seconds:g} s per rate, latency from the scheduled send time",
        ["rate req/s", "answered/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "service p95 ms", "unsent", "failed",
         "client CPU", f"p95 < {args.target_ms:g} ms"],
        rows,
    )  # fmt: skip
    if sustained is None:
        print(f"\nhighest sustained rate with p95 < {args.target_ms:g} ms: none of the rates tried")
    else:
        print(f"\nhighest sustained rate with p95 < {args.target_ms:g} ms: {sustained:g} req/s")
    return 1 if errors_total else 0


if __name__ == "__main__":
    sys.exit(main())
