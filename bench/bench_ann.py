"""ANN retrieval at catalog scale: exact (flat) against HNSW and IVF on 1M clustered 64-dim item vectors.

Each index is built with ``ranking.ann`` exactly as ``manage.py reindex`` builds it, tuned (efSearch / nprobe
doubled) until recall@100 against exact search reaches 0.95 on sampled queries, then timed on one core
(``faiss.omp_set_num_threads(1)``) for top-500 retrieval, one query at a time as serving issues them.
Target: <= 2 ms per query with recall@100 >= 0.95.
Usage: python bench/bench_ann.py [--items 1000000] [--dim 64] [--queries 1000] [--kinds flat,hnsw,ivf]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from common import print_environment, print_table

from ranking import ann

TARGET_MS = 2.0
TARGET_RECALL = 0.95
RETRIEVE_K = 500


def clustered_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items around 2,000 topic centres with item-specific spread and norms (as ALS factors have); queries are
    users: mixtures of two topics plus noise."""
    rng = np.random.default_rng(seed)
    n_topics = 2_000
    centres = rng.standard_normal((n_topics, dim)).astype(np.float32)
    topic = rng.integers(0, n_topics, n)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):
        stop = min(start + 200_000, n)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, (stop - start, 1)).astype(np.float32)  # popularity-like norm spread
        vectors[start:stop] = (centres[topic[start:stop]] + 0.6 * noise) * scale
    return vectors, centres


def user_queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, centres.shape[0], (2, n))
    mix = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
    noise = 0.3 * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return (mix * centres[a] + (1 - mix) * centres[b] + noise).astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def time_queries(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of single-query searches on one thread."""
    latencies = []
    for row in queries:
        started = time.perf_counter()
        index.search(row[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("--hnsw-m", type=int, default=ann.HNSW_M)
    parser.add_argument("--ef-construction", type=int, default=ann.HNSW_EF_CONSTRUCTION)
    args = parser.parse_args()
    print_environment()

    vectors, centres = clustered_vectors(args.items, args.dim, seed=0)
    tune_queries = user_queries(centres, args.queries, seed=1)
    test_queries = user_queries(centres, args.queries, seed=2)  # timed and scored on queries tuning never saw
    started = time.perf_counter()
    truth = ann.exact_top_k(vectors, test_queries, 100)
    exact_s = time.perf_counter() - started
    rows = []
    for kind in args.kinds.split(","):
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build with every core, as the indexing worker does
        before = rss_mb()
        index, report = ann.build_tuned(
            vectors, kind=kind, queries=tune_queries, n_queries=args.queries, k=100, target=TARGET_RECALL,
            hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.faiss"
            ann.write_index(index, path)
            file_mb = path.stat().st_size / 2**20
        memory_mb = rss_mb() - before
        faiss.omp_set_num_threads(1)
        found = ann.search(index, test_queries, RETRIEVE_K)[1]
        recall = ann.recall_at_k(found[:, :100], truth)
        p50, p95 = time_queries(index, test_queries, RETRIEVE_K)
        rows.append([
            kind, report.params or "-", report.build_seconds + report.tune_seconds, file_mb, memory_mb, recall, p50,
            p95, "yes" if p50 <= TARGET_MS and recall >= TARGET_RECALL else "NO",
        ])  # fmt: skip
        del index
    print_table(
        f"ANN top-{RETRIEVE_K} retrieval, {args.items:,} items x {args.dim} dims (clustered), one core per query; "
        f"recall@100 on {args.queries:,} held-out queries (exact ground truth took {exact_s:.1f} s)",
        ["index", "params", "build+tune s", "file MB", "RSS growth MB", "recall@100", "p50 ms", "p95 ms",
         f"<= {TARGET_MS} ms & >= {TARGET_RECALL}"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
