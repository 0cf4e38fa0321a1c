"""Offline evaluation: protocol splits (temporal, per-user random, external test events), every source as a
recommender callable, and the metrics of ``ranking.metrics`` per source and user segment. Pure: no ORM.

The hook for anything else that recommends (the full serving pipeline, a new model) is :data:`SourceFn`: a
callable that receives :class:`EvalUsers` (their ids and training history) and ``k`` and returns an ``(n, k)``
array of item indices, best first, ``-1`` padded. Pass it in the ``recommenders`` mapping of
:func:`evaluate_sources` (or ``extra`` of :func:`run_protocol`) next to the built-in sources. The harness blanks
any training item a recommender returns, so a leak cannot score. :func:`dense_source`, :func:`neighbour_source`
and :func:`global_source` turn a scoring function, a neighbour table or one global ranking into a SourceFn.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ranking import metrics, sources
from ranking.dataset import InteractionLog, user_item_matrix
from ranking.training import TrainedSources, TrainParams, als_confidences

IntArray = npt.NDArray[np.int64]
SECONDS_PER_DAY = sources.SECONDS_PER_DAY
COLD_MAX_HISTORY = 2  # users with at most this many training items form the cold segment
# The two questions a per-user tail split with a random share asks (``Split.questions``).
TAIL_QUESTION = "next"  # what the customer went on to do: their latest events
RANDOM_QUESTION = "other"  # what else from their whole history a list should have found: items drawn at random
# Dense score blocks stay under ~80 MB of float32.
_BLOCK_CELLS = 20_000_000


@dataclass(frozen=True, eq=False)
class EvalUsers:
    """The users a recommender is asked about, row-aligned.

    ``user_ids``: customer pks (-1 when unknown); ``user_index``: row in the training log's user map (-1 when the
    user has no training data); ``history``: their training items weighted as serving would see them (type weight
    x history decay as of the split's reference time); ``seen``: every training item, never to be recommended.
    """

    user_ids: IntArray
    user_index: IntArray
    history: sp.csr_matrix
    seen: sp.csr_matrix

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def rows(self, start: int, stop: int) -> EvalUsers:
        return EvalUsers(
            self.user_ids[start:stop], self.user_index[start:stop], self.history[start:stop], self.seen[start:stop]
        )


SourceFn = Callable[[EvalUsers, int], IntArray]


@dataclass(frozen=True, eq=False)
class Split:
    """A protocol's outcome: what to train on, whom to ask, and what each of them went on to do."""

    protocol: str
    train: InteractionLog
    user_index: IntArray  # per test user: row in train.user_ids, -1 if unknown there
    user_ids: IntArray  # per test user: customer pk (-1 unknown)
    relevant: list[IntArray]  # per test user: held-out items not already in their training history
    reference_ts: float  # "now" for the trained model and for history decay
    info: dict[str, Any] = field(default_factory=dict)
    # When the held-out items answer more than one question (``split_user_tail`` with a random share: "what did
    # they do next", "what else from their history"), each question's part of ``relevant``, per test user (an
    # empty array when a user's held-out items answer only the other question). Empty: one question.
    questions: dict[str, list[IntArray]] = field(default_factory=dict)

    @property
    def n_test_users(self) -> int:
        return int(self.user_ids.size)

    def sample_users(self, max_users: int, seed: int) -> Split:
        """At most ``max_users`` test users, drawn without replacement (bounds validation time on big data)."""
        if self.n_test_users <= max_users:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(self.n_test_users, max_users, replace=False))
        info = {**self.info, "sampled_users": max_users, "test_users_before_sampling": self.n_test_users}
        return Split(
            self.protocol,
            self.train,
            self.user_index[rows],
            self.user_ids[rows],
            [self.relevant[i] for i in rows],
            self.reference_ts,
            info,
            {name: [parts[i] for i in rows] for name, parts in self.questions.items()},
        )


# --- Protocols ------------------------------------------------------------------------------------------------


