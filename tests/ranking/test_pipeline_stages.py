"""Pure stages of the pipeline (ranking.pipeline.stages) on hand-made request states: no database, no Redis."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.pipeline import stages
from ranking.pipeline.state import ItemAttributes, RequestState


def _state(scores: list[float], categories: list[int], affinity: dict[int, float], context: int | None) -> RequestState:
    n = len(scores)
    state = RequestState(surface="home", count=10, now=0.0, affinity=affinity, context_category_pk=context)
    state.scores = np.asarray(scores, np.float32)
    state.attributes = ItemAttributes(
        category=np.asarray(categories, np.int64), brand=np.full(n, -1, np.int64), available=np.ones(n, bool),
        price=np.full(n, np.nan), created_ts=np.zeros(n),
    )  # fmt: skip
    return state


def test_a_page_category_comes_first_for_a_visitor_whatever_the_scorer_thought_of_it() -> None:
    """A shipped ranker scored the garden items below everything (-0.95): a garden page's list for a new visitor
    had no garden item (a tenth tester, 6 December). With no other interest, the page's category is lifted by the
    whole score range: its best item ahead of every other, its order within kept."""
    state = _state([0.9, 0.8, 0.7, -0.95, -0.97], [1, 2, 3, 7, 7], {7: 1.0}, context=7)
    stages.nudge_context_category(state)
    assert state.scores is not None
    order = np.argsort(-state.scores, kind="stable").tolist()
    assert order[0] == 3
    assert order.index(3) < order.index(4)
    assert [i for i in order if i < 3] == [0, 1, 2]


def test_a_page_category_only_nudges_a_long_history() -> None:
    """The lift is the category's share of the interest: a fifth for one view's worth against four of another
    category, which keeps the customer's own taste ahead."""
    state = _state([0.9, 0.8, 0.1, -0.5], [1, 1, 7, 7], {1: 4.0, 7: 1.0}, context=7)
    stages.nudge_context_category(state)
    assert state.scores is not None
    assert state.scores.tolist() == pytest.approx([0.9, 0.8, 0.1 + 0.2 * 1.4, -0.5 + 0.2 * 1.4])
    assert np.argsort(-state.scores).tolist()[:2] == [0, 1]


@pytest.mark.parametrize("context", [None, 99])
def test_without_a_page_category_among_the_candidates_nothing_moves(context: int | None) -> None:
    state = _state([0.5, 0.2], [1, 2], {1: 1.0, 99: 1.0} if context else {1: 1.0}, context=context)
    stages.nudge_context_category(state)
    assert state.scores is not None
    assert state.scores.tolist() == pytest.approx([0.5, 0.2])


def test_a_page_category_lifts_at_most_half_the_list() -> None:
    """With an arm's diversity cap off nothing else limited the lift: a new visitor's list on a page was all that
    category (a reviewer, 6 December). Only the category's best half-list of candidates is lifted."""
    state = _state([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1, 2, 3, 4, 7, 7, 7, 7], {7: 1.0}, context=7)
    state.count = 4
    stages.nudge_context_category(state)
    assert state.scores is not None
    top = np.argsort(-state.scores, kind="stable").tolist()[: state.count]
    assert top == [4, 5, 0, 1]
