"""Training time and peak memory: the full `manage.py train` on Online Retail, and the same training pipeline on a
synthetic 1M-interaction, 100k-item data set (EASE is skipped there automatically: too many items).

Online Retail runs in the scratch database (recsys_bench; the demo is loaded there once) as a subprocess, so its
time includes reading Postgres, validation, every source, the ANN index and writing the artifacts. The synthetic
run builds the same version in memory (``ranking.services.version_build`` + ``artifacts.version_write``) in a child
process. Peak memory is each process's max RSS (``wait4``). Targets: <= 60 s and <= 180 s.
Usage: python bench/bench_training.py [--skip-retail] [--skip-synthetic] [--items 100000 --interactions 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, bench_env, manage, print_environment, print_table

RETAIL_TARGET_S = 60.0
SYNTHETIC_TARGET_S = 180.0


def _run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, stdout) of one child process. CPU time (user + system) is
    reported next to wall time: on a shared machine it shows how much of the wall time was waiting for a core."""
    started = time.perf_counter()
    with subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        out = process.stdout.read() if process.stdout else ""
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def bench_retail() -> list[object]:
    env = bench_env()
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "load_demo", "--quiet")  # a no-op when the scratch database already has the data
    with tempfile.TemporaryDirectory() as root:
        env = env | {"ARTIFACT_ROOT": root}
        seconds, cpu, peak_mb, out = _run_measured(
            [sys.executable, str(ROOT / "manage.py"), "train", "--force", "--quiet"], env
        )
    sizes = next((line for line in out.splitlines() if line.startswith("sizes")), "sizes ?").split(None, 1)[1]
    return ["Online Retail (manage.py train)", sizes, seconds, cpu, peak_mb, RETAIL_TARGET_S,
            "yes" if seconds <= RETAIL_TARGET_S else "NO"]  # fmt: skip