def split_temporal(log: InteractionLog, *, holdout_days: float) -> Split:
    """Global temporal split: train on events before ``reference - holdout_days``, test on the rest (reference:
    :meth:`~ranking.dataset.InteractionLog.reference_ts`, the latest event unless a few stray ones come later).

    Relevant items are the ones a user interacted with in the hold-out and not before (new items only: items
    seen in training are excluded from every list, so counting them would only add an unreachable target).
    """
    if holdout_days <= 0:
        raise ValueError("holdout_days must be positive")
    cutoff = log.reference_ts() - holdout_days * SECONDS_PER_DAY
    train_mask = log.ts < cutoff
    train = log.subset(train_mask)
    test = log.subset(~train_mask & (log.user >= 0))
    split = _split_from_test_events(
        "temporal",
        train,
        test.user.astype(np.int64),
        log.user_ids[test.user],
        test.item.astype(np.int64),
        reference_ts=cutoff,
    )
    split.info.update({"holdout_days": holdout_days, "cutoff_ts": cutoff})
    return split


def split_per_user(log: InteractionLog, *, fraction: float, seed: int) -> Split:
    """Per-user random split: each user's distinct items are shuffled and ``round(fraction * n)`` of them (at
    most n - 1, none for users with a single item) are held out with all their events."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    known = log.user >= 0
    pair_key = log.user.astype(np.int64) * log.n_items + log.item
    pairs = np.unique(pair_key[known])
    pair_user = pairs // log.n_items
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(pairs.size), pair_user))
    pair_user_sorted = pair_user[order]
    counts = np.bincount(pair_user_sorted, minlength=log.n_users)
    n_test = np.where(counts >= 2, np.minimum(np.rint(fraction * counts), counts - 1), 0).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(pairs.size) - starts[pair_user_sorted]
    test_pairs = np.sort(pairs[order][rank < n_test[pair_user_sorted]])
    is_test = known & np.isin(pair_key, test_pairs, assume_unique=False)
    train = log.subset(~is_test)
    test = log.subset(is_test)
    _, last = train.time_range()
    split = _split_from_test_events(
        "per_user",
        train,
        test.user.astype(np.int64),
        log.user_ids[test.user],
        test.item.astype(np.int64),
        reference_ts=last,
    )
    split.info.update({"fraction": fraction, "seed": seed})
    return split


def split_user_tail(
    log: InteractionLog, *, fraction: float, min_history: int = 3, random_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Per-user temporal split: each user's events in time order, the last ``ceil(fraction * n)`` held out (users
    with fewer than ``min_history`` events keep everything in training). Fits logs whose users were active at
    different times (a global window would hold few of them); "now" is the log's reference time, as in serving.

    ``random_fraction``: besides the tail, hold out ``round(random_fraction * m)`` of the user's other ``m``
    distinct items at random (seeded), with all their events (at most ``m - 1``): the held-out set then asks both
    what the customer did next and what else from their whole history a list should have found.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    if not 0 <= random_fraction < 1:
        raise ValueError("random_fraction must be between 0 and 1")
    known = np.flatnonzero(log.user >= 0)
    order = known[np.lexsort((np.arange(known.size), log.ts[known], log.user[known]))]
    user_sorted = log.user[order].astype(np.int64)
    counts = np.bincount(user_sorted, minlength=log.n_users)
    n_test = np.where(counts >= min_history, np.ceil(fraction * counts), 0).astype(np.int64)
    ends = np.cumsum(counts)
    position_from_end = ends[user_sorted] - np.arange(order.size)  # 1 for a user's latest event
    is_test = np.zeros(len(log), bool)
    is_test[order[position_from_end <= n_test[user_sorted]]] = True
    is_tail = is_test.copy()
    if random_fraction > 0:
        is_test |= _random_pairs(log, ~is_test & (log.user >= 0), n_test > 0, random_fraction, seed)
    train = log.subset(~is_test)
    test = log.subset(is_test)
    split = _split_from_test_events(
        "user_tail",
        train,
        test.user.astype(np.int64),
        log.user_ids[test.user],
        test.item.astype(np.int64),
        reference_ts=log.reference_ts(),
    )
    split.info.update({"fraction": fraction, "min_history": min_history, "random_fraction": random_fraction})
    if random_fraction > 0:
        # A pair is the tail's when any of its held-out events is (the random share takes whole pairs outside it).
        tail_pairs = np.unique(log.user[is_tail].astype(np.int64) * log.n_items + log.item[is_tail])
        in_tail = [
            np.isin(user * log.n_items + relevant, tail_pairs)
            for user, relevant in zip(split.user_index.tolist(), split.relevant, strict=True)
        ]
        split = dataclasses.replace(
            split,
            questions={
                TAIL_QUESTION: [relevant[mask] for relevant, mask in zip(split.relevant, in_tail, strict=True)],
                RANDOM_QUESTION: [relevant[~mask] for relevant, mask in zip(split.relevant, in_tail, strict=True)],
            },
        )
    return split


def _random_pairs(
    log: InteractionLog,
    candidates: npt.NDArray[np.bool_],
    eligible_user: npt.NDArray[np.bool_],
    share: float,
    seed: int,
) -> npt.NDArray[np.bool_]:
    """Events of ``round(share * m)`` random (user, item) pairs of each eligible user's ``m`` candidate pairs (at
    most ``m - 1``; every event of a chosen pair, among the candidates)."""
    pick = candidates & eligible_user[np.maximum(log.user, 0)]
    pair_key = log.user.astype(np.int64) * log.n_items + log.item
    pairs = np.unique(pair_key[pick])
    if pairs.size == 0:
        return np.zeros(len(log), bool)
    pair_user = pairs // log.n_items
    order = np.lexsort((np.random.default_rng(seed).random(pairs.size), pair_user))
    user_sorted = pair_user[order]
    per_user = np.bincount(user_sorted, minlength=log.n_users)
    n_out = np.minimum(np.rint(share * per_user), np.maximum(per_user - 1, 0)).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(per_user)[:-1]))
    rank = np.arange(pairs.size) - starts[user_sorted]
    chosen = np.sort(pairs[order][rank < n_out[user_sorted]])
    return pick & np.isin(pair_key, chosen)


def split_external(
    train: InteractionLog, *, test_user_keys: npt.ArrayLike, test_items: npt.ArrayLike, info: dict[str, Any]
) -> Split:
    """Train on ``train`` (e.g. everything in the database) and test on external events.

    ``test_user_keys`` are customer pks (negative for customers the database does not know: they are new users
    with no history); ``test_items`` are model item indices. Every test event makes its item relevant, except
    items the user already has in training.
    """
    keys = np.asarray(test_user_keys, dtype=np.int64)
    items = np.asarray(test_items, dtype=np.int64)
    if train.n_users:
        pos = np.minimum(np.searchsorted(train.user_ids, keys), train.n_users - 1)
        user_index = np.where((keys >= 0) & (train.user_ids[pos] == keys), pos, -1)
    else:
        user_index = np.full(keys.shape, -1, dtype=np.int64)
    _, last = train.time_range()
    split = _split_from_test_events("test_file", train, user_index, keys, items, reference_ts=last, group_keys=keys)
    split.info.update(info)
    return split


def _split_from_test_events(
    protocol: str,
    train: InteractionLog,
    test_user_index: IntArray,
    test_user_ids: IntArray,
    test_items: IntArray,
    *,
    reference_ts: float,
    group_keys: IntArray | None = None,
) -> Split:
    keys = test_user_index if group_keys is None else group_keys
    if keys.size == 0:
        return Split(protocol, train, np.zeros(0, np.int64), np.zeros(0, np.int64), [], reference_ts, {})
    seen_keys = _seen_pair_keys(train)
    order = np.lexsort((test_items, keys))
    keys, items = keys[order], test_items[order]
    user_index, user_ids = test_user_index[order], test_user_ids[order]
    # Relevant = held-out items the user has not had in training (their own training items are never listed).
    in_train = (user_index >= 0) & np.isin(user_index * train.n_items + items, seen_keys)
    boundaries = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], boundaries))
    out_index, out_ids, relevant = [], [], []
    for start, stop in zip(starts, np.concatenate((boundaries, [keys.size])), strict=True):
        new_items = np.unique(items[start:stop][~in_train[start:stop]])
        if new_items.size == 0:
            continue
        out_index.append(user_index[start])
        out_ids.append(user_ids[start])
        relevant.append(new_items.astype(np.int64))
    info = {"n_test_events": int(test_items.size), "n_test_users_any": int(starts.size)}
    return Split(
        protocol,
        train,
        np.asarray(out_index, dtype=np.int64),
        np.asarray(out_ids, dtype=np.int64),
        relevant,
        reference_ts,
        info,
    )


def _seen_pair_keys(log: InteractionLog) -> IntArray:
    known = log.user >= 0
    return np.unique(log.user[known].astype(np.int64) * log.n_items + log.item[known])


def eval_users(split: Split, params: TrainParams) -> EvalUsers:
    """The test users' training histories, weighted as the serving path would weigh them at the reference time."""
    train = split.train
    history_all = user_item_matrix(
        train, params.weighting, reference_ts=split.reference_ts, half_life_days=params.history_half_life_days
    )
    seen_all = history_all.copy()
    seen_all.data[:] = 1.0
    # Users without training data point at an all-zero row appended at the end.
    empty_row = sp.csr_matrix((1, train.n_items), dtype=np.float32)
    rows = np.where(split.user_index >= 0, split.user_index, train.n_users)
    history = sp.vstack([history_all, empty_row]).tocsr()[rows]
    seen = sp.vstack([seen_all, empty_row]).tocsr()[rows]
    return EvalUsers(split.user_ids, split.user_index, history, seen)


