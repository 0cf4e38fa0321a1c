"""The registry: activating a version (and publishing the Redis marker every loader reads), the promotion rule
and the promotion of a candidate."""

from __future__ import annotations

import logging

import redis
from django.db import connection, transaction
from django.utils import timezone

from kernel import redis_client
from ranking import artifacts, selectors
from ranking.models import ModelVersion

# The logger keeps the name it had before ranking/services.py became a package (log filters, dashboards).
logger = logging.getLogger("ranking.services")


def _publish_marker(version_id: int, checksum: str) -> None:
    """Tell every serving process which version to serve. Best effort: if Redis is down, loaders fall back to the
    database (and check it once a minute regardless), so a lost publish delays the swap, never breaks serving."""
    try:
        pipe = redis_client.atomic(artifacts.ACTIVE_KEY)  # the marker's keys share the tag {model}
        pipe.set(artifacts.ACTIVE_KEY, version_id)
        pipe.set(artifacts.ACTIVE_CHECKSUM_KEY, checksum)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("model_marker_publish_failed", extra={"version_id": version_id, "error": str(exc)})


@transaction.atomic
def model_version_activate(
    *, version_id: int, decision: str = ModelVersion.Decision.MANUAL, note: str = ""
) -> ModelVersion:
    """Make ``version_id`` the one active version: retire the current one and activate this one in a single
    transaction (rows locked with SELECT ... FOR UPDATE), then publish the Redis marker after commit.

    Activations take turns (a transaction-level advisory lock, taken first): row locks alone let a second one,
    waiting on the active row, find it retired once the first committed and save a second active row, which the
    partial unique index refused with an IntegrityError (an admin 500; found by a sixth tester, 5 December). The
    artifacts are verified first: activating a version whose files are gone would only make every loader refuse it.
    """
    _take_activation_turn()
    version = ModelVersion.objects.select_for_update().get(id=version_id)
    location = selectors.version_location(version_id=version.id)
    if version.status == ModelVersion.Status.FAILED or not version.checksum or location is None:
        raise ValueError(f"version {version.name} has no usable artifacts (status {version.status})")
    try:
        artifacts.version_verify(location.path, location.checksum)
    except artifacts.ArtifactError as exc:
        raise ValueError(f"version {version.name} cannot be activated: {exc}") from exc
    current = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
    if current is not None and current.id != version.id:
        current.status = ModelVersion.Status.RETIRED
        current.save(update_fields=["status"])
    version.status = ModelVersion.Status.ACTIVE
    version.activated_at = timezone.now()
    version.decision = decision
    if note:
        version.notes = f"{version.notes}\n{note}".strip()
    version.save(update_fields=["status", "activated_at", "decision", "notes"])
    version_id, checksum = version.id, version.checksum
    transaction.on_commit(lambda: _publish_marker(version_id, checksum))
    logger.info(
        "model_version_activated",
        extra={"version_id": version.id, "retired_version_id": current.id if current else None, "decision": decision},
    )
    return version


def _take_activation_turn() -> None:
    """The transaction-level advisory lock activations (and promotions) take turns on, always before any model
    version row: taken again later in the same transaction it does not block."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["ranking:model-activation"])


def promotion_decision(
    *, candidate_ndcg: float | None, active_ndcg: float | None, has_active: bool, tolerance: float, force: bool
) -> str:
    """The promotion rule: a candidate is promoted unless its validation NDCG is worse than the active version's
    by more than ``tolerance`` (absolute); ``force`` overrides, and the first version is always activated."""
    if force:
        return ModelVersion.Decision.FORCED
    if not has_active:
        return ModelVersion.Decision.FIRST
    if candidate_ndcg is None:
        return ModelVersion.Decision.REJECTED
    if active_ndcg is None or candidate_ndcg >= active_ndcg - tolerance:
        return ModelVersion.Decision.PROMOTED
    return ModelVersion.Decision.REJECTED


def model_version_promote(
    *, version_id: int, force: bool = False, tolerance: float = 0.005, activate: bool = True
) -> ModelVersion:
    """Apply :func:`promotion_decision` to a candidate, record the decision and both figures on it, and activate
    it when the decision says so (and ``activate``)."""
    with transaction.atomic():
        # The activation's turn before the candidate's row, as model_version_activate takes them: the other order
        # deadlocked with an admin activating the same candidate meanwhile.
        _take_activation_turn()
        version = ModelVersion.objects.select_for_update().get(id=version_id)
        if version.status == ModelVersion.Status.ACTIVE:  # activated meanwhile (the admin): its decision stands
            return version
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exclude(id=version.id).first()
        candidate_ndcg = version.validation_ndcg
        active_ndcg = active.validation_ndcg if active else None
        decision = promotion_decision(
            candidate_ndcg=candidate_ndcg,
            active_ndcg=active_ndcg,
            has_active=active is not None,
            tolerance=tolerance,
            force=force,
        )
        source = version.metrics.get("validation_source", "?")
        note = (
            f"{decision}: validation ndcg ({source}) {_fmt(candidate_ndcg)} vs active "
            f"{active.name if active else '-'} {_fmt(active_ndcg)}, tolerance {tolerance}"
        )
        if candidate_ndcg is None and decision == ModelVersion.Decision.REJECTED:
            # Nothing to compare: training held out no validation (too few users or days in its window).
            note += "; the candidate has no validation figure to compare (train on a longer window, or --force)"
        version.metrics = {
            **version.metrics,
            "promotion": {
                "decision": decision,
                "candidate_ndcg": candidate_ndcg,
                "active_ndcg": active_ndcg,
                "active_version_id": active.id if active else None,
                "tolerance": tolerance,
            },
        }
        version.decision = decision
        version.notes = f"{version.notes}\n{note}".strip()
        version.save(update_fields=["metrics", "decision", "notes"])
        if activate and decision != ModelVersion.Decision.REJECTED:
            version = model_version_activate(version_id=version.id, decision=decision)
    return version


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
