"""A multi-host rehearsal on one machine (issue 17): two web "hosts", one worker "host", object storage, Redis Cluster.

- Redis Cluster: 3 masters from the bundled redis-server (kernel.rediscluster, ports 7300-7302), ``REDIS_CLUSTER=1``;
  Celery's broker on the single local Redis (kombu has no cluster transport).
- Object storage: moto's S3 server (a PyPI package) on a loopback port; ``ARTIFACT_S3_BUCKET`` set for every host.
- Worker host: ``manage.py train --force`` with its own ``ARTIFACT_ROOT``; it uploads the version and activates it.
- Web hosts: two gunicorn servers (2 workers each), each with its own ``ARTIFACT_CACHE_DIR`` (no shared disk): they
  download every version from the bucket, verify it and hot-swap.

Under load (reader threads asking both hosts for recommendations, writer threads posting event batches to both),
the worker trains and activates a new version. Printed: requests, 5xx (must be 0), events acknowledged vs rows in
Postgres (0 lost), and N = seconds from the activation (the registry's ``activated_at``) until every web process
serves the new version (the last answer carrying the old version, per host; the worse host counts).

Usage: python bench/bench_multihost.py [--seconds-after 20] [--readers 4] [--writers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common import ROOT, Server, bench_env, manage, print_environment, print_table

DATABASE = "recsys_bench_multihost"
CLUSTER_PORT = 7300
BROKER_DB = 44
BUCKET = "recsys-multihost"
WORK = ROOT / "var" / "bench-multihost"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start; see {log}") from None
            time.sleep(0.1)


def _environment(endpoint: str, cluster_url: str) -> dict[str, str]:
    """The shared part of every host's environment: a fresh database, the cluster, the broker, the bucket."""
    import boto3
    import psycopg
    import redis

    from kernel.localservices import ensure_local_services, ensure_redis
    from kernel.redis_urls import celery_url, with_db

    ensure_local_services()
    parts = urlsplit(os.environ["DATABASE_URL"])
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    env = bench_env(DATABASE)
    broker = celery_url(ensure_redis(), BROKER_DB)
    redis.Redis.from_url(with_db(ensure_redis(), BROKER_DB)).flushdb()
    from redis.cluster import RedisCluster

    RedisCluster.from_url(cluster_url).flushdb()
    env.update(
        REDIS_CLUSTER="1", REDIS_URL=cluster_url, CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker,
        ARTIFACT_S3_BUCKET=BUCKET, ARTIFACT_S3_PREFIX="artifacts", ARTIFACT_S3_ENDPOINT_URL=endpoint,
        ARTIFACT_S3_REGION="us-east-1", ARTIFACT_S3_ACCESS_KEY_ID="testing", ARTIFACT_S3_SECRET_ACCESS_KEY="testing",
        DEBUG="0", API_DEFAULT_RATE_PER_MINUTE="100000000", API_CUSTOMER_RATE_PER_MINUTE="100000000",
    )  # fmt: skip
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)  # fmt: skip
    return env


def _host(env: dict[str, str], name: str) -> dict[str, str]:
    """One host's environment: its own artifact directory and cache (no shared disk)."""
    directory = WORK / name
    directory.mkdir(parents=True, exist_ok=True)
    return {**env, "ARTIFACT_ROOT": str(directory), "ARTIFACT_CACHE_DIR": str(directory)}


def _call(base: str, key: str, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"{}")
        except ValueError:
            return error.code, {}
    except OSError:
        return 599, {}  # no answer at all: counted with the 5xx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--seconds-after", type=float, default=20.0, help="load after every host serves the new version"
    )
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    print_environment()
    from kernel import rediscluster

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cluster_url = rediscluster.start(port=CLUSTER_PORT)
    moto, endpoint = _start_moto(WORK / "moto.log")
    try:
        env = _environment(endpoint, cluster_url)
        worker = _host(env, "worker")
        manage(worker, "migrate", "--verbosity", "0")
        manage(worker, "load_demo", "--quiet")
        manage(worker, "rebuild_online_state")
        started = time.perf_counter()
        manage(worker, "train", "--force", "--quiet")
        first_train_s = time.perf_counter() - started
        _, key = manage(worker, "create_api_key", "bench", "--scope", "admin")
        key = key.strip().splitlines()[-1]
        _, out = manage(worker, "shell", "-c", (
            "import json; from catalog.models import Customer, Item; from ranking.selectors import active_version_id;"
            "print(json.dumps([list(Customer.objects.values_list('external_id', flat=True)[:2000]),"
            "list(Item.objects.filter(active=True).values_list('external_id', flat=True)[:2000]),"
            "active_version_id()]))"
        ))  # fmt: skip
        customers, items, old_version = json.loads(out.strip().splitlines()[-1])
        result = _rehearse(worker, [_host(env, "web1"), _host(env, "web2")], key, customers, items, old_version, args)
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        rediscluster.stop(port=CLUSTER_PORT)  # its three servers went on running after the bench (found 6 December)
    _report(result, first_train_s, args)