# --- Sources as recommenders ----------------------------------------------------------------------------------


def _blocks(n_users: int, n_items: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_CELLS // max(n_items, 1))
    return [(start, min(start + step, n_users)) for start in range(0, n_users, step)]


def _no_history(users: EvalUsers) -> npt.NDArray[np.bool_]:
    return np.diff(users.history.indptr) == 0


def dense_source(score_block: Callable[[EvalUsers], npt.NDArray[np.floating]], *, min_score: float) -> SourceFn:
    """A personalised SourceFn from a function scoring every item for a block of users."""

    def recommend(users: EvalUsers, k: int) -> IntArray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        n_items = users.seen.shape[1]
        for start, stop in _blocks(len(users), n_items):
            block = users.rows(start, stop)
            scores = np.array(score_block(block), dtype=np.float32)
            out[start:stop] = sources.dense_top_k(scores, k, block.seen, min_score=min_score, overwrite=True)
        # A personalised source has nothing to say about a user without history: an empty list, not noise.
        out[_no_history(users)] = -1
        return out

    return recommend


def neighbour_source(idx: npt.NDArray[np.integer], score: npt.NDArray[np.floating]) -> SourceFn:
    """Neighbour-table sources stay sparse: a user's scores only exist on the neighbours of their history."""
    similarity = sources.neighbours_to_csr(idx, score, idx.shape[0])

    def recommend(users: EvalUsers, k: int) -> IntArray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for start in range(0, len(users), 2_000):
            block = users.rows(start, start + 2_000)
            scores = sp.csr_matrix(block.history @ similarity)
            scores = scores - scores.multiply(block.seen)  # training items are never recommended
            out[start : start + len(block)] = sources.sparse_top_k(scores, k)[0]
        return out

    return recommend


def global_source(scores: npt.NDArray[np.floating], *, min_score: float) -> SourceFn:
    """The same ranking for everyone (popularity, trending), minus each user's training items."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    order = order[np.asarray(scores)[order] > min_score]

    def recommend(users: EvalUsers, k: int) -> IntArray:
        n_items = users.seen.shape[1]
        seen_len = np.diff(users.seen.indptr)
        need = min(order.size, k + int(seen_len.max(initial=0)))
        candidates = order[:need]
        rows = np.repeat(np.arange(len(users), dtype=np.int64), seen_len)
        seen_keys = rows * n_items + users.seen.indices
        keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + candidates[None, :]
        blocked = np.isin(keys, seen_keys)
        # Unblocked candidates first, in ranking order (stable sort on the blocked flag).
        pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        out = np.full((len(users), k), -1, dtype=np.int64)
        width = pick.shape[1]
        chosen = candidates[pick]
        out[:, :width] = np.where(np.take_along_axis(blocked, pick, axis=1), -1, chosen)
        return out

    return recommend


def source_recommenders(trained: TrainedSources) -> dict[str, SourceFn]:
    """Every trained source as a :data:`SourceFn`, scoring histories the way serving would."""
    a = trained.arrays
    params = trained.params
    recs: dict[str, SourceFn] = {}
    if "als_item_factors" in a:
        item_f = a["als_item_factors"]
        yty = a["als_yty"]

        def als_scores(block: EvalUsers) -> npt.NDArray[np.floating]:
            user_f = sources.fold_in_batch(
                item_f, als_confidences(block.history, params), params.als_regularization, yty
            )
            return user_f @ item_f.T

        recs["als"] = dense_source(als_scores, min_score=-np.inf)
    if "knn_idx" in a:
        recs["item_knn"] = neighbour_source(a["knn_idx"], a["knn_score"])
    if "ease_b" in a:
        b = a["ease_b"]
        recs["ease"] = dense_source(lambda block: np.asarray(block.history @ b), min_score=-np.inf)
    elif "ease_idx" in a:
        recs["ease"] = neighbour_source(a["ease_idx"], a["ease_score"])
    if "content_vectors" in a:
        vectors = a["content_vectors"]

        def content_scores(block: EvalUsers) -> npt.NDArray[np.floating]:
            profile = np.asarray(block.history @ vectors)
            norms = np.linalg.norm(profile, axis=1, keepdims=True)
            return (profile / np.where(norms > 0, norms, 1.0)) @ vectors.T

        recs["content"] = dense_source(content_scores, min_score=0.0)
    if "popularity" in a:
        recs["popularity"] = global_source(a["popularity"], min_score=0.0)
    if "trending" in a:
        # Only items above their usual rate are "trending"; the rest pad the list.
        recs["trending"] = global_source(a["trending"], min_score=1.0)
    if "fbt_idx" in a:
        recs["fbt"] = neighbour_source(a["fbt_idx"], a["fbt_score"])
    return recs


# --- Evaluation -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    mask: npt.NDArray[np.bool_]


def segments_for(split: Split) -> list[Segment]:
    history_len = np.zeros(split.n_test_users, dtype=np.int64)
    counts = split.train.user_event_counts()
    known = split.user_index >= 0
    history_len[known] = counts[split.user_index[known]]
    return [
        Segment("main", "test users with >= 1 training interaction", history_len >= 1),
        Segment(
            "cold", f"test users with <= {COLD_MAX_HISTORY} training items (or none)", history_len <= COLD_MAX_HISTORY
        ),
    ]


def _mask_seen(recommended: IntArray, seen: sp.csr_matrix) -> IntArray:
    """Blank out any training item a recommender returned: a leak must never count as a hit."""
    if seen.nnz == 0 or recommended.size == 0:
        return recommended
    n_items = seen.shape[1]
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    seen_keys = rows * n_items + seen.indices
    keys = np.arange(recommended.shape[0], dtype=np.int64)[:, None] * n_items + np.maximum(recommended, 0)
    leaked = (recommended >= 0) & np.isin(keys, seen_keys)
    return np.where(leaked, -1, recommended)


def evaluate_sources(
    split: Split,
    recommenders: Mapping[str, SourceFn],
    users: EvalUsers,
    *,
    k: int,
    item_category: npt.ArrayLike,
    segments: Sequence[Segment] = (),
) -> dict[str, Any]:
    """Metrics of ``ranking.metrics.evaluate_lists`` for every recommender and segment (``segments_for``'s, then
    ``segments``, e.g. the users a ranker never saw).

    Returns ``{"segments": {segment: {"description", "n_users", "sources": {name: metrics}}}, ...}``. Novelty
    uses the training popularity (distinct users per item) over the training users.
    """
    item_popularity = split.train.item_user_counts()
    n_pop_users = max(split.train.n_users, 1)
    n_items = split.train.n_items
    lists = {name: _mask_seen(fn(users, k), users.seen) for name, fn in recommenders.items()}
    result: dict[str, Any] = {"protocol": split.protocol, "k": k, "info": split.info, "segments": {}}
    for segment in [*segments_for(split), *segments]:
        rows = np.flatnonzero(segment.mask)
        entry: dict[str, Any] = {"description": segment.description, "n_users": int(rows.size), "sources": {}}
        if rows.size:
            relevant = [split.relevant[i] for i in rows]
            for name, recommended in lists.items():
                entry["sources"][name] = metrics.evaluate_lists(
                    recommended[rows], relevant, k, n_items, item_category, item_popularity, n_pop_users
                )
        result["segments"][segment.name] = entry
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """The console table: one block per segment, one row per source."""
    k = result["k"]
    columns = [
        ("precision", f"precision@{k}"),
        ("recall", f"recall@{k}"),
        ("ndcg", f"ndcg@{k}"),
        ("map", f"map@{k}"),
        ("hit_rate", f"hit_rate@{k}"),
        ("coverage", f"coverage@{k}"),
        ("max_cat", "max_category_share"),
        ("novelty", "novelty"),
    ]
    lines: list[str] = []
    width = max([12, *(len(source) + 1 for segment in result["segments"].values() for source in segment["sources"])])
    for name, segment in result["segments"].items():
        lines.append(f"{name}: {segment['description']} (n={segment['n_users']:,})")
        header = f"  {'source':<{width}}" + "".join(f"{title:>11}" for title, _ in columns)
        lines.append(header)
        lines.append("  " + "-" * (len(header) - 2))
        for source, values in segment["sources"].items():
            cells = "".join(f"{values[key]:>11.4f}" for _, key in columns)
            lines.append(f"  {source:<{width}}{cells}")
        lines.append("")
    ranker = result.get("ranker")
    if ranker is not None:
        # The shipping rule of ranking.pipeline.offline, with both figures, so a reader sees why.
        if not ranker["trained"] or ranker["pipeline_ndcg"] is None:
            lines.append(
                "ranker: not trained (too few users with a hit among their candidates); serving blends; every "
                "figure above is on all test users"
            )
        else:
            verdict = "ships" if ranker["ships"] else "does not ship (serving blends)"
            if ranker.get("ship_rule", "auto") != "auto":
                verdict += f" (ranker_ship={ranker['ship_rule']})"
            if ranker.get("judged_on") == "cross_fitted":
                on = (
                    f"{ranker['judged_users']:,} test users, each scored by a ranker that never saw them (cross-"
                    f"fitted: one per quarter of the users, and so are the ranker rows of every segment above; the "
                    f"segment ranker_unseen is the shipped ranker's own quarter)"
                )
            else:
                on = (
                    f"{ranker['held_out_users']:,} test users it never saw (segment ranker_unseen; main and cold "
                    f"include the {ranker['fit_users']:,} it was fitted on and {ranker['early_stopping_users']:,} "
                    "it early-stopped on)"
                )
            lines.append(
                f"ranker: {verdict}: pipeline (ranker, cap 30%) ndcg@{k} {ranker['pipeline_ndcg']:.4f} vs best "
                f"single source {ranker.get('best_single_source')} {ranker['best_single_source_ndcg']:.4f} on the "
                f"{on}"
            )
    return "\n".join(lines).rstrip()


def to_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=True, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run_protocol(
    split: Split,
    trained: TrainedSources,
    *,
    k: int,
    item_category: npt.ArrayLike,
    extra: Mapping[str, SourceFn] | None = None,
    include: Sequence[str] | None = None,
    segments: Sequence[Segment] = (),
) -> dict[str, Any]:
    """Evaluate the trained sources (optionally only ``include``) plus ``extra`` recommenders on ``split``, over
    every test user (and the extra ``segments``)."""
    recs = source_recommenders(trained)
    if include is not None:
        recs = {name: fn for name, fn in recs.items() if name in include}
    recs.update(extra or {})
    users = eval_users(split, trained.params)
    return evaluate_sources(split, recs, users, k=k, item_category=item_category, segments=segments)
