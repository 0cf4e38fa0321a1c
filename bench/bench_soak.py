"""Soak: a mixed load for ``--minutes`` on the whole stack (gunicorn, a Celery worker and beat, Postgres, Redis)
while a model is trained and activated and, later, Redis is stopped and started again.

The load is open-loop (``bench/loadgen.py``: a fixed arrival rate, every latency measured from the scheduled send
time) and mixes: recommendations for a hot set of customers (mostly cached), for random customers excluding a
random pair of items (a new cache key: the whole pipeline), for anonymous sessions; similar items; and batches of
events (views, clicks, purchases, each with a unique ``event_id``, some duplicated inside a batch, some batches
re-sent as a client retry would). Every response's status, latency and ``degraded`` flag is recorded.

Timeline (T = ``--minutes``): before | at 25% of T ``manage.py train --force`` (trains, registers and activates
the version; serving processes hot-swap to it) until a response carries the new version, plus 5 s | steady | at 55% of T
(or 10 s after the training phase) Redis is stopped for ``--outage-seconds``, started again, and the operator
step of docs/events.md is run (``manage.py rebuild_online_state``: the events acknowledged during the outage
reached Postgres only) until ``/readyz`` answers 200 | after, until T.

Targets (the exit status is 1 when one fails): every event acknowledged with 202 is a row in Postgres (zero
lost); no 5xx (a 503 with Retry-After, the documented "retry later", is counted apart and allowed); no transport
error or timeout; the new version is served; worker, beat and gunicorn alive at the end; ready again after the
outage.

By default the soak restarts a private redis-server of its own (var/bench-soak-redis, the project's bundled binary
and flags), so the outage hits only this bench and not the tests or the demo sharing the machine's local server;
``--shared-redis`` restarts the local server instead (as tests/reliability does), for everyone. Either way the
bench uses Redis databases 38 (app) and 39 (Celery) and its own database recsys_bench_soak (the demo data and a
trained model, built on the first run and reused).

Usage: flock /tmp/recsys-cpu.lock python bench/bench_soak.py [--minutes 10] [--rate 40] [--workers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common import ROOT, Server, demo_env, manage, print_environment, print_table
from loadgen import OpenLoop, Request, Result, percentile

DATABASE, REDIS_DB = "recsys_bench_soak", 38
LOG_DIR = ROOT / "var" / "bench-soak-logs"


# --- Redis that the soak restarts ----------------------------------------------------------------------------


class RedisControl:
    """Start, stop and probe the Redis server the soak's ``REDIS_URL`` points at."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self.directory = ROOT / "var" / "bench-soak-redis"
        self.socket = self.directory / "redis.sock"
        self.pidfile = self.directory / "redis.pid"

    @property
    def url(self) -> str:
        from kernel import localservices

        sock = localservices.redis_socket() if self.shared else self.socket
        return f"unix://{sock}?db=0"

    def ready(self) -> bool:
        if self.shared:
            from kernel import localservices

            return localservices.redis_ready()
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self) -> None:
        if self.shared:
            from kernel import localservices

            localservices.ensure_redis()
            return
        if self.ready():
            return
        from kernel import localservices

        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        localservices.launch_redis_server(self.directory, self.socket)  # the project's flags, its own socket
        deadline = time.monotonic() + 60
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.shared:
            from kernel import localservices

            localservices.stop_redis()
        else:
            from kernel import localservices

            localservices.stop_redis_server(self.pidfile)
        if self.ready():
            raise RuntimeError("Redis still answers after stop (restarted by someone else?)")


# --- Celery worker and beat, started the way runstack does ----------------------------------------------------


class Celery:
    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        python = sys.executable
        self.commands = {
            "worker": [
                python, "-m", "celery", "-A", "recsys", "worker", "--loglevel", "INFO", "--concurrency",
                str(concurrency), "-Q", "default,events,training,indexing", "--hostname", "soak@%h",
            ],
            "beat": [
                python, "-m", "celery", "-A", "recsys", "beat", "--loglevel", "INFO",
                "--schedule", str(LOG_DIR / "celerybeat-schedule"), "--pidfile", "",
            ],
        }  # fmt: skip
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Celery:
        for name, argv in self.commands.items():
            log = (LOG_DIR / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.processes.items() if p.poll() is not None]

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- The mixed load -------------------------------------------------------------------------------------------


