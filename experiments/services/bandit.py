"""The bandit: re-weighting a running bandit experiment's variants from their outcomes."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from experiments import selectors, stats
from experiments.bandit import MIN_SHARE, floored_shares
from experiments.models import BanditWeightLog, Experiment, Variant
from experiments.results import VariantTotals
from experiments.services.assignment import version_bump_on_commit
from experiments.services.lifecycle import experiment_locked
from experiments.validation import MIN_WEIGHT

logger = logging.getLogger(__name__)


BANDIT_MIN_SHARE = MIN_SHARE


def bandit_reweight(*, experiment_id: int, min_share: float = BANDIT_MIN_SHARE) -> tuple[float, ...] | None:
    """Thompson sampling by probability matching: each arm's new weight is P(arm is best) on the primary metric
    (Beta(1, 1) posteriors of conversions / exposures; clicked impressions / impressions for CTR; conversions for
    revenue), floored at ``min_share`` and renormalised, written atomically and logged in ``BanditWeightLog``.

    Counts only the lists served at least the attribution window ago (and what they led to): outcomes that have not
    had time to happen would read as failures, and mostly in the arm the previous reweight favoured.

    Returns the new weights in variant order, or None when the experiment is not a running bandit or an arm has no
    exposures whose window has closed yet (nothing to learn from: the weights stay).
    """
    if not min_share >= MIN_WEIGHT:  # every arm's new weight is at least min_share: never below a variant's least
        raise ValueError(f"min_share must be at least {MIN_WEIGHT} (a variant's least weight), got {min_share}")
    experiment = Experiment.objects.filter(
        pk=experiment_id, status=Experiment.Status.RUNNING, mode=Experiment.Mode.BANDIT
    ).first()
    if experiment is None:
        return None
    # Aggregate before taking locks: the query can take a while and must not block a merchandiser's stop. Only lists
    # whose attribution window has closed: a list shown minutes ago has not had time to convert, and the arm the last
    # reweight favoured has the most of them, so counting them would push its traffic away again for no reason.
    window = experiment.attribution_window_hours
    totals = selectors.variant_totals(
        experiment_id=experiment.pk, window_hours=window, served_before=timezone.now() - dt.timedelta(hours=window)
    )
    with transaction.atomic():
        experiment = experiment_locked(experiment_id)
        if experiment.status != Experiment.Status.RUNNING or experiment.mode != Experiment.Mode.BANDIT:
            return None
        variants = list(Variant.objects.select_for_update().filter(experiment=experiment).order_by("-is_control", "pk"))
        arms = [_bandit_arm(totals.get(v.pk), experiment.primary_metric) for v in variants]
        if any(n == 0 for n, _ in arms):
            logger.info("bandit_reweight_waiting", extra={"experiment": experiment.key, "arms": arms})
            return None
        shares = floored_shares(stats.probability_best(arms), min_share)
        now = timezone.now()
        for variant, share in zip(variants, shares, strict=True):
            variant.weight = share
        Variant.objects.bulk_update(variants, ["weight"])
        BanditWeightLog.objects.bulk_create(
            BanditWeightLog(experiment=experiment, variant=v, weight=v.weight, at=now) for v in variants
        )
        version_bump_on_commit()
    logger.info(
        "bandit_reweighted",
        extra={"experiment": experiment.key, "weights": {v.name: round(v.weight, 4) for v in variants}},
    )
    return tuple(shares)


def _bandit_arm(totals: VariantTotals | None, metric: str) -> tuple[int, int]:
    if totals is None:
        return 0, 0
    if metric == Experiment.Metric.CTR:
        return totals.impressions, totals.clicks
    if metric == Experiment.Metric.ADD_TO_CART_RATE:
        return totals.exposures, totals.carted_units
    return totals.exposures, totals.converted_units
