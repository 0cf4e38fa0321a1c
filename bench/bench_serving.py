"""Serving latency under gunicorn, measured with wrk on loopback: the framework floor (a DRF view returning a
constant list), uncached personalised recommendations (full pipeline, count 10 and 50) and cached ones, per-stage
times, one request at a time against the sum of its stages, a whole-request profile by layer
(bench/request_profile.py), the web workers' CPU per request by the binary that spent it (bench/perf_split.py: Linux
perf over the floor and uncached phases run again), the serving processes' memory, and the environment it ran in.

Uses its own database (recsys_bench_serving: the demo data, its online state and a trained model, built on the
first run and reused) and Redis databases 32/33. Redis's append-only file is rewritten before the first phase, so the
automatic rewrite does not fall inside one (each phase still reports any fork of Redis during it).

Targets (issue 4): uncached p50 <= 10 ms, p95 <= 25 ms, p99 <= 50 ms at concurrency 4; cached p95 <= 5 ms. Issue 18,
relative to the floor of the same run: uncached p95 <= 5x, cached p95 <= 2x; one request at a time <= 1.5x the sum
of its traced stages.

Usage: python bench/bench_serving.py [--seconds 20] [--workers N (default: one per core)] [--no-perf]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import perf_split
import psutil
from common import (
    Server,
    compact_redis_aof,
    debug_trace,
    demo_env,
    manage,
    print_environment,
    print_table,
    redis_forks,
    wait_for_compiled_ranker,
)

LUA = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
-- Each wrk thread walks its own stretch of the list: unseeded, math.random gave every thread the same start, so
-- they asked for the same paths in lockstep and one thread's miss was the other's cache hit.
local started = 0
function setup(thread)
  thread:set("stretch", started)
  started = started + 1
end
local i = 0
function init(args)
  i = math.floor(stretch * #paths / 2) %% #paths
end
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%f %%f %%f %%d\\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
"""


def _ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        path = shutil.which("wrk")
    assert path, "wrk is required (apt-get install wrk)"
    return path


def _customers_and_items(env: dict[str, str]) -> tuple[list[str], list[str]]:
    code = (
        "from catalog.models import Customer, Item;"
        "import json; print(json.dumps([list(Customer.objects.values_list('external_id', flat=True)[:5000]),"
        " list(Item.objects.values_list('external_id', flat=True)[:5000])]))"
    )
    _, out = manage(env, "shell", "-c", code)
    customers, items = json.loads(out.strip().splitlines()[-1])
    return customers, items


CPU_GROUPS = ("gunicorn (web workers)", "Redis", "Postgres", "wrk (the load)", "other")


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by every process on the host, by group (the web workers, Redis, Postgres, the rest),
    and by this process's finished children (wrk, once it has exited)."""
    totals = dict.fromkeys(CPU_GROUPS, 0.0)
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        name, command = process.info["name"] or "", " ".join(process.info["cmdline"] or [])
        if "gunicorn" in command:
            group = CPU_GROUPS[0]
        elif "redis-server" in command or name.startswith("redis"):
            group = CPU_GROUPS[1]
        elif "postgres" in name or "postgres" in command:
            group = CPU_GROUPS[2]
        else:
            group = CPU_GROUPS[4]
        totals[group] += times.user + times.system
    me = psutil.Process().cpu_times()
    totals[CPU_GROUPS[3]] = me.children_user + me.children_system
    return totals