@dataclass
class Record:
    scheduled: float
    kind: str
    latency_ms: float
    status: int
    degraded: bool
    retry_after: bool
    error: str
    model_version: int | None


class Mix:
    """Builds request ``n`` (deterministic per ``n``) and keeps the books of the events sent and acknowledged."""

    KINDS = (
        (0.35, "rec cached"), (0.50, "rec uncached"), (0.60, "rec anonymous"), (0.78, "similar"), (1.0, "events"),
    )  # fmt: skip

    def __init__(self, customers: list[str], items: list[str], batch: int) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.customers, self.items, self.batch = customers, items, batch
        self.hot = customers[:200]
        self.lock = threading.Lock()
        self.sent_ids: set[str] = set()
        self.acked_ids: set[str] = set()
        self.recent_batches: list[tuple[bytes, list[str]]] = []
        self.counts = {"batches": 0, "retried batches": 0, "events sent": 0, "in-batch duplicates": 0}
        self.records: list[Record] = []

    def make(self, n: int) -> Request:
        rng = random.Random(f"{self.run}-{n}")
        draw = rng.random()
        kind = next(name for limit, name in self.KINDS if draw < limit)
        if kind == "rec cached":
            path = f"/v1/recommendations?customer_id={rng.choice(self.hot)}&count=10"
        elif kind == "rec uncached":
            exclude = ",".join(rng.sample(self.items, 2))  # a new pair of real items: a new cache key
            path = f"/v1/recommendations?customer_id={rng.choice(self.customers)}&count=10&exclude={exclude}"
        elif kind == "rec anonymous":
            session = f"s-{self.run}-{rng.randrange(300)}"
            path = f"/v1/recommendations?session_id={session}&count=10" if rng.random() < 0.8 else "/v1/recommendations"
        elif kind == "similar":
            path = f"/v1/items/{rng.choice(self.items)}/similar?count=10"
        else:
            return self._events(n, rng)
        return Request("GET", path, kind)

    def _events(self, n: int, rng: random.Random) -> Request:
        with self.lock:
            if self.recent_batches and rng.random() < 0.05:  # a client retrying a batch it already sent
                body, ids = rng.choice(self.recent_batches)
                self.counts["retried batches"] += 1
                self.counts["batches"] += 1
                self.counts["events sent"] += len(ids)
                return Request("POST", "/v1/events", "events", body, ids)
        events: list[dict[str, object]] = []
        for i in range(self.batch):
            if events and rng.random() < 0.05:
                events.append(dict(rng.choice(events)))  # the same event twice in one batch
                continue
            event: dict[str, object] = {"event_id": f"soak-{self.run}-{n}-{i}", "item_id": rng.choice(self.items)}
            owner = rng.random()
            if owner < 0.3:
                event["customer_id"] = rng.choice(self.hot)  # invalidates cached lists, as real traffic does
            elif owner < 0.8:
                event["customer_id"] = rng.choice(self.customers)
            else:
                event["session_id"] = f"s-{self.run}-{rng.randrange(300)}"
            kind = rng.random()
            event["type"] = "view" if kind < 0.7 else "click" if kind < 0.9 else "purchase"
            if event["type"] == "purchase":
                event["value"] = rng.randint(1, 3)
            events.append(event)
        ids = [str(e["event_id"]) for e in events]
        body = json.dumps({"events": events}).encode()
        with self.lock:
            self.sent_ids.update(ids)
            self.counts["batches"] += 1
            self.counts["events sent"] += len(ids)
            self.counts["in-batch duplicates"] += len(ids) - len(set(ids))
            self.recent_batches = [*self.recent_batches[-49:], (body, ids)]
        return Request("POST", "/v1/events", "events", body, ids)

    def on_result(self, result: Result) -> None:
        degraded, version = False, None
        if result.status == 200 and result.request.kind != "events":
            with contextlib.suppress(ValueError):
                payload = json.loads(result.body)
                degraded = bool(payload.get("degraded"))
                version = payload.get("model_version")
        elif result.status == 202 and result.request.kind == "events":
            ids = result.request.meta
            assert isinstance(ids, list)
            rejected = {r["index"] for r in json.loads(result.body).get("rejected", [])}
            with self.lock:
                self.acked_ids.update(event_id for i, event_id in enumerate(ids) if i not in rejected)
        self.records.append(
            Record(
                result.scheduled, result.request.kind, result.latency * 1000, result.status, degraded,
                result.retry_after is not None, result.error, version,
            )
        )  # fmt: skip


