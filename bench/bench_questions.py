"""Which of validation's two questions foretells which test (issue 13's random MovieLens row).

When the last 30 days hold too few users, ``train`` validates on each user's own tail plus a random share of their
other items (``ranking.tuning.validation_plan``), and judges a setting by the geometric mean of the two questions'
NDCG@10: "next" (the tail) and "other" (the random share). This bench takes MovieLens 100K under the two test
protocols of ``bench_served_quality.py`` (per-user random 75/25, seed 42; per-user temporal 75/25), builds
``train``'s own validation split from each training part, and for the retrieval settings the tuning starts from
prints each question's NDCG@10, their balanced figure and the test's NDCG@10 of the lists the served pipeline
(``ranking.pipeline.offline``, the API's stages) gives, in the pipeline mode and as single sources, all other
parameters at their defaults. Below each table: how well each validation figure orders the rows as the test does
(Kendall's tau). Offline and in process (no servers): about a minute.

Usage: python bench/bench_questions.py [--splits random,temporal]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import print_environment, print_table  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
import django  # noqa: E402

django.setup()

from bench_quality import load_ml100k  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from ranking import evaluation, metrics  # noqa: E402
from ranking.pipeline.offline import served_lists  # noqa: E402
from ranking.training import TrainParams, content_vectors, train_sources  # noqa: E402
from ranking.tuning import validation_plan  # noqa: E402

K = 10
# The tuning's first retrieval candidates (docs/models.md, "Tuning"): the defaults, the defaults with EASE over the
# whole history, every anchor alike, every anchor with recency on a 0.3 floor.
SETTINGS: dict[str, dict[str, object]] = {
    "latest 20 anchors, decay 0.85": {},
    "the same, EASE over the whole history": {"ease_whole_history": True},
    "every anchor alike": {"anchors": 200, "anchor_decay": 1.0, "anchor_floor": 1.0},
    "every anchor, recency on a 0.3 floor": {"anchors": 200, "anchor_decay": 0.85, "anchor_floor": 0.3},
}
MODES = ("pipeline", "source:ease", "source:item_knn", "source:als")


def run_split(name: str) -> None:
    log, items = load_ml100k()
    if name == "random":
        test = evaluation.split_per_user(log, fraction=0.25, seed=42)
    else:
        test = evaluation.split_user_tail(log, fraction=0.25, min_history=1)
    base = TrainParams()
    plan, validation = validation_plan(test.train, base)
    if validation is None or not validation.questions:
        print(f"\n{name}: validation asks one question ({plan.protocol}: {plan.reason}); nothing to compare")
        return
    vectors = content_vectors(items, base)
    rows: list[list[object]] = []
    figures: list[tuple[float, float, float, float]] = []
    started = time.perf_counter()
    for setting, changes in SETTINGS.items():
        params = base.replace(**changes)
        on_validation = train_sources(
            validation.train, items, params, reference_ts=validation.reference_ts, content=vectors
        )
        on_test = train_sources(test.train, items, params, reference_ts=test.reference_ts, content=vectors)
        for mode in MODES:
            lists = served_lists(on_validation, validation, items, serve=mode, k=K)
            by_question = {
                question: metrics.ndcg_at_k(lists, parts, K) for question, parts in validation.questions.items()
            }
            balanced = metrics.balanced(by_question)
            tested = metrics.ndcg_at_k(served_lists(on_test, test, items, serve=mode, k=K), test.relevant, K)
            nxt, other = by_question[evaluation.TAIL_QUESTION], by_question[evaluation.RANDOM_QUESTION]
            figures.append((nxt, other, balanced, tested))
            rows.append([setting, mode, round(nxt, 4), round(other, 4), round(balanced, 4), round(tested, 4)])
    print_table(
        f"MovieLens 100K, per-user {name} 75/25: validation ({plan.protocol}, {validation.n_test_users} users) "
        f"against the test ({test.n_test_users} users), NDCG@{K}, {time.perf_counter() - started:.0f} s",
        ["setting", "mode", "next", "other", "balanced", "test"],
        rows,
    )
    tests = [f[3] for f in figures]
    print_table(
        "How each validation figure orders the rows as the test does",
        ["figure", "Kendall's tau with the test"],
        [[label, round(float(kendalltau([f[i] for f in figures], tests).statistic), 3)]
         for i, label in enumerate(("next", "other", "balanced"))],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="random,temporal")
    args = parser.parse_args()
    print_environment()
    for name in args.splits.split(","):
        if name not in ("random", "temporal"):
            parser.error(f"--splits: unknown split {name!r} (random, temporal)")
        run_split(name)


if __name__ == "__main__":
    main()