def _rehearse(
    worker: dict[str, str], webs: list[dict[str, str]], key: str, customers: list[str], items: list[str],
    old_version: int, args: argparse.Namespace,
) -> dict[str, object]:  # fmt: skip
    run = uuid.uuid4().hex[:8]
    lock = threading.Lock()
    stop = threading.Event()
    counts = {"reads": 0, "event_requests": 0, "5xx": 0, "acknowledged": 0, "other_4xx": 0}
    answers: list[tuple[int, float, int | None]] = []  # (host, time, model version) of every 200 list

    with (
        Server(webs[0], workers=2, log=WORK / "web1.log") as one,
        Server(webs[1], workers=2, log=WORK / "web2.log") as two,
    ):
        bases = [one.base, two.base]

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                host = rng.randrange(2)
                path = f"/v1/recommendations?customer_id={rng.choice(customers)}&count=10"
                status, body = _call(bases[host], key, "GET", path)
                with lock:
                    counts["reads"] += 1
                    counts["5xx"] += status >= 500
                    counts["other_4xx"] += 400 <= status < 500
                    if status == 200:
                        answers.append((host, time.time(), body.get("model_version")))

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            n = 0
            while not stop.is_set():
                batch = []
                for _ in range(50):
                    n += 1
                    batch.append(
                        {
                            "event_id": f"mh-{run}-{seed}-{n}",
                            "customer_id": rng.choice(customers),
                            "item_id": rng.choice(items),
                            "type": rng.choice(["view", "click", "add_to_cart"]),
                        }
                    )
                status, body = _call(bases[n % 2], key, "POST", "/v1/events", {"events": batch})
                with lock:
                    counts["event_requests"] += 1
                    counts["5xx"] += status >= 500
                    counts["other_4xx"] += 400 <= status < 500
                    if status == 202:
                        counts["acknowledged"] += int(body.get("accepted", 0))

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(args.readers)]
        threads += [threading.Thread(target=writer, args=(100 + s,)) for s in range(args.writers)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # load before the new version
        started = time.perf_counter()
        manage(worker, "train", "--force", "--quiet")  # the worker host: train, upload, activate
        train_s = time.perf_counter() - started
        _, out = manage(worker, "shell", "-c", (
            "from ranking.models import ModelVersion; v = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE); "
            "print(v.id, v.activated_at.timestamp())"
        ))  # fmt: skip
        new_version, activated = out.strip().splitlines()[-1].split()
        new_version_id, activated_at = int(new_version), float(activated)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with lock:
                latest = {h: v for h, t, v in answers[-200:] if t > activated_at}
                recent = [(h, v) for h, t, v in answers if t > time.time() - 2]
            if {0, 1} <= set(latest) and recent and all(v == new_version_id for _, v in recent):
                break
            time.sleep(0.5)
        time.sleep(args.seconds_after)
        stop.set()
        for thread in threads:
            thread.join()
    _, out = manage(worker, "shell", "-c", (
        "from events.models import Interaction; "
        f"print(Interaction.objects.filter(event_id__startswith='mh-{run}-').count())"
    ))  # fmt: skip
    rows = int(out.strip().splitlines()[-1])
    per_host: list[float | None] = []
    for host in (0, 1):
        mine = [(t, v) for h, t, v in answers if h == host and t > activated_at]
        old = [t for t, v in mine if v != new_version_id]
        new = [t for t, v in mine if v == new_version_id]
        if not new:
            per_host.append(None)
            continue
        per_host.append((max(old) if old else min(new)) - activated_at)
    return {
        "counts": counts, "rows": rows, "old": old_version, "new": new_version_id, "train_s": train_s,
        "per_host": per_host, "answers": len(answers),
    }  # fmt: skip


def _report(result: dict[str, object], first_train_s: float, args: argparse.Namespace) -> None:
    counts = result["counts"]
    assert isinstance(counts, dict)
    per_host = result["per_host"]
    assert isinstance(per_host, list)
    n = None if any(s is None for s in per_host) else max(per_host)
    print_table(
        "Multi-host rehearsal: 2 web hosts (gunicorn, 2 workers, own artifact cache), 1 worker host, S3 (moto), "
        f"Redis Cluster (3 masters); {args.readers} reader + {args.writers} writer threads",
        ["measure", "value", "target"],
        [
            ["recommendation requests", counts["reads"], ""],
            ["event batch requests (50 events each)", counts["event_requests"], ""],
            ["5xx answers (and no answer)", counts["5xx"], "0"],
            ["4xx answers", counts["other_4xx"], "0"],
            ["events acknowledged", counts["acknowledged"], ""],
            ["rows in Postgres", result["rows"], "= acknowledged"],
            ["lost events", counts["acknowledged"] - int(result["rows"]), "0"],  # type: ignore[call-overload]
            ["version before -> after", f"{result['old']} -> {result['new']}", ""],
            ["worker: train + upload + activate, s", result["train_s"], ""],
            ["activation -> web host 1 serves it, s", per_host[0] if per_host[0] is not None else "never", ""],
            ["activation -> web host 2 serves it, s", per_host[1] if per_host[1] is not None else "never", ""],
            ["N: activation -> every web process serves it, s", n if n is not None else "never", ""],
        ],
    )  # fmt: skip
    print(f"(first training on the worker host, before the load: {first_train_s:.1f} s)")


if __name__ == "__main__":
    main()
