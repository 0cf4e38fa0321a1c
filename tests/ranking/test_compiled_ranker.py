"""The ranker compiled to machine code (lleaves) scores exactly as LightGBM does, is compiled once per model and
CPU (later processes load the cached object file), and any failure leaves LightGBM's predict serving."""

from __future__ import annotations

import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from ranking import compiled_ranker
from ranking.compiled_ranker import COMPILES, ServingRanker


def _outcomes() -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for metric in COMPILES.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    """A small LambdaMART model over features with missing values, as serving's are (absent sources are NaN)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 8))
    X[rng.random(X.shape) < 0.25] = np.nan
    y = np.clip(np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * 0.5 + rng.normal(scale=0.3, size=3000), 0, None)
    labels = np.digitize(y, [0.5, 1.5, 2.5])
    data = lgb.Dataset(X, labels, group=[30] * 100)
    params = {"objective": "lambdarank", "num_leaves": 15, "verbosity": -1, "num_threads": 1, "seed": 1}
    return lgb.train(params, data, num_boost_round=40)


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 8)) * 2).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = np.nan
    return X


def test_compiled_scores_match_lightgbm(booster: lgb.Booster, tmp_path: Path) -> None:
    ranker = ServingRanker(booster, tmp_path)
    assert ranker.wait_compiled(timeout=120)
    assert ranker.engine == "lleaves"
    X = _rows(500, 0)
    expected = booster.predict(X, num_threads=1)
    got = ranker.score(X)
    assert got.dtype == np.float32
    assert got.shape == (500,)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-9)
    assert ranker.score(X[:0]).shape == (0,)


def test_a_second_process_loads_the_cached_object_file(booster: lgb.Booster, tmp_path: Path) -> None:
    before = _outcomes()
    first = ServingRanker(booster, tmp_path)
    assert first.wait_compiled(timeout=120)
    files = list(tmp_path.glob("ranker-*.o"))
    assert len(files) == 1  # named by model digest and CPU; no temporary files left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    second = ServingRanker(booster, tmp_path)
    assert second.wait_compiled(timeout=120)
    after = _outcomes()
    assert after.get("compiled", 0) - before.get("compiled", 0) == 1
    assert after.get("loaded", 0) - before.get("loaded", 0) == 1
    X = _rows(50, 1)
    np.testing.assert_array_equal(second.score(X), first.score(X))


def test_without_a_usable_cache_directory_lightgbm_keeps_scoring(booster: lgb.Booster, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    before = _outcomes().get("failed", 0)
    ranker = ServingRanker(booster, blocked)
    assert not ranker.wait_compiled(timeout=120)
    assert ranker.engine == "lightgbm"
    assert _outcomes()["failed"] - before == 1
    X = _rows(100, 2)
    np.testing.assert_allclose(ranker.score(X), booster.predict(X, num_threads=1).astype(np.float32), rtol=1e-6)


def test_compiling_can_be_turned_off(booster: lgb.Booster) -> None:
    ranker = ServingRanker(booster, None)
    assert not ranker.wait_compiled(timeout=0)
    assert ranker.engine == "lightgbm"


def test_the_cache_directory_keeps_the_most_recently_used_files(booster: lgb.Booster, tmp_path: Path) -> None:
    old = [tmp_path / f"ranker-old{i}-cpu.o" for i in range(compiled_ranker.KEEP_COMPILED + 2)]
    for n, path in enumerate(old):
        path.write_bytes(b"stale")
        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    ranker = ServingRanker(booster, tmp_path)
    assert ranker.wait_compiled(timeout=120)
    left = sorted(p.name for p in tmp_path.glob("ranker-*.o"))
    assert len(left) == compiled_ranker.KEEP_COMPILED
    # The new file and the most recently used old ones stay; the oldest three go.
    assert not {p.name for p in old[:3]} & set(left)
