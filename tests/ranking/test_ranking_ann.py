"""ranking.ann: the index kind by catalog size, recall tuning against exact search, neighbours, file round trips."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from ranking import ann


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, dim)).astype(np.float32)
    points = centers[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return points.astype(np.float32)


def test_choose_kind_by_size_and_override() -> None:
    assert ann.choose_kind(49_999) == "flat"
    assert ann.choose_kind(50_000) == "hnsw"
    assert ann.choose_kind(10, "ivf") == "ivf"
    with pytest.raises(ValueError, match="unknown index kind"):
        ann.choose_kind(10, "annoy")


def test_flat_is_exact() -> None:
    x = _clustered(500, 8, 0)
    index, report = ann.build_tuned(x, kind="auto", k=20)
    assert report.kind == "flat"
    assert report.recall == 1.0
    found = ann.search(index, x[:5], 20)[1]
    np.testing.assert_array_equal(found, ann.exact_top_k(x, x[:5], 20))


@pytest.mark.parametrize(("kind", "knob"), [("hnsw", "efSearch"), ("ivf", "nprobe")])
def test_approximate_kinds_are_tuned_to_the_recall_target(kind: str, knob: str) -> None:
    x = _clustered(6_000, 16, 1)
    queries = _clustered(200, 16, 2)
    index, report = ann.build_tuned(x, kind=kind, queries=queries, k=50, target=0.95, n_queries=200)
    assert report.kind == kind
    assert knob in report.params
    assert report.recall is not None
    assert report.recall >= 0.95
    # The recorded recall is what the index really does with the recorded knob.
    truth = ann.exact_top_k(x, queries, 50)
    ann.apply_search_params(index, report.params)
    assert ann.recall_at_k(ann.search(index, queries, 50)[1], truth) == pytest.approx(report.recall)


def test_tuning_raises_the_knob_when_recall_is_short() -> None:
    x = _clustered(4_000, 16, 3)
    queries = _clustered(100, 16, 4)
    index = ann.build_index(x, "ivf", seed=0)
    truth = ann.exact_top_k(x, queries, 100)
    ann.apply_search_params(index, {"nprobe": 1})
    low = ann.recall_at_k(ann.search(index, queries, 100)[1], truth)
    params, recall = ann.tune_index(index, queries, truth, target=0.99)
    assert low < 0.99 <= recall
    assert params["nprobe"] > 1


def test_recall_at_k_counts_overlap() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [8, 7, 6, 5]])
    assert ann.recall_at_k(found, truth) == pytest.approx((2 + 4) / 8)


def test_neighbours_table_excludes_self_and_non_positive() -> None:
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0, 0]], dtype=np.float32)
    idx, score = ann.neighbours_table(x, 2)
    # Item 0's only positive neighbour is 1 (item 2 is orthogonal to it); item 2's is 1 (score 0.1).
    assert idx[0].tolist() == [1, -1]
    assert idx[2].tolist() == [1, -1]
    assert idx[1].tolist() == [0, 2]
    assert idx[3].tolist() == [-1, -1]  # a zero vector has no neighbour
    np.testing.assert_allclose(score[:3, 0], [0.9, 0.9, 0.1], rtol=1e-6)


def test_write_and_memory_mapped_read(tmp_path: Path) -> None:
    x = _clustered(1_000, 8, 5)
    for kind in ("flat", "hnsw", "ivf"):
        index = ann.build_index(x, kind)
        path = tmp_path / f"{kind}.faiss"
        ann.write_index(index, path)
        loaded = ann.read_index(path, mmap=True)
        assert ann.index_kind(loaded) == kind
        assert loaded.ntotal == 1_000
        ann.apply_search_params(loaded, {"efSearch": 200, "nprobe": 64})
        ann.apply_search_params(index, {"efSearch": 200, "nprobe": 64})
        np.testing.assert_array_equal(ann.search(loaded, x[:3], 10)[1], ann.search(index, x[:3], 10)[1])
    assert isinstance(faiss.downcast_index(ann.read_index(tmp_path / "ivf.faiss")), faiss.IndexIVFFlat)
