"""Freshness and zero loss through the real HTTP API (gunicorn on loopback).

1. Freshness: for sampled demo customers, take the first item of their list, POST a purchase of it, then ask for
   the list again at once; the event is reflected when the bought item is gone. Reports the share reflected on
   the very next request and the time from sending the event to holding the updated list (p50/p95).
2. Zero loss: for a fixed time, writer threads send event batches (with deliberate duplicates and invalid
   events) while reader threads request recommendations; at the end the rows in Postgres must be exactly the
   distinct valid events sent.

Usage: python bench/bench_freshness.py [--customers 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import urllib.request
import uuid

from common import Server, demo_env, manage, print_environment, print_table


def _call(base: str, key: str, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _freshness(base: str, key: str, customers: list[str]) -> tuple[float, list[float]]:
    reflected, seconds = 0, []
    for customer in customers:
        status, before = _call(base, key, "GET", f"/v1/recommendations?customer_id={customer}&count=10")
        if status != 200 or not before["items"]:
            continue
        item = before["items"][0]["item_id"]
        started = time.perf_counter()
        event = {"customer_id": customer, "item_id": item, "type": "purchase", "value": 1,
                 "request_id": before["request_id"]}  # fmt: skip
        status, _ = _call(base, key, "POST", "/v1/events", event)
        assert status == 202, status
        _, after = _call(base, key, "GET", f"/v1/recommendations?customer_id={customer}&count=10")
        seconds.append(time.perf_counter() - started)
        reflected += item not in [i["item_id"] for i in after["items"]]
    return reflected / max(len(seconds), 1), seconds


def _zero_loss(base: str, key: str, customers: list[str], items: list[str], duration: float) -> dict[str, int]:
    run = uuid.uuid4().hex[:8]
    sent_valid: set[str] = set()
    counts = {"requests": 0, "events_sent": 0, "duplicates_sent": 0, "invalid_sent": 0, "reads": 0, "errors_5xx": 0}
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while time.monotonic() < stop:
            batch, valid_ids = [], []
            for _ in range(200):
                n += 1
                event_id = f"soak-{run}-{seed}-{n}"
                kind = rng.random()
                if kind < 0.05:  # invalid: unknown type
                    batch.append({"event_id": event_id, "customer_id": rng.choice(customers),
                                  "item_id": rng.choice(items), "type": "like"})  # fmt: skip
                    continue
                if kind < 0.15 and valid_ids:  # a duplicate of an event already in this batch
                    batch.append(dict(batch[-1]))
                    with lock:
                        counts["duplicates_sent"] += 1
                    continue
                kind_name = rng.choice(["view", "click", "add_to_cart"])
                batch.append({"event_id": event_id, "customer_id": rng.choice(customers),
                              "item_id": rng.choice(items), "type": kind_name})  # fmt: skip
                valid_ids.append(event_id)
            status, _ = _call(base, key, "POST", "/v1/events", {"events": batch})
            with lock:
                counts["requests"] += 1
                counts["events_sent"] += len(batch)
                counts["invalid_sent"] += sum(1 for e in batch if e["type"] == "like")
                if status >= 500:
                    counts["errors_5xx"] += 1
                elif status == 202:
                    sent_valid.update(valid_ids)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            status, _ = _call(base, key, "GET", f"/v1/recommendations?customer_id={rng.choice(customers)}&count=10")
            with lock:
                counts["reads"] += 1
                counts["errors_5xx"] += status >= 500

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=reader, args=(100 + s,)) for s in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["expected_rows"] = len(sent_valid)
    counts["run"] = run  # type: ignore[assignment]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    print_environment()
    env, key = demo_env("recsys_bench_freshness", 34)
    _, out = manage(env, "shell", "-c", (
        "import json; from catalog.models import Customer, Item; print(json.dumps(["
        "list(Customer.objects.values_list('external_id', flat=True)[:3000]),"
        "list(Item.objects.filter(active=True).values_list('external_id', flat=True)[:3000])]))"
    ))  # fmt: skip
    customers, items = json.loads(out.strip().splitlines()[-1])
    rng = random.Random(11)
    with Server(env, workers=4) as server:
        share, seconds = _freshness(server.base, key, rng.sample(customers, args.customers))
        soak = _zero_loss(server.base, key, customers, items, args.seconds)
    _, out = manage(env, "shell", "-c", (
        "from events.models import Interaction; "
        f"print(Interaction.objects.filter(event_id__startswith='soak-{soak['run']}-').count())"
    ))  # fmt: skip
    stored = int(out.strip().splitlines()[-1])
    ms = sorted(s * 1000 for s in seconds)
    print_table(
        f"Freshness: purchase then the next list, {len(ms)} demo customers, gunicorn 4 workers",
        ["measure", "value", "target"],
        [
            ["reflected on the very next request", f"{share:.1%}", "100%"],
            ["event sent -> updated list held, p50 ms", statistics.median(ms), "1000 ms"],
            ["event sent -> updated list held, p95 ms", ms[int(0.95 * len(ms)) - 1], "1000 ms"],
        ],
    )
    print_table(
        f"Zero loss: {args.seconds} s of event batches (duplicates, invalid) while serving recommendations",
        ["measure", "value"],
        [
            ["batch requests", soak["requests"]], ["events sent", soak["events_sent"]],
            ["of which duplicates", soak["duplicates_sent"]], ["of which invalid", soak["invalid_sent"]],
            ["recommendation reads", soak["reads"]], ["5xx answers", soak["errors_5xx"]],
            ["distinct valid events acknowledged", soak["expected_rows"]], ["rows in Postgres", stored],
            ["lost or extra", stored - soak["expected_rows"]],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
