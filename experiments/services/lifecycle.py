"""The experiment lifecycle: create, start, stop, conclude, and the per-surface defaults."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from experiments import selectors
from experiments.bandit import MIN_SHARE
from experiments.config import InvalidConfig, VariantConfig, merged
from experiments.models import BanditWeightLog, Experiment, SurfaceDefault, Variant
from experiments.services.assignment import PLATFORM_DEFAULT, version_bump_on_commit
from experiments.services.errors import ExperimentError, ExperimentNotFound
from experiments.validation import (
    VariantSpec,
    effect_errors,
    guardrail_errors,
    namespace_errors,
    namespaces_overlap,
    variant_set_errors,
)

logger = logging.getLogger(__name__)


def experiment_create(
    *,
    key: str,
    name: str,
    surface: str,
    variants: Sequence[VariantSpec],
    namespace: tuple[str, float, float] | None = None,
    mode: str = Experiment.Mode.AB,
    primary_metric: str = Experiment.Metric.CONVERSION_RATE,
    guardrails: dict[str, float] | None = None,
    minimum_detectable_effect: float = 0.05,
    attribution_window_hours: int = 24,
    hash_seed: str = "",
    hypothesis: str = "",
    created_by_id: int | None = None,
) -> Experiment:
    """A draft experiment with its variants, validated as the admin validates it. Starting is a separate step.

    ``namespace`` is GrowthBook's ``(id, start, end)``: experiments of one surface in disjoint ranges of one namespace
    may run at the same time and never share a unit; without one the experiment takes the whole surface.
    """
    errors = (
        variant_set_errors(variants) + guardrail_errors(guardrails or {}) + namespace_errors(namespace)
        + effect_errors(minimum_detectable_effect)
    )  # fmt: skip
    if errors:
        raise ExperimentError(" ".join(errors))
    with transaction.atomic():
        experiment = Experiment.objects.create(
            key=key,
            name=name,
            surface=surface,
            namespace=namespace[0] if namespace else None,
            namespace_start=namespace[1] if namespace else None,
            namespace_end=namespace[2] if namespace else None,
            mode=mode,
            primary_metric=primary_metric,
            guardrails=dict(guardrails or {}),
            minimum_detectable_effect=minimum_detectable_effect,
            attribution_window_hours=attribution_window_hours,
            hash_seed=hash_seed or key,
            hypothesis=hypothesis,
            created_by_id=created_by_id,
        )
        Variant.objects.bulk_create(
            Variant(experiment=experiment, name=v.name, weight=v.weight, is_control=v.is_control, config=dict(v.config))
            for v in sorted(variants, key=lambda v: not v.is_control)
        )
    return experiment


@transaction.atomic
def experiment_start(*, experiment_id: int, user_id: int) -> Experiment:
    """Start a draft: validate its variants (weights sum to 1, one control, valid configs) under a row lock, refuse
    it while a running experiment on the same surface could share a unit with it (anything but disjoint ranges of
    one namespace), and publish it to every web process.

    The database re-checks (deferred trigger on weights and control; exclusion constraints on the surface's running
    namespaces), so a concurrent change between the check and the commit still cannot produce an invalid running
    experiment.
    """
    experiment = experiment_locked(experiment_id)
    if experiment.status != Experiment.Status.DRAFT:
        raise ExperimentError(f"Only a draft can be started; {experiment.key} is {experiment.status}.")
    variants = list(Variant.objects.select_for_update().filter(experiment=experiment).order_by("-is_control", "pk"))
    specs = [VariantSpec(v.name, v.weight, v.is_control, v.config) for v in variants]
    errors = (
        variant_set_errors(specs)
        + guardrail_errors(experiment.guardrails)
        + namespace_errors(
            None
            if experiment.namespace is None
            else (experiment.namespace, experiment.namespace_start, experiment.namespace_end)
        )
    )
    if experiment.mode == Experiment.Mode.BANDIT and any(v.weight < MIN_SHARE for v in variants):
        # An arm without traffic is never measured, and the reweighting waits for every arm: it would never learn.
        errors.append(f"Each arm of a bandit starts with at least {MIN_SHARE:.0%} of the traffic.")
    if errors:
        raise ExperimentError(" ".join(errors))
    for running in Experiment.objects.filter(surface=experiment.surface, status=Experiment.Status.RUNNING):
        if namespaces_overlap(running.namespace_spec, experiment.namespace_spec):
            raise ExperimentError(
                f"{running.key} is already running on {experiment.surface} and could share customers with "
                f"{experiment.key}; stop it first, or give both the same namespace with disjoint ranges."
            )

    experiment.status = Experiment.Status.RUNNING
    experiment.start_at = timezone.now()
    experiment.end_at = None
    experiment.hash_seed = experiment.hash_seed or experiment.key
    try:
        with transaction.atomic():
            experiment.save(update_fields=["status", "start_at", "end_at", "hash_seed", "updated_at"])
    except IntegrityError as exc:  # a concurrent start won the race for the surface's namespace range
        raise ExperimentError(
            f"Another experiment that could share customers with {experiment.key} started on {experiment.surface} "
            "at the same time."
        ) from exc
    if experiment.mode == Experiment.Mode.BANDIT:
        BanditWeightLog.objects.bulk_create(
            BanditWeightLog(experiment=experiment, variant=v, weight=v.weight, at=experiment.start_at) for v in variants
        )
    split = ", ".join(f"{v.name} {v.weight:.0%}" for v in variants)
    _audit(user_id=user_id, obj=experiment, message=f"Started on {experiment.surface} ({split}).")
    version_bump_on_commit()
    logger.info("experiment_started", extra={"experiment": experiment.key, "user_id": user_id})
    return experiment


@transaction.atomic
def experiment_stop(*, experiment_id: int, user_id: int) -> Experiment:
    """Stop a running experiment: its surface serves the default again. Results stay readable."""
    experiment = experiment_locked(experiment_id)
    if experiment.status != Experiment.Status.RUNNING:
        raise ExperimentError(f"Only a running experiment can be stopped; {experiment.key} is {experiment.status}.")
    experiment.status = Experiment.Status.STOPPED
    experiment.end_at = timezone.now()
    experiment.save(update_fields=["status", "end_at", "updated_at"])
    _audit(user_id=user_id, obj=experiment, message="Stopped.")
    version_bump_on_commit()
    logger.info("experiment_stopped", extra={"experiment": experiment.key, "user_id": user_id})
    return experiment


@transaction.atomic
def experiment_conclude(*, experiment_id: int, winner: str | None, user_id: int) -> Experiment:
    """Close a running or stopped experiment. With a ``winner`` (a variant name), its settings become the surface's
    default (``SurfaceDefault``) in the same transaction; without one the default stays (a roll-back)."""
    experiment = experiment_locked(experiment_id)
    if experiment.status not in (Experiment.Status.RUNNING, Experiment.Status.STOPPED):
        raise ExperimentError(
            f"Only a running or stopped experiment can be concluded; {experiment.key} is {experiment.status}."
        )
    winner_variant = None
    if winner is not None:
        winner_variant = Variant.objects.filter(experiment=experiment, name=winner).first()
        if winner_variant is None:
            raise ExperimentError(f"{experiment.key} has no variant named {winner!r}.")
    experiment.status = Experiment.Status.CONCLUDED
    experiment.end_at = experiment.end_at or timezone.now()
    experiment.winner = winner_variant
    experiment.save(update_fields=["status", "end_at", "winner", "updated_at"])
    if winner_variant is None:
        _audit(user_id=user_id, obj=experiment, message="Concluded without a winner; the surface default is unchanged.")
    else:
        default, _ = SurfaceDefault.objects.select_for_update().get_or_create(surface=experiment.surface)
        default.config = {**default.config, **winner_variant.config}
        try:
            merged(PLATFORM_DEFAULT, default.config)
        except InvalidConfig as exc:
            raise ExperimentError(f"The winner's settings are not valid as a default: {exc}") from exc
        default.save(update_fields=["config", "updated_at"])
        _audit(
            user_id=user_id,
            obj=experiment,
            message=f"Concluded with winner {winner_variant.name}; its settings are now the {experiment.surface} "
            "default.",
        )
        _audit(
            user_id=user_id,
            obj=default,
            message=f"Set from the winner {winner_variant.name} of {experiment.key}: {json.dumps(default.config)}",
        )
    version_bump_on_commit()
    logger.info("experiment_concluded", extra={"experiment": experiment.key, "winner": winner, "user_id": user_id})
    return experiment


@transaction.atomic
def surface_default_set(*, surface: str, config: dict[str, Any], user_id: int | None = None) -> SurfaceDefault:
    """Set what ``surface`` serves outside experiments (the settings that differ from the platform defaults)."""
    try:
        merged(PLATFORM_DEFAULT, config)
    except InvalidConfig as exc:
        raise ExperimentError(f"Invalid configuration: {exc}") from exc
    default, _ = SurfaceDefault.objects.update_or_create(surface=surface, defaults={"config": dict(config)})
    if user_id is not None:
        _audit(user_id=user_id, obj=default, message=f"Set to {json.dumps(default.config)}.")
    version_bump_on_commit()
    return default


def surface_default_get(*, surface: str) -> tuple[VariantConfig, dict[str, Any]]:
    """What ``surface`` serves outside experiments: its stored default over the platform defaults, and the stored
    settings themselves (``{}`` without a ``SurfaceDefault`` row: the platform defaults). Read from Postgres, not
    from the serving snapshot (for offline tools: ``manage.py evaluate --surface``). Raises ExperimentError when the
    stored settings are no valid configuration (serving then logs them and serves the platform defaults)."""
    stored = selectors.surface_default_stored(surface)
    if stored is None:
        return PLATFORM_DEFAULT, {}
    if not isinstance(stored, dict):
        raise ExperimentError(f"The stored default of {surface} is no JSON object of settings: {stored!r:.200}.")
    try:
        return merged(PLATFORM_DEFAULT, stored), dict(stored)
    except InvalidConfig as exc:
        raise ExperimentError(f"The stored default of {surface} is invalid: {exc}") from exc


def experiment_locked(experiment_id: int) -> Experiment:
    experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
    if experiment is None:
        raise ExperimentNotFound(f"No experiment with id {experiment_id}.")
    return experiment


def _audit(*, user_id: int, obj: Model, message: str) -> None:
    """The admin's history ("History" on the object's page) records who did what, whatever the entry point."""
    LogEntry.objects.log_actions(
        user_id=user_id, queryset=[obj], action_flag=CHANGE, change_message=message, single_object=True
    )