def _wrk(
    wrk: str, base: str, key: str, paths: list[str], seconds: int, workdir: Path, env: dict[str, str]
) -> dict[str, float]:
    forks = redis_forks(env)
    cpu_before = _cpu_seconds()
    path_file = workdir / f"paths-{len(paths)}-{random.random():.6f}.txt"
    path_file.write_text("\n".join(paths) + "\n")
    script = workdir / "script.lua"
    script.write_text(LUA % {"paths": path_file, "key": key})
    result = subprocess.run(
        [wrk, "-t2", "-c4", f"-d{seconds}s", "-s", str(script), base], capture_output=True, text=True, check=True
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    requests, duration_us, p50, p95, p99, errors = line.split()[1:]
    cpu_after = _cpu_seconds()
    per_request = {
        f"cpu {group}": (cpu_after[group] - cpu_before[group]) * 1000 / max(int(requests), 1) for group in CPU_GROUPS
    }
    return {
        "rps": int(requests) / (int(duration_us) / 1e6),
        "p50": float(p50), "p95": float(p95), "p99": float(p99), "errors": int(errors),
        "redis_forks": redis_forks(env) - forks, **per_request,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    # One sync worker per core: serving is CPU-bound, and more workers than cores only add context switches (on
    # this 2-core machine, 4 workers gave the floor a p95 of 6.3 ms against 2.2 ms with 2).
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (gthread when > 1)")
    parser.add_argument("--no-perf", action="store_true", help="skip the CPU split by binary (two more phases)")
    args = parser.parse_args()
    print_environment()
    wrk = _ensure_wrk()
    env, key = demo_env("recsys_bench_serving", 32)
    env["BENCH_ENDPOINTS"] = "1"
    customers, items = _customers_and_items(env)
    print(f"Redis: {compact_redis_aof(env)}.")
    with Server(env, workers=args.workers, threads=args.threads) as server:
        base = server.base
        rng = random.Random(7)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            # Warm every worker: model mapped, caches of slowly-changing lookups filled.
            warm = [f"/v1/recommendations?customer_id={c}&count=10" for c in rng.sample(customers, 200)]
            _wrk(wrk, base, key, warm, 3, workdir, env)
            engines = wait_for_compiled_ranker(base, key, customers)
            floor = _wrk(wrk, base, key, ["/bench/floor"], args.seconds, workdir, env)
            uncached_paths = _uncached_paths(rng, customers, items, 200_000)
            uncached = _wrk(wrk, base, key, uncached_paths, args.seconds, workdir, env)
            uncached_50 = _wrk(
                wrk, base, key, [p.replace("count=10", "count=50") for p in uncached_paths], args.seconds, workdir, env
            )
            hot = [f"/v1/recommendations?customer_id={c}&count=10" for c in rng.sample(customers, 50)]
            _wrk(wrk, base, key, hot, 2, workdir, env)  # fill the caches
            cached = _wrk(wrk, base, key, hot, args.seconds, workdir, env)
            similar = _wrk(
                wrk, base, key, [f"/v1/items/{i}/similar?count=10" for i in rng.sample(items, 2000)], args.seconds,
                workdir, env,
            )  # fmt: skip
            # The floor and uncached phases again under perf (after the measured ones, which it would slow a
            # little), on new paths: which binaries the workers' CPU went to.
            by_binary, perf_why = ({}, "--no-perf") if args.no_perf else _by_binary(
                server, wrk, key, _uncached_paths(rng, customers, items, 50_000, avoid=set(uncached_paths)),
                args.seconds, workdir, env,
            )  # fmt: skip
        stages: dict[str, list[float]] = {}
        for customer in rng.sample(customers, 200):
            trace = debug_trace(base, key, customer)
            for stage, ms in trace["stages_ms"].items():  # type: ignore[attr-defined]
                stages.setdefault(stage, []).append(ms)
        # One request at a time (nothing queues): what a request costs end to end, next to its traced stages.
        sequential = []
        for path in uncached_paths[-300:]:
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
            started = time.perf_counter()
            urllib.request.urlopen(request, timeout=10).read()
            sequential.append((time.perf_counter() - started) * 1000)
        assert server.process is not None
        rss = [p.memory_info().rss / 2**20 for p in psutil.Process(server.process.pid).children()]
    # The same kind of request timed by the worker itself (gunicorn's access log, one worker, nothing else running):
    # from the parsed request to the response written (Django, DRF, the list cache's lookup and lock round trips),
    # without the client's side of HTTP (a new connection per request: sync workers close it, and Python's urllib).
    # The list cache's store is not on this clock either: gunicorn logs the time before it closes the response
    # iterable, which sends Django's request_finished, where the store runs (ranking/cache.py).
    fresh = _uncached_paths(rng, customers, items, 2_000, avoid=set(uncached_paths[-300:]))[:300]
    worker_ms, client_ms = _worker_clock(env, key, customers, fresh)

    def row(name: str, r: dict[str, float], p95_target: str) -> list[object]:
        return [
            name,
            r["p50"],
            r["p95"],
            r["p99"],
            r["rps"],
            f"{r['p95'] / floor['p95']:.1f}x",
            p95_target,
            r["errors"],
            int(r["redis_forks"]),
        ]

    print_table(
        f"Serving latency, gunicorn {args.workers} workers x {args.threads} threads, wrk 2 threads x 4 connections, "
        f"{args.seconds} s each, "
        "demo catalog (3,825 items)",
        ["endpoint", "p50 ms", "p95 ms", "p99 ms", "req/s", "p95 vs floor", "p95 target", "errors", "Redis forks"],
        [
            row("floor: DRF constant list", floor, "-"),
            row("recommendations, uncached (full pipeline)", uncached, "25 ms"),
            row("recommendations, uncached, count=50", uncached_50, "-"),
            row("recommendations, cached", cached, "5 ms"),
            row("similar items", similar, "-"),
        ],
    )
    if any(r["redis_forks"] for r in (floor, uncached, uncached_50, cached, similar)):
        print(
            "Redis forks: Redis forked during that phase (an automatic AOF rewrite or RDB save: a child process "
            "copying the dataset on the same cores), which weighs on its tail; the list cache's stores are most of "
            "what grows the AOF (docs/operations.md, Redis persistence)."
        )
    # Under wrk the cores are the limit: a phase's latency follows the CPU a request takes, on every process.
    print_table(
        "CPU per request during each phase, every process on the host (ms of CPU time / requests answered)",
        ["endpoint", "all", *CPU_GROUPS],
        [
            [name, sum(r[f"cpu {g}"] for g in CPU_GROUPS), *(r[f"cpu {g}"] for g in CPU_GROUPS)]
            for name, r in (("floor", floor), ("uncached", uncached), ("uncached, count=50", uncached_50),
                            ("cached", cached))
        ],
    )  # fmt: skip
    print_table(
        "Pipeline stages (median of 200 traced requests, ms; the seed SLO: retrieval < 10, ranking < 50, "
        f"re-ranking < 20); ranker engine: {', '.join(sorted(engines))}",
        ["stage", "median ms", "p95 ms"],
        [[stage, statistics.median(v), sorted(v)[int(0.95 * len(v)) - 1]] for stage, v in stages.items()],
    )
    stage_sum = sum(statistics.median(v) for v in stages.values())
    profile = _request_profile(env, key)
    in_process = statistics.median(profile["wall_ms"])
    http = statistics.median(sequential)
    print_table(
        "One uncached request at a time (300 sequential requests, medians): the whole request vs its traced stages "
        "(target: at most 1.5x)",
        ["measure", "ms", "vs stages"],
        [
            ["sum of the traced stages' medians", stage_sum, "1.0x"],
            [
                "in-process (Django test client, no HTTP; with the store gunicorn does after answering)",
                in_process,
                f"{in_process / stage_sum:.2f}x",
            ],
            ["over HTTP to gunicorn (client's clock)", http, f"{http / stage_sum:.2f}x"],
            [
                "the same kind of request, the worker's clock (gunicorn access log, 1 worker)",
                statistics.median(worker_ms),
                f"{statistics.median(worker_ms) / stage_sum:.2f}x",
            ],
            [
                "  ... and those requests on the client's clock",
                statistics.median(client_ms),
                f"{statistics.median(client_ms) / stage_sum:.2f}x",
            ],
        ],
    )
    layers = [*profile["layers"], ["HTTP + gunicorn (over HTTP minus in-process)", http - in_process, None]]
    print_table(
        f"Whole-request profile of an uncached request (cProfile, {profile['requests']} requests in process; shares "
        "of the profiled time, which cProfile inflates for call-heavy code: read them as where to look)",
        ["layer", "ms/request (profiled)", "share"],
        [[name, ms, f"{share:.0%}" if share is not None else "-"] for name, ms, share in layers],
    )
    if by_binary:
        floor_ms, uncached_ms = by_binary["floor"], by_binary["uncached"]
        added = {name: uncached_ms[name] - floor_ms[name] for name in perf_split.LABELS}
        uncached_all, floor_all = sum(uncached_ms.values()), sum(floor_ms.values())
        print_table(
            "The web workers' CPU per request by the binary that spent it (perf, the floor and uncached phases run "
            "again; ms of CPU per request = perf's share x the workers' CPU per request in that phase)",
            ["binary", "floor ms", "uncached ms", "uncached - floor", "share of uncached"],
            [
                [name, floor_ms[name], uncached_ms[name], added[name], f"{uncached_ms[name] / uncached_all:.0%}"]
                for name in perf_split.LABELS
            ] + [["all", floor_all, uncached_all, uncached_all - floor_all, "100%"]],
        )  # fmt: skip
        print(
            f"Of the {uncached_all - floor_all:.2f} ms an uncached request adds to the floor's: "
            f"{sum(added[n] for n in perf_split.GLUE):.2f} ms in the interpreter and numpy's C code (Python glue, "
            f"numpy's per-call cost on small arrays), {sum(added[n] for n in perf_split.NUMERIC):.2f} ms in numeric "
            "code (compiled loops and ranker, BLAS, faiss)."
        )
    else:
        print(f"(No CPU split by binary: {perf_why}.)")
    print_table("Memory", ["process", "RSS MiB"], [[f"gunicorn worker {n}", r] for n, r in enumerate(rss)])


def _uncached_paths(
    rng: random.Random, customers: list[str], items: list[str], n: int, *, avoid: set[str] | None = None
) -> list[str]:
    """Up to ``n`` distinct paths of personalised lists, none in ``avoid``: a different exclusion pair of real items
    per request (as a storefront excludes the cart) makes every cache key new, so each runs the whole pipeline."""
    paths = dict.fromkeys(
        f"/v1/recommendations?customer_id={rng.choice(customers)}&count=10&exclude={a},{b}"
        for a, b in (rng.sample(items, 2) for _ in range(n))
    )
    return [path for path in paths if not avoid or path not in avoid]


def _by_binary(
    server: Server, wrk: str, key: str, uncached: list[str], seconds: int, workdir: Path, env: dict[str, str]
) -> tuple[dict[str, dict[str, float]], str | None]:
    """The floor and ``uncached`` phases under perf (bench/perf_split.py): per phase, the web workers' CPU per request
    (ms) by binary; or, when perf cannot record here, nothing and why."""
    why = perf_split.unavailable()
    if why is not None:
        return {}, why
    assert server.process is not None
    pids = [p.pid for p in psutil.Process(server.process.pid).children()]
    out: dict[str, dict[str, float]] = {}
    for name, paths in (("floor", ["/bench/floor"]), ("uncached", uncached)):
        with perf_split.Recording(pids, max(seconds - 1, 1)) as recording:
            phase = _wrk(wrk, server.base, key, paths, seconds, workdir, env)
        if recording.error is not None:
            return {}, recording.error
        cpu = phase[f"cpu {CPU_GROUPS[0]}"]
        out[name] = {group: share * cpu for group, share in recording.shares.items()}
    return out, None


def _worker_clock(
    env: dict[str, str], key: str, customers: list[str], paths: list[str]
) -> tuple[list[float], list[float]]:
    """``paths`` sent one at a time to a gunicorn with one worker that logs each request's time: (the worker's
    times, the client's times) in ms, the same requests."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        with Server(env, workers=1, access_log=log) as server:
            for customer in random.Random(11).sample(customers, 100):  # warm: model mapped, lookups cached
                debug_trace(server.base, key, customer)
            wait_for_compiled_ranker(server.base, key, customers)
            before = len(log.read_text().splitlines())
            client = []
            for path in paths:
                request = urllib.request.Request(server.base + path, headers={"Authorization": f"Bearer {key}"})
                started = time.perf_counter()
                urllib.request.urlopen(request, timeout=10).read()
                client.append((time.perf_counter() - started) * 1000)
        lines = log.read_text().splitlines()[before:]
    worker = [int(line) / 1000 for line in lines if line.strip().isdigit()]
    assert len(worker) == len(paths), f"{len(worker)} access-log lines for {len(paths)} requests"
    return worker, client


def _request_profile(env: dict[str, str], key: str) -> dict[str, Any]:
    """bench/request_profile.py in a subprocess with the bench's environment: wall times and per-layer shares."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("request_profile.py"))],
        env={**env, "PROFILE_KEY": key}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
