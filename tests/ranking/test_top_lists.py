"""The popular and trending top lists are kept per model: the active version and the versions experiment arms name
take turns request by request, and one model's lists must never be read (or stored) as another's."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ranking.artifacts import ActiveModel
from ranking.pipeline.online import _TopLists


def _model(version_id: int, n_items: int) -> ActiveModel:
    rng = np.random.default_rng(version_id)
    arrays = {
        "item_ids": np.arange(n_items, dtype=np.int64),
        "popularity": rng.random(n_items).astype(np.float32),
        "trending": rng.random(n_items).astype(np.float32),
        "item_category": (np.arange(n_items) % 7).astype(np.int64),
    }
    return ActiveModel(version_id, f"v{version_id}", "x", Path("."), {}, arrays, None, 0.0)


def test_two_models_taking_turns_each_read_their_own_lists() -> None:
    """One shared slot let a request of one model read the other's lists (numbered for another catalog: an
    IndexError, a 500) or store its per-category list into the other's (found 5 December)."""
    big, small = _model(1, 200_000), _model(2, 20_000)
    lists = _TopLists()
    errors: list[str] = []

    def run(model: ActiveModel) -> None:
        for n in range(200):
            hits = lists.popular_in_category(model, n % 7) if n % 2 else lists.get(model, "popular")
            if hits.item_idx.size and int(hits.item_idx.max()) >= model.n_items:
                errors.append(f"v{model.version_id} read an index {int(hits.item_idx.max())} of another model")

    threads = [threading.Thread(target=run, args=(model,)) for model in (big, small, big, small)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for model in (big, small):
        expected = np.argsort(-model.popularity, kind="stable")[:10]
        assert set(lists.get(model, "popular").item_idx[:10].tolist()) == set(expected.tolist())
