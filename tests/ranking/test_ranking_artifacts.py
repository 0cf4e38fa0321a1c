"""ranking.artifacts: atomic version directories, checksums, memory-mapped loading, and the hot-swapping loader
(marker in Redis, database fallback, a corrupt version never replaces a good one)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from django.db import connection
from django.test import override_settings
from prometheus_client import REGISTRY

from kernel import redis_client
from ranking import artifacts, services
from ranking.models import ModelVersion
from ranking.training import TrainParams


def _arrays(n_items: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_items, 4)).astype(np.float32)
    return {
        "item_ids": np.arange(1, n_items + 1, dtype=np.int64) * 10,
        "user_ids": np.array([5, 9], dtype=np.int64),
        "als_item_factors": factors,
        "als_yty": factors.astype(np.float64).T @ factors.astype(np.float64),
        "popularity": rng.random(n_items).astype(np.float32),
        "trending": np.ones(n_items, dtype=np.float32),
    }


def _meta() -> dict[str, object]:
    return {"params": TrainParams(als_regularization=0.1).to_dict(), "ann": {"kind": "flat", "params": {}}}


def _version(root: Path, name: str, seed: int = 0, n_items: int = 6) -> ModelVersion:
    """A registered candidate with real artifacts (a flat index over its factors)."""
    from ranking import ann

    arrays = _arrays(n_items, seed)
    index = ann.build_index(arrays["als_item_factors"], "flat")
    path, checksum = artifacts.version_write(root, name, arrays, index=index, meta=_meta())
    return ModelVersion.objects.create(name=name, checksum=checksum, artifact_path=str(path), ann_kind="flat")


def _failures(reason: str) -> float:
    return REGISTRY.get_sample_value("recsys_model_load_failures_total", {"reason": reason}) or 0.0


@pytest.fixture
def activate(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[[int], None]:
    """Activate a version and run its after-commit hook (the Redis marker), as a committed request would."""

    def run(version_id: int) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            services.model_version_activate(version_id=version_id)

    return run


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_version_write_is_complete_and_verifiable(tmp_path: Path) -> None:
    arrays = _arrays(5, 0)
    path, checksum = artifacts.version_write(tmp_path, "v1", arrays, index=None, meta={"params": {}})

    assert sorted(p.name for p in path.iterdir()) == sorted([f"{name}.npy" for name in arrays] + ["meta.json"])
    meta = artifacts.version_verify(path, checksum)
    assert meta["checksum"] == checksum == artifacts.combined_checksum(meta["files"])
    loaded = np.load(path / "als_item_factors.npy", mmap_mode="r")
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, arrays["als_item_factors"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(artifacts.TMP_PREFIX)]
    with pytest.raises(artifacts.ArtifactError, match="never overwritten"):
        artifacts.version_write(tmp_path, "v1", arrays, index=None, meta={})


def test_a_failed_write_leaves_nothing_visible(tmp_path: Path) -> None:
    bad = {"item_ids": np.arange(3), "oops": np.array([object()], dtype=object)}  # cannot be saved without pickle
    with pytest.raises(ValueError, match="pickle"):
        artifacts.version_write(tmp_path, "v1", bad, index=None, meta={})
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_corrupt_and_missing_files(tmp_path: Path) -> None:
    path, checksum = artifacts.version_write(tmp_path, "v1", _arrays(5, 0), index=None, meta={})
    with pytest.raises(artifacts.ArtifactError, match="registered") as wrong:
        artifacts.version_verify(path, "0" * 64)
    assert wrong.value.reason == "checksum"
    target = path / "popularity.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match="sha256") as corrupt:
        artifacts.version_verify(path, checksum)
    assert corrupt.value.reason == "checksum"
    target.unlink()
    with pytest.raises(artifacts.ArtifactError, match="missing") as missing:
        artifacts.version_verify(path, checksum)
    assert missing.value.reason == "missing"


@pytest.mark.django_db
def test_model_load_maps_arrays_and_answers_fold_in_and_search(tmp_path: Path) -> None:
    version = _version(tmp_path, "v1", seed=2)
    model = artifacts.model_load(
        version_id=version.id, name=version.name, checksum=version.checksum, path=Path(version.artifact_path)
    )
    assert model.n_items == 6
    factors = model.array("als_item_factors")
    assert type(factors) is np.ndarray  # a plain view (slicing a memmap subclass costs more) ...
    assert isinstance(factors.base, np.memmap)  # ... of the file mapping, not a copy in memory
    assert model.item_index([20, 25, 60]).tolist() == [1, -1, 5]
    assert model.user_index([9, 6]).tolist() == [1, -1]
    items, conf = model.history_confidences([0, 2, 2, -1], [4, 1, 4, 4], [np.nan] * 4, [0.0, 0.0, 30.0, 0.0])
    assert items.tolist() == [0, 2]
    vector = model.fold_in(items, conf)
    found, scores = model.search(vector, 3)
    factors = np.asarray(model.array("als_item_factors"))
    assert found.tolist() == np.argsort(-(factors @ vector))[:3].tolist()
    with pytest.raises(KeyError, match="no array 'ease_b'"):
        model.array("ease_b")


@pytest.mark.django_db
def test_loader_hot_swaps_after_the_marker_changes(tmp_path: Path, activate: Callable[[int], None]) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        first = _version(tmp_path, "v1", seed=1)
        second = _version(tmp_path, "v2", seed=2)
        activate(first.id)
        clock = FakeClock()
        loader = artifacts.ModelLoader(clock=clock)

        assert loader.get().version_id == first.id
        assert redis_client.get().get(artifacts.ACTIVE_KEY) == str(first.id).encode()
        activate(second.id)
        # Within the check interval the process keeps what it has: no Redis round trip per call.
        clock.now += 0.5
        assert loader.get().version_id == first.id
        clock.now += 0.6
        swapped = loader.get()
        assert swapped.version_id == second.id
        np.testing.assert_array_equal(swapped.array("popularity"), _arrays(6, 2)["popularity"])


@pytest.mark.django_db
def test_a_corrupt_version_keeps_the_previous_one_serving(tmp_path: Path, activate: Callable[[int], None]) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        good = _version(tmp_path, "good", seed=1)
        bad = _version(tmp_path, "bad", seed=2)
        activate(good.id)
        clock = FakeClock()
        loader = artifacts.ModelLoader(clock=clock, retry_failed_after=30.0)
        assert loader.get().version_id == good.id
        activate(bad.id)
        # Corrupted after activation (disk error, partial copy): every loader must refuse it.
        damaged = Path(bad.artifact_path) / "als_item_factors.npy"
        original = damaged.read_bytes()
        damaged.write_bytes(b"garbage")
        before = _failures("checksum")

        clock.now += 1.1
        assert loader.get().version_id == good.id
        assert _failures("checksum") == before + 1
        # Not retried on every check (one failure counted per retry period), retried later.
        clock.now += 1.1
        loader.get()
        assert _failures("checksum") == before + 1
        clock.now += 30
        assert loader.get().version_id == good.id
        assert _failures("checksum") == before + 2
        # A version that stays corrupt is tried after twice as long each time (60 s, 120 s, ...), up to
        # retry_failed_max (600 s): not downloaded by every process every 30 s until someone repairs it.
        for delay in (60, 120, 240, 480, 600, 600):
            clock.now += delay - 1
            loader.get()
            tried = _failures("checksum")
            clock.now += 1.1
            assert loader.get().version_id == good.id
            assert _failures("checksum") == tried + 1, delay
        # Repaired: loaded at its next try.
        damaged.write_bytes(original)
        clock.now += 600
        assert loader.get().version_id == bad.id


@pytest.mark.django_db
def test_a_process_starting_while_the_active_version_is_corrupt_serves_the_previous_one(
    tmp_path: Path, activate: Callable[[int], None]
) -> None:
    """A process started (or a worker recycled) while the active version failed its checksum served no model at all,
    though the version active before was verified on the host (found by a sixth tester, 5 December)."""
    with override_settings(ARTIFACT_ROOT=tmp_path):
        good = _version(tmp_path, "good", seed=1)
        bad = _version(tmp_path, "bad", seed=2)
        activate(good.id)
        activate(bad.id)  # good is retired, still on disk
        damaged = Path(bad.artifact_path) / "als_item_factors.npy"
        original = damaged.read_bytes()
        damaged.write_bytes(b"garbage")
        before = REGISTRY.get_sample_value("recsys_model_fallbacks_total") or 0.0
        clock = FakeClock()
        fresh = artifacts.ModelLoader(clock=clock, retry_failed_after=30.0)

        assert fresh.get().version_id == good.id
        assert (REGISTRY.get_sample_value("recsys_model_fallbacks_total") or 0.0) == before + 1
        # Repaired: the next try loads the active version.
        damaged.write_bytes(original)
        clock.now += 31
        assert fresh.get().version_id == bad.id


@pytest.mark.django_db
def test_missing_directory_counts_as_missing(tmp_path: Path, activate: Callable[[int], None]) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        good = _version(tmp_path, "good", seed=1)
        gone = _version(tmp_path, "gone", seed=2)
        activate(good.id)
        clock = FakeClock()
        loader = artifacts.ModelLoader(clock=clock)
        loader.get()
        activate(gone.id)
        for child in Path(gone.artifact_path).iterdir():
            child.unlink()
        before = _failures("missing")
        clock.now += 2
        assert loader.get().version_id == good.id
        assert _failures("missing") == before + 1


@pytest.mark.django_db
def test_a_database_restored_on_another_host_finds_the_versions_under_its_artifact_root(
    tmp_path: Path, activate: Callable[[int], None]
) -> None:
    """The registry keeps the training host's absolute directory; a backup restored on a host whose ARTIFACT_ROOT
    is elsewhere (the artifacts copied there) served no model: "missing" (a ninth tester, 6 December)."""
    with override_settings(ARTIFACT_ROOT=tmp_path):
        version = _version(tmp_path, "v1")
        ModelVersion.objects.filter(pk=version.pk).update(artifact_path=f"/srv/old-host/artifacts/{version.name}")
        activate(version.id)
        before = _failures("missing")
        assert artifacts.ModelLoader().get().version_id == version.id
        assert _failures("missing") == before


@pytest.mark.django_db
def test_loader_falls_back_to_the_database_without_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, activate: Callable[[int], None]
) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        version = _version(tmp_path, "v1")
        activate(version.id)

        def down() -> None:
            raise redis.ConnectionError("Redis is down")

        monkeypatch.setattr(artifacts.hot_swap, "_redis_marker", down)
        assert artifacts.ModelLoader().get().version_id == version.id
        # A marker lost from Redis (flush) is read from the database too.
        monkeypatch.undo()
        redis_client.get().flushdb()
        assert artifacts.ModelLoader().get().version_id == version.id


@pytest.mark.django_db
def test_stale_redis_marker_is_corrected_by_the_periodic_database_check(
    tmp_path: Path, activate: Callable[[int], None]
) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        first = _version(tmp_path, "v1", seed=1)
        second = _version(tmp_path, "v2", seed=2)
        activate(first.id)
        clock = FakeClock()
        loader = artifacts.ModelLoader(clock=clock, db_check_interval=60.0)
        assert loader.get().version_id == first.id
        activate(second.id)
        # The publish "failed": Redis still names the first version.
        redis_client.get().set(artifacts.ACTIVE_KEY, first.id)
        redis_client.get().set(artifacts.ACTIVE_CHECKSUM_KEY, first.checksum)
        clock.now += 2
        assert loader.get().version_id == first.id
        clock.now += 60
        assert loader.get().version_id == second.id
        # The stale marker is still in Redis: the process must not flip back to it.
        for _ in range(3):
            clock.now += 1.1
            assert loader.get().version_id == second.id


@pytest.mark.django_db
def test_trending_refresh_overlay_is_applied(tmp_path: Path, activate: Callable[[int], None]) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        version = _version(tmp_path, "v1")
        activate(version.id)
        clock = FakeClock()
        loader = artifacts.ModelLoader(clock=clock)
        assert loader.get().trending_computed_at is None
        fresh = np.arange(6, dtype=np.float32)
        client = redis_client.get()
        client.hset(
            artifacts.TRENDING_KEY.format(version_id=version.id), mapping=artifacts.trending_encode(fresh, fresh, 42.0)
        )
        client.set(artifacts.TRENDING_STAMP_KEY, f"{version.id}:42.000")
        clock.now += 1.5
        model = loader.get()
        assert model.trending_computed_at == 42.0
        np.testing.assert_array_equal(model.trending, fresh)
        # A blob sized for another catalog is ignored.
        assert artifacts.trending_decode(artifacts.trending_encode(fresh[:3], fresh[:3], 1.0), 6) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_calls_load_once(tmp_path: Path, activate: Callable[[int], None]) -> None:
    with override_settings(ARTIFACT_ROOT=tmp_path):
        version = _version(tmp_path, "v1")
        activate(version.id)
        loader = artifacts.ModelLoader()
        seen: list[artifacts.ActiveModel | None] = []

        def call() -> None:
            try:
                seen.append(loader.get())
            finally:
                connection.close()  # each thread has its own connection; the test database must be droppable

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8
        assert len({id(model) for model in seen}) == 1
        assert seen[0] is not None


@pytest.mark.django_db
def test_no_active_version_means_none_and_asks_once_per_interval() -> None:
    calls: list[int] = []

    def read_marker() -> artifacts.Marker | None:
        calls.append(1)
        return None

    clock = FakeClock()
    loader = artifacts.ModelLoader(clock=clock, read_marker=read_marker)
    assert loader.get() is None
    assert loader.get() is None
    assert len(calls) == 1
    clock.now += 1.1
    assert loader.get() is None
    assert len(calls) == 2
