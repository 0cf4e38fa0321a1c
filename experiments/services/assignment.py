"""Assignment on the hot path: ``assign`` runs no query. Running experiments, variants and surface defaults live
in an in-process snapshot checked against the Redis version token ``exp:version`` at most once a second and
reloaded when it changed (every lifecycle service writes a new token after commit). With Redis down the snapshot
is reloaded from Postgres, still at most once a second."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from experiments import keys, selectors
from experiments.config import InvalidConfig, VariantConfig, merged
from experiments.hashing import bucket, bucket_ranges, choose_variant, in_namespace
from experiments.metrics import ASSIGNMENT_SNAPSHOT_RELOADS
from kernel.versions import VersionedSnapshot, bump_on_commit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    """What serving needs for one request: the variant (if any) and the configuration to serve with.

    ``experiment_key``/``variant`` name the one experiment of the surface the unit is in (running experiments of a
    surface are mutually exclusive). ``forced`` marks a QA override: such requests are served the variant but left
    out of the experiment's results.
    """

    experiment_key: str | None
    variant: str | None
    config: VariantConfig
    forced: bool = False


@dataclass(frozen=True)
class _Arm:
    name: str
    config: VariantConfig  # the surface default with the variant's override applied


@dataclass(frozen=True)
class _CompiledExperiment:
    key: str
    seed: str
    namespace: tuple[str, float, float] | None  # GrowthBook's [id, start, end); None: the whole surface
    ranges: tuple[tuple[float, float], ...]
    arms: tuple[_Arm, ...]
    index: dict[str, int]  # variant name -> arm index


@dataclass(frozen=True)
class _Snapshot:
    by_surface: dict[str, tuple[_CompiledExperiment, ...]]
    defaults: dict[str, VariantConfig]


PLATFORM_DEFAULT = VariantConfig()
_CHECK_SECONDS = 1.0
# A safety net for a lost version write (Redis blip right after a commit): reload at least this often anyway.
_MAX_AGE_SECONDS = 60.0
_clock = time.monotonic


def _load() -> _Snapshot:
    return _compile(selectors.serving_data())


def _reloaded(cause: str) -> None:
    ASSIGNMENT_SNAPSHOT_RELOADS.labels(cause=cause).inc()


# Checked against exp:version at most once a second, reloaded when it moved, every second while Redis cannot be
# read, and at least once a minute. Postgres down before the first load: the platform defaults, retried each second.
_snapshot: VersionedSnapshot[_Snapshot] = VersionedSnapshot(
    key=keys.VERSION,
    load=lambda: _load(),
    fallback=_Snapshot({}, {}),
    check_seconds=_CHECK_SECONDS,
    max_age_seconds=_MAX_AGE_SECONDS,
    name="experiment_snapshot",
    clock=lambda: _clock(),
    on_reload=_reloaded,
)


def assign(*, surface: str, unit_id: str, forced_variant: str | None = None) -> Assignment:
    """The variant and serving configuration of ``unit_id`` (a customer's external id, or ``s:<session id>``) on
    ``surface``: the running experiment whose namespace range holds the unit (GrowthBook ``inNamespace``; an
    experiment without a namespace holds every unit), then GrowthBook hash v2 of ``seed + unit_id`` against its
    variants' bucket ranges. Deterministic and query-free.

    ``forced_variant`` (``"variant"`` or ``"experiment-key:variant"``; the caller checks the admin scope) serves
    that variant when a running experiment on the surface has it, whatever the unit's namespace range. No running
    experiment (or none holding the unit): the surface default.
    """
    snapshot = _current_snapshot()
    default = snapshot.defaults.get(surface, PLATFORM_DEFAULT)
    experiments = snapshot.by_surface.get(surface)
    if not experiments:
        return Assignment(None, None, default)
    forced = _forced_arm(experiments, forced_variant)
    if forced is not None:
        experiment, arm = forced
        return Assignment(experiment.key, arm.name, arm.config, forced=True)
    for experiment in experiments:
        if experiment.namespace is not None and not in_namespace(unit_id, experiment.namespace):
            continue
        index = choose_variant(bucket(experiment.seed, unit_id), experiment.ranges)
        if index < 0:  # outside the experiment's coverage
            return Assignment(None, None, default)
        # Ranges of one namespace are disjoint (a database constraint), so no later experiment could hold the unit.
        return Assignment(experiment.key, experiment.arms[index].name, experiment.arms[index].config)
    return Assignment(None, None, default)


def forced_variant_known(*, surface: str, forced_variant: str) -> bool:
    """Whether ``assign`` serves ``forced_variant`` on ``surface`` (a running experiment of the surface has the
    variant, and the key when one is named), from the snapshot, no query: a QA override naming nothing running is
    the caller's mistake to report, not a silent hashed arm."""
    return _forced_arm(_current_snapshot().by_surface.get(surface, ()), forced_variant) is not None


def surface_known(surface: str) -> bool:
    """Whether a running experiment or a stored surface default names ``surface`` (from the in-process snapshot,
    no query): metrics label only known surfaces by name (recsys.metric_labels.metric_surface)."""
    snapshot = _current_snapshot()
    return surface in snapshot.defaults or surface in snapshot.by_surface


def variant_known(variant: str) -> bool:
    """Whether a running experiment has a variant called ``variant`` (from the snapshot, no query)."""
    snapshot = _current_snapshot()
    return any(variant in experiment.index for group in snapshot.by_surface.values() for experiment in group)


def assignment_cache_clear() -> None:
    """Forget the in-process snapshot (tests; the next ``assign`` reloads)."""
    _snapshot.clear()


def _parse_forced(forced_variant: str | None) -> tuple[str | None, str | None]:
    if not forced_variant:
        return None, None
    key, sep, name = forced_variant.partition(":")
    return (key, name) if sep else (None, forced_variant)


def _forced_arm(
    experiments: Sequence[_CompiledExperiment], forced_variant: str | None
) -> tuple[_CompiledExperiment, _Arm] | None:
    """The experiment and arm ``forced_variant`` (``"variant"`` or ``"experiment-key:variant"``) names among the
    running ``experiments`` of a surface, or None."""
    forced_key, forced_name = _parse_forced(forced_variant)
    if forced_name is None:
        return None
    for experiment in experiments:
        index = experiment.index.get(forced_name, -1) if forced_key in (None, experiment.key) else -1
        if index >= 0:
            return experiment, experiment.arms[index]
    return None


def _current_snapshot() -> _Snapshot:
    return _snapshot.get()


def _compile(data: selectors.ServingData) -> _Snapshot:
    """Precompute what ``assign`` needs. A row that fails validation (written behind the services' back) is logged
    and skipped: serving the default beats failing every request of the surface."""
    defaults: dict[str, VariantConfig] = {}
    for surface, config in data.surface_defaults.items():
        try:
            defaults[surface] = merged(PLATFORM_DEFAULT, config)
        except InvalidConfig:
            logger.exception("surface_default_invalid", extra={"surface": surface})
    by_surface: dict[str, list[_CompiledExperiment]] = defaultdict(list)
    for experiment in data.experiments:
        default = defaults.get(experiment.surface, PLATFORM_DEFAULT)
        try:
            arms = [_Arm(variant.name, merged(default, variant.config)) for variant in experiment.variants]
            ranges = tuple(bucket_ranges([v.weight for v in experiment.variants]))
        except ValueError:  # InvalidConfig is a ValueError, as are bad weights
            logger.exception("experiment_invalid_in_snapshot", extra={"experiment": experiment.key})
            continue
        by_surface[experiment.surface].append(
            _CompiledExperiment(
                experiment.key,
                experiment.seed,
                experiment.namespace,
                ranges,
                tuple(arms),
                {arm.name: i for i, arm in enumerate(arms)},
            )
        )
    ordered = {
        surface: tuple(sorted(items, key=lambda e: e.namespace[1] if e.namespace else -1.0))
        for surface, items in by_surface.items()
    }
    return _Snapshot(ordered, defaults)


def version_bump_on_commit() -> None:
    """Make every process reload its snapshot within a second, once the change is committed. A random token, not
    INCR: the key may be flushed and must never come back to a value a process still holds. Redis down: processes
    pick the change up within _MAX_AGE_SECONDS (or every second while Redis is down)."""
    bump_on_commit(keys.VERSION, unique=True)