def synthetic_log(n_items: int, n_interactions: int, seed: int = 0) -> tuple[object, object]:
    """Clustered shop-like data: Zipf item popularity inside 200 topics, users with one or two favourite topics,
    a view/click/cart/purchase mix, sessions of a few events, 180 days; item texts from topic vocabularies."""
    import numpy as np

    from ranking.dataset import ItemTable, log_from_arrays

    rng = np.random.default_rng(seed)
    n_topics = 200
    n_users = max(n_interactions // 20, 1)
    item_topic = rng.integers(0, n_topics, n_items)
    order = np.argsort(item_topic, kind="stable")
    topic_start = np.searchsorted(item_topic[order], np.arange(n_topics + 1))
    # Zipf-like popularity rank within each topic.
    rank_in_topic = np.arange(n_items) - topic_start[item_topic[order]]
    weight = np.empty(n_items)
    weight[order] = 1.0 / (1.0 + rank_in_topic) ** 0.9
    user_topics = rng.integers(0, n_topics, (n_users, 2))
    users = rng.integers(0, n_users, n_interactions)
    topic = np.where(rng.random(n_interactions) < 0.7, user_topics[users, 0], user_topics[users, 1])
    # Items within the chosen topic by popularity: inverse-CDF sampling per topic, vectorised.
    cdf = np.zeros(n_items)
    for t in range(n_topics):
        members = order[topic_start[t] : topic_start[t + 1]]
        cdf[topic_start[t] : topic_start[t + 1]] = np.cumsum(weight[members]) / weight[members].sum()
    u = rng.random(n_interactions)
    pos = np.empty(n_interactions, dtype=np.int64)
    for t in range(n_topics):
        rows = np.flatnonzero(topic == t)
        lo, hi = topic_start[t], topic_start[t + 1]
        pos[rows] = lo + np.minimum(np.searchsorted(cdf[lo:hi], u[rows]), hi - lo - 1)
    items = order[pos]
    noise = rng.random(n_interactions) < 0.1  # some browsing outside any taste
    items[noise] = rng.integers(0, n_items, noise.sum())
    types = rng.choice([1, 2, 3, 4], n_interactions, p=[0.6, 0.15, 0.1, 0.15])
    ts = 1_700_000_000 + rng.uniform(0, 180 * 86_400, n_interactions)
    session_ids = (users.astype(np.int64) * 64 + (ts // 1800 % 64).astype(np.int64)).astype(str)
    vocabulary = [f"w{n}" for n in range(20_000)]
    topic_words = rng.integers(0, 20_000, (n_topics, 6))
    extra_words = rng.integers(0, 20_000, (n_items, 3))
    texts = [
        " ".join([vocabulary[w] for w in topic_words[item_topic[i]]] + [vocabulary[w] for w in extra_words[i]])
        for i in range(n_items)
    ]
    table = ItemTable(
        item_ids=np.arange(1, n_items + 1, dtype=np.int64), category=item_topic.astype(np.int32), texts=texts
    )
    log = log_from_arrays(
        customer=users + 1, item=items + 1, type_=types, value=np.full(n_interactions, np.nan), ts=ts,
        session=session_ids, items=table,
    )  # fmt: skip
    return log, table


def synthetic_child(n_items: int, n_interactions: int) -> None:
    """Runs in its own process: generate, then time the pipeline; prints JSON on stdout."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
    import django

    django.setup()
    from django.utils import timezone

    from ranking import artifacts, services
    from ranking.training import StageTimer, TrainParams

    started = time.perf_counter()
    log, items = synthetic_log(n_items, n_interactions)
    generate_s = time.perf_counter() - started
    timer = StageTimer(enabled=False)
    params = TrainParams()
    started = time.perf_counter()
    build = services.version_build(log, items, params, timer)
    with tempfile.TemporaryDirectory() as root, timer.stage("write"):
        meta = services.version_meta(build, name="bench", created_at=timezone.now())
        artifacts.version_write(Path(root), "bench", build.trained.arrays, index=build.index, meta=meta)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "generate_s": generate_s, "train_s": seconds, "timings": timer.timings, "sizes": build.trained.info["sizes"],
        "skipped": build.trained.info["skipped"], "ann": build.ann_report.to_dict(),
    }))  # fmt: skip


def bench_synthetic(n_items: int, n_interactions: int) -> tuple[list[object], dict[str, object]]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
    argv = [sys.executable, __file__, "--synthetic-child", "--items", str(n_items), "--interactions",
            str(n_interactions)]  # fmt: skip
    _, cpu, peak_mb, out = _run_measured(argv, env)
    result = json.loads(out.strip().splitlines()[-1])
    sizes = result["sizes"]
    row = [
        f"synthetic ({n_items:,} items, {n_interactions:,} events)",
        f"{sizes['n_users']:,} users, {sizes['n_items']:,} items, {sizes['n_interactions']:,} interactions",
        result["train_s"],
        cpu,
        peak_mb,
        SYNTHETIC_TARGET_S,
        "yes" if result["train_s"] <= SYNTHETIC_TARGET_S else "NO",
    ]
    return row, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-retail", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--synthetic-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print_environment()
    if args.synthetic_child:
        synthetic_child(args.items, args.interactions)
        return
    rows: list[list[object]] = []
    details = None
    if not args.skip_retail:
        rows.append(bench_retail())
    if not args.skip_synthetic:
        row, details = bench_synthetic(args.items, args.interactions)
        rows.append(row)
    print_table(
        "Full training (validation run + every source + ANN index + artifacts), one run, 2-core machine",
        ["data", "sizes", "wall s", "process CPU s", "peak RSS MB", "target s", "within"],
        rows,
    )
    if details is not None:
        print_table(
            "Synthetic run by stage (EASE: " + (details["skipped"].get("ease") or "trained") + ")",
            ["stage", "seconds"],
            [[name, seconds] for name, seconds in details["timings"].items()]
            + [["(data generation, not counted)", details["generate_s"]]],
        )
        ann_report = details["ann"]
        print(f"\nANN: {ann_report['kind']} {ann_report['params']}, recall@{ann_report['recall_k']} "
              f"{ann_report['recall']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
