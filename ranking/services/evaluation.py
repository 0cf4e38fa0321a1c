"""Offline evaluation of the protocols (temporal, per user, a test file) on the database's interactions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import VariantConfig
from ranking import evaluation, selectors, tuning
from ranking.dataset import InteractionLog, ItemTable
from ranking.pipeline import booster_from_array, evaluate_with_pipeline
from ranking.pipeline.offline import config_label, served_recommender
from ranking.selectors import dataset_load
from ranking.services.errors import TrainingError
from ranking.training import SOURCE_NAMES, StageTimer, TrainParams, train_sources


def model_evaluate(
    *,
    protocol: str,
    params: TrainParams | None = None,
    k: int = 10,
    holdout_days: float | None = None,
    fraction: float | None = None,
    seed: int = 42,
    test_file: str | Path | None = None,
    include: Sequence[str] = SOURCE_NAMES,
    timer: StageTimer | None = None,
    pipeline: bool = True,
    surface: str = "home",
    surface_config: VariantConfig | None = None,
) -> dict[str, Any]:
    """Run an offline protocol on the database's interactions: ``temporal`` (``holdout_days``), ``per_user``
    (``fraction``, ``seed``) or ``test_file`` (train on everything, test on a CSV in the generic import format).
    Every source is trained on the protocol's training part with the same code the product trains with.

    The "served" row (the version as it serves) re-ranks with ``surface_config``, what ``surface`` serves outside
    experiments (``experiments.services.surface_default_get``; the platform defaults when None); ``result["served"]``
    says which row and config that was. The pipeline rows keep the platform defaults their names state."""
    params = params or TrainParams()
    served_config = surface_config or VariantConfig()
    timer = timer or StageTimer(enabled=False)
    with timer.stage("load"):
        log, items = dataset_load()
    if len(log) == 0:
        raise TrainingError("there are no interactions to evaluate on")
    with timer.stage("split"):
        if protocol == "temporal":
            split = evaluation.split_temporal(log, holdout_days=float(holdout_days or 30))
        elif protocol == "per_user":
            split = evaluation.split_per_user(log, fraction=float(fraction or 0.25), seed=seed)
        elif protocol == "test_file":
            if test_file is None:
                raise TrainingError("the test_file protocol needs a CSV file")
            split = _split_from_file(log, items, Path(test_file))
        else:
            raise TrainingError(f"unknown protocol {protocol!r}")
    if split.n_test_users == 0:
        raise TrainingError("the split has no test user with a new relevant item; nothing to evaluate")
    if len(split.train) == 0:
        # Every event falls in the held-out window (a log of a few days, or every event at one time): sources
        # trained on nothing would print a table of zeros (found by a seventh tester, 6 December).
        raise TrainingError(
            "the split leaves no training events: every event is in the held-out part (the temporal split holds out "
            "the last --holdout-days of the log; with a log this short use --per-user-fraction 0.25)"
        )
    with timer.stage("train"):
        trained = train_sources(
            split.train, items, params, reference_ts=split.reference_ts, include=include, content_neighbours=False
        )
    with timer.stage("evaluate"):
        if pipeline:
            # Every test user; a ranker fitted on part of them is also reported on the others (ranker_unseen).
            result = evaluate_with_pipeline(split, trained, items, k=k, seed=seed).result
            # The row to compare with the API: the version's serve mode, with its shipped ranker when it has one.
            shipped = _active_ranker() if protocol == "test_file" and params.serve == tuning.PIPELINE else None
            served_row = None
            if params.serve.startswith(tuning.SOURCE_PREFIX) or shipped is not None:
                served_row = (
                    f"served ({params.serve}{', shipped ranker' if shipped is not None else ''}, {surface} default, "
                    f"{config_label(served_config)})"
                )
                recommender = served_recommender(
                    trained, split, items, ranker=shipped, serve=params.serve, config=served_config
                )
                served = evaluation.evaluate_sources(
                    split, {served_row: recommender}, evaluation.eval_users(split, params), k=k,
                    item_category=items.category,
                )  # fmt: skip
                for segment, entry in served["segments"].items():
                    if segment in result["segments"]:
                        result["segments"][segment]["sources"].update(entry["sources"])
            result["served"] = {"row": served_row, "surface": surface, "config": served_config.to_dict()}
        else:
            result = evaluation.run_protocol(split, trained, k=k, item_category=items.category, include=include)
    result["params"] = params.to_dict()
    result["timings"] = dict(timer.timings)
    result["sizes"] = trained.info["sizes"]
    return result


def _active_ranker() -> Any:
    """The active version's shipped LambdaMART ranker (a LightGBM booster), or None."""
    row = selectors.active_version()
    location = selectors.version_location(version_id=row.id) if row is not None else None
    if location is None or not (location.path / "ranker_model.npy").exists():
        return None
    return booster_from_array(np.load(location.path / "ranker_model.npy"))


def active_version_params() -> TrainParams | None:
    """The parameters the active version was trained with (its tuned values and serve mode), or None."""
    row = selectors.active_version()
    return TrainParams.from_dict(row.parameters) if row is not None and row.parameters else None


def _split_from_file(log: InteractionLog, items: ItemTable, path: Path) -> evaluation.Split:
    """Test events from a CSV in the generic import format; items unknown to the catalog are dropped and
    counted, customers unknown to the database are new users (no history)."""
    from events.importers import GENERIC_OPTIONAL, GENERIC_REQUIRED, generic_adapter
    from events.parsing import InvalidEvent, utcnow
    from kernel.csvimport import CsvSource, ErrorLog, ImportAborted, ImportSummary

    customers: list[str] = []
    item_keys: list[str] = []
    summary = ImportSummary(path=str(path))
    try:
        with CsvSource(path, required=GENERIC_REQUIRED, optional=GENERIC_OPTIONAL) as source:
            adapt = generic_adapter(source.index, utcnow())
            errors = ErrorLog(summary, None)
            for line, cells in source.rows(errors):
                try:
                    _, customer, _, item, _, _, _ = adapt(cells)
                except InvalidEvent as exc:
                    errors.add(line, str(exc))
                    continue
                customers.append(customer)
                item_keys.append(item)
    except ImportAborted as exc:
        raise TrainingError(str(exc)) from exc
    item_pk = selectors.item_pks_by_external_id(item_keys)
    customer_pk = selectors.customer_pks_by_external_id(customers)
    # Customers the database does not know get distinct negative keys: new users without history.
    unknown = {ext: -(n + 1) for n, ext in enumerate(sorted(set(customers) - set(customer_pk)))}
    keys = np.array([customer_pk.get(c, unknown.get(c, -1)) for c in customers], dtype=np.int64)
    idx = items.index_of(np.array([item_pk.get(i, -1) for i in item_keys], dtype=np.int64))
    known_item = idx >= 0
    info = {
        "test_file": str(path),
        "rows": summary.read if summary.read else len(customers),
        "rejected_rows": summary.rejected,
        "unknown_items": int((~known_item).sum()),
        "unknown_customers": len(unknown),
    }
    return evaluation.split_external(log, test_user_keys=keys[known_item], test_items=idx[known_item], info=info)