class Phases:
    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic()))
        print(f"[soak {time.strftime('%H:%M:%S')}] phase: {name}", file=sys.stderr, flush=True)

    def of(self, moment: float) -> str:
        name = self.marks[0][0]
        for candidate, started in self.marks:
            if started <= moment:
                name = candidate
        return name


def _readyz(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _readyz_body(base: str) -> str:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=15) as response:
            return response.read().decode()[:500]
    except urllib.error.HTTPError as error:
        return error.read().decode()[:500]
    except OSError as exc:
        return repr(exc)


def _wait_ready(base: str, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _readyz(base) == 200:
            return time.monotonic() - started
        time.sleep(1)
    return None


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


@contextlib.contextmanager
def _redis_started(control: RedisControl) -> Iterator[None]:
    control.start()
    try:
        yield
    finally:
        if not control.shared:
            control.stop()
        elif not control.ready():
            control.start()  # never leave the shared server down


def _catalog(env: dict[str, str]) -> tuple[list[str], list[str]]:
    _, out = manage(env, "shell", "-c", (
        "import json; from catalog.models import Customer, Item; print(json.dumps(["
        "list(Customer.objects.order_by('pk').values_list('external_id', flat=True)[:4000]),"
        "list(Item.objects.filter(active=True).order_by('pk').values_list('external_id', flat=True)[:3000])]))"
    ))  # fmt: skip
    customers, items = json.loads(out.strip().splitlines()[-1])
    return customers, items


def _stored_ids(env: dict[str, str], run: str) -> set[str]:
    _, out = manage(env, "shell", "-c", (
        "import json; from events.models import Interaction; print(json.dumps(list(Interaction.objects.filter("
        f"event_id__startswith='soak-{run}-').values_list('event_id', flat=True))))"
    ))  # fmt: skip
    return set(json.loads(out.strip().splitlines()[-1]))


def _summary(records: list[Record]) -> list[object]:
    ms = [r.latency_ms for r in records]
    return [
        len(records),
        percentile(ms, 50),
        percentile(ms, 95),
        percentile(ms, 99),
        sum(1 for r in records if 200 <= r.status < 300),
        sum(1 for r in records if 400 <= r.status < 500),
        sum(1 for r in records if r.status >= 500 and not (r.status == 503 and r.retry_after)),
        sum(1 for r in records if r.status == 503 and r.retry_after),
        sum(1 for r in records if r.degraded),
        sum(1 for r in records if r.status == 0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=40, help="requests per second, all kinds together")
    parser.add_argument("--batch", type=int, default=20, help="events per batch")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker")
    parser.add_argument("--connections", type=int, default=16, help="client connections (threads)")
    parser.add_argument("--outage-seconds", type=float, default=10)
    parser.add_argument("--records", type=Path, help="write every response's record here (JSON lines)")
    parser.add_argument("--shared-redis", action="store_true", help="restart the machine's local Redis server")
    args = parser.parse_args()
    print_environment()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    total = args.minutes * 60
    control = RedisControl(shared=args.shared_redis)
    failures: list[str] = []
    facts: list[list[object]] = []
    with _redis_started(control):
        os.environ["REDIS_URL"] = control.url  # demo_env derives databases 38/39 of this server from it
        env, key = demo_env(DATABASE, REDIS_DB)
        env["OPENBLAS_NUM_THREADS"] = "1"  # as runstack: fold-in is many tiny solves
        customers, items = _catalog(env)
        mix = Mix(customers, items, args.batch)
        phases = Phases()
        server = Server(env, workers=args.workers, threads=args.threads, log=LOG_DIR / "gunicorn.log")
        with server, Celery(env, concurrency=1) as celery:
            ready = _wait_ready(server.base, 90)
            if ready is None:
                failures.append("/readyz never answered 200 before the load (worker not up?)")
            host, port = "127.0.0.1", server.port
            warm_reqs = [f"/v1/recommendations?customer_id={c}&count=10" for c in mix.hot]
            warm = OpenLoop(host, port, key, lambda n: Request("GET", warm_reqs[n % len(warm_reqs)], "warm"),
                            lambda r: None, connections=4)  # fmt: skip
            warm.run(rate=20, seconds=5)
            _, out = manage(env, "shell", "-c", "from ranking.selectors import active_version_id; "
                            "print(active_version_id() or 0)")  # fmt: skip
            old_version = int(out.strip().splitlines()[-1])
            load = OpenLoop(host, port, key, mix.make, mix.on_result, connections=args.connections)
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.monotonic()
            phases.mark("before")
            load.start(args.rate)

            _sleep_until(started + 0.25 * total)
            phases.mark("training+activation")
            train_started = time.monotonic()
            new_version = 0
            try:
                # As an operator runs it from a shell: BLAS with its default threads.
                train_env = {k: v for k, v in env.items() if k != "OPENBLAS_NUM_THREADS"}
                _, out = manage(train_env, "train", "--force", "--quiet")
                match = re.search(r"\(id (\d+)\)", out)
                new_version = int(match.group(1)) if match else 0
            except RuntimeError as exc:
                failures.append(f"training failed: {str(exc)[-500:]}")
            train_done = time.monotonic()
            facts.append(["training (manage.py train --force), s", train_done - train_started])
            facts.append(["model version before -> after", f"{old_version} -> {new_version}"])
            if new_version:
                deadline = train_done + 60
                while time.monotonic() < deadline and not any(r.model_version == new_version for r in mix.records):
                    time.sleep(0.5)
                if not any(r.model_version == new_version for r in mix.records):
                    failures.append(f"version {new_version} not served within 60 s of its activation")
            _sleep_until(time.monotonic() + 5)  # the swap reaches every gunicorn worker

            phases.mark("steady")
            _sleep_until(max(started + 0.55 * total, time.monotonic() + 10))
            phases.mark("redis down")
            control.stop()
            _sleep_until(time.monotonic() + args.outage_seconds)
            phases.mark("redis recovery")
            recovery_started = time.monotonic()
            control.start()
            facts.append(["redis restart (start -> answers PING), s", time.monotonic() - recovery_started])
            rebuild_seconds, _ = manage(env, "rebuild_online_state", "--quiet")
            facts.append(["rebuild_online_state, s", rebuild_seconds])
            ready = _wait_ready(server.base, 90)
            if ready is None:
                failures.append("/readyz not 200 within 90 s of the rebuild")
            else:
                facts.append(["rebuild done -> /readyz 200, s", ready])
            facts.append(["redis start -> recovered (rebuilt and ready), s", time.monotonic() - recovery_started])

            phases.mark("after")
            _sleep_until(max(started + total, time.monotonic() + 20))
            load.stop(drain=10)
            wall = time.monotonic() - started
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            dead = celery.dead()
            if server.process is not None and server.process.poll() is not None:
                dead.append(f"gunicorn (exit {server.process.returncode})")
            if dead:
                failures.append(f"died during the soak: {', '.join(dead)}")
            if _wait_ready(server.base, 30) is None:
                failures.append(f"/readyz not 200 for 30 s at the end: {_readyz_body(server.base)}")
        stored = _stored_ids(env, mix.run)

    client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    records = mix.records
    by_phase: dict[str, list[Record]] = {name: [] for name, _ in phases.marks}
    for record in records:
        by_phase[phases.of(record.scheduled)].append(record)
    bounds = [*(t for _, t in phases.marks[1:]), started + wall]
    header = ["phase", "seconds", "requests", "p50 ms", "p95 ms", "p99 ms", "2xx", "4xx", "5xx", "503+Retry-After",
              "degraded", "errors"]  # fmt: skip
    rows = [
        [name, end - begin, *_summary(by_phase[name])] for (name, begin), end in zip(phases.marks, bounds, strict=True)
    ]
    rows.append(["whole run", wall, *_summary(records)])
    print_table(
        f"Soak: {args.minutes:g} min open-loop at {args.rate:g} req/s (latency from the scheduled send time), "
        f"gunicorn {args.workers}x{args.threads}, Celery worker + beat, Redis "
        f"{'shared local server' if args.shared_redis else 'private server'} down {args.outage_seconds:g} s",
        header, rows,
    )  # fmt: skip
    kinds = sorted({r.kind for r in records})
    print_table(
        "By request kind (whole run)",
        ["kind", "requests", "p50 ms", "p95 ms", "p99 ms", "2xx", "4xx", "5xx", "503+Retry-After", "degraded",
         "errors"],
        [[kind, *_summary([r for r in records if r.kind == kind])] for kind in kinds],
    )  # fmt: skip
    lost = mix.acked_ids - stored
    print_table(
        "Events reconciliation (unique event ids of this run)",
        ["measure", "value"],
        [
            ["batches sent", mix.counts["batches"]],
            ["of which client retries (a batch sent again)", mix.counts["retried batches"]],
            ["events sent (with duplicates)", mix.counts["events sent"]],
            ["in-batch duplicates", mix.counts["in-batch duplicates"]],
            ["unique event ids sent", len(mix.sent_ids)],
            ["unique ids acknowledged (202)", len(mix.acked_ids)],
            ["rows in Postgres for the ids sent", len(stored & mix.sent_ids)],
            ["acknowledged but not stored (LOST)", len(lost)],
            ["stored without an acknowledgement (answer lost, e.g. timeout)", len(stored - mix.acked_ids)],
            ["stored but never sent (impossible)", len(stored - mix.sent_ids)],
        ],
    )  # fmt: skip
    new_at = [r.scheduled + r.latency_ms / 1000 for r in records if r.model_version == new_version]
    if new_version and new_at:
        first_new = min(new_at)
        old_after = [r.scheduled + r.latency_ms / 1000 for r in records
                     if r.model_version == old_version and r.scheduled + r.latency_ms / 1000 > first_new]  # fmt: skip
        facts.append(["training start -> first answer with the new version, s", first_new - train_started])
        facts.append(["first new-version answer -> last old-version answer (swap), s",
                      max(old_after) - first_new if old_after else 0.0])  # fmt: skip
    facts += [
        ["requests scheduled / sent / unsent at stop", f"{load.stats.scheduled:,} / {load.stats.sent:,} / "
                                                        f"{load.stats.unsent:,}"],
        ["kept-alive connections closed by the server (resent)", load.stats.reconnects],
        ["load generator CPU, % of one core", f"{100 * client_cpu / wall:.0f}%"],
        ["logs", str(LOG_DIR)],
    ]  # fmt: skip
    print_table("Operations during the soak", ["measure", "value"], facts)
    if args.records:
        with args.records.open("w") as handle:
            for record in records:
                line = asdict(record) | {"phase": phases.of(record.scheduled), "t": record.scheduled - started}
                handle.write(json.dumps(line) + "\n")
        marks = {name: round(moment - started, 3) for name, moment in phases.marks}
        print(f"records: {args.records} (phase starts, s: {marks})")

    if lost:
        failures.append(f"{len(lost)} acknowledged events not in Postgres, e.g. {sorted(lost)[:5]}")
    if stored - mix.sent_ids:
        failures.append("rows stored that were never sent")
    unexpected = [r for r in records if r.status >= 500 and not (r.status == 503 and r.retry_after)]
    if unexpected:
        where = sorted({(phases.of(r.scheduled), r.kind, r.status) for r in unexpected})
        failures.append(f"{len(unexpected)} 5xx answers (phase, kind, status): {where[:10]}")
    errored = [r for r in records if r.status == 0]
    if errored:
        where = sorted({(phases.of(r.scheduled), r.kind, r.error) for r in errored})
        failures.append(f"{len(errored)} requests without an HTTP answer (phase, kind, error): {where[:10]}")
    print("\ntargets: zero lost events, zero 5xx (503+Retry-After allowed), zero transport errors, the new version "
          "served, every process alive, ready after the outage")  # fmt: skip
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
