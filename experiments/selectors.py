"""Read queries of the experiments app: the serving snapshot and the results aggregates, as plain data.

The aggregates are computed in Postgres (GROUP BY over the experiment's impressions joined to the interactions);
Python only receives one row per variant (or per variant and day). The one exception is CUPED, which needs the
per-customer values as arrays: they are fetched in one query straight into numpy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection

from catalog.models import Item
from events.models import Interaction
from events.parsing import VALUE_MAX
from experiments.config import InvalidConfig, VariantConfig, merged
from experiments.models import BanditWeightLog, Experiment, SurfaceDefault, Variant
from experiments.results import CupedData, DailyTotals, ExperimentSpec, VariantInfo, VariantTotals, WeightPoint

CLICK = int(Interaction.Type.CLICK)
ADD_TO_CART = int(Interaction.Type.ADD_TO_CART)
PURCHASE = int(Interaction.Type.PURCHASE)
# An event's value as the results sum it: within the range the events API accepts (±VALUE_MAX), NaN as none. Rows
# stored before that rule (1e308, NaN) would otherwise overflow Postgres' float8 sums or make every figure NaN.
# (NULL first: least/greatest skip a NULL argument, so a purchase sent without a value would count -VALUE_MAX.)
_VALUE = (
    f"CASE WHEN x.value IS NULL OR x.value = 'NaN' THEN NULL "
    f"ELSE least(greatest(x.value, {-VALUE_MAX}), {VALUE_MAX}) END"
)

# Days of purchases before the start that form CUPED's covariate.
CUPED_PRE_PERIOD_DAYS = 30


# --- serving snapshot -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningVariant:
    id: int
    name: str
    weight: float
    is_control: bool
    config: dict[str, Any]


@dataclass(frozen=True)
class RunningExperiment:
    id: int
    key: str
    seed: str
    surface: str
    namespace: tuple[str, float, float] | None  # GrowthBook's [id, start, end)
    mode: str
    variants: tuple[RunningVariant, ...]  # in hash-range order: control first, then creation order


@dataclass(frozen=True)
class ServingData:
    experiments: tuple[RunningExperiment, ...]
    surface_defaults: dict[str, dict[str, Any]]


def serving_data() -> ServingData:
    """Everything ``assign`` needs, in two queries: the running experiments' variants and the surface defaults."""
    rows = (
        Variant.objects.filter(experiment__status=Experiment.Status.RUNNING)
        .select_related("experiment")
        .order_by("experiment_id", "-is_control", "pk")
    )
    experiments: dict[int, tuple[Experiment, list[RunningVariant]]] = {}
    for variant in rows:
        entry = experiments.setdefault(variant.experiment_id, (variant.experiment, []))
        entry[1].append(
            RunningVariant(variant.pk, variant.name, variant.weight, variant.is_control, dict(variant.config))
        )
    running = tuple(
        RunningExperiment(exp.pk, exp.key, exp.seed, exp.surface, exp.namespace_spec, exp.mode, tuple(variants))
        for exp, variants in experiments.values()
    )
    defaults = {row.surface: dict(row.config) for row in SurfaceDefault.objects.all()}
    return ServingData(running, defaults)


def surface_default_stored(surface: str) -> Any:
    """The settings stored as ``surface``'s default (parsed JSON, as stored), None without a ``SurfaceDefault`` row."""
    return SurfaceDefault.objects.filter(surface=surface).values_list("config", flat=True).first()


def running_bandit_ids() -> list[int]:
    return list(
        Experiment.objects.filter(status=Experiment.Status.RUNNING, mode=Experiment.Mode.BANDIT).values_list(
            "pk", flat=True
        )
    )


def pinned_model_versions() -> set[int]:
    """The model versions that variants of draft (about to start), running or stopped (restartable) experiments,
    and surface defaults, name in their config (``model_version``): versions a serving process may be asked to
    load. Concluded experiments serve nothing any more."""
    configs = list(
        Variant.objects.exclude(experiment__status=Experiment.Status.CONCLUDED).values_list("config", flat=True)
    )
    configs += list(SurfaceDefault.objects.values_list("config", flat=True))
    found = set()
    for config in configs:
        try:
            version = VariantConfig.from_dict(config).model_version
        except InvalidConfig:  # a config stored before a rule: serving skips it too
            continue
        if version is not None:
            found.add(version)
    return found


# --- results --------------------------------------------------------------------------------------------------


def experiment_spec(*, key: str) -> ExperimentSpec | None:
    experiment = Experiment.objects.filter(key=key).select_related("winner").first()
    if experiment is None:
        return None
    default, default_changed_at = SurfaceDefault.objects.filter(surface=experiment.surface).values_list(
        "config", "updated_at"
    ).first() or (None, None)
    variants = tuple(
        VariantInfo(v.pk, v.name, v.weight, v.is_control, _named_version(default, v.config))
        for v in Variant.objects.filter(experiment=experiment).order_by("-is_control", "pk")
    )
    ran = (
        experiment.start_at is not None
        and default_changed_at is not None
        and experiment.start_at < default_changed_at
        and (experiment.end_at is None or default_changed_at < experiment.end_at)
    )
    return ExperimentSpec(
        id=experiment.pk,
        key=experiment.key,
        name=experiment.name,
        surface=experiment.surface,
        namespace=experiment.namespace_spec,
        status=experiment.status,
        mode=experiment.mode,
        primary_metric=experiment.primary_metric,
        minimum_detectable_effect=experiment.minimum_detectable_effect,
        attribution_window_hours=experiment.attribution_window_hours,
        start_at=experiment.start_at,
        end_at=experiment.end_at,
        guardrails=dict(experiment.guardrails or {}),
        winner=experiment.winner.name if experiment.winner else None,
        variants=variants,
        surface_default_changed_at=default_changed_at if ran else None,
    )


def _named_version(default: dict[str, Any] | None, override: dict[str, Any]) -> int | None:
    """The model version a variant's lists come from by its config (its own setting, else the surface default's);
    None: the active version (or a config serving skips, which serves the platform default)."""
    try:
        return merged(merged(VariantConfig(), default), override).model_version
    except InvalidConfig:
        return None


_SERVED_VERSIONS_SQL = """
SELECT variant_id, model_version, count(*)
  FROM experiments_impression
 WHERE experiment_id = %(experiment_id)s AND variant_id IS NOT NULL
 GROUP BY variant_id, model_version
"""


def served_versions(*, experiment_id: int) -> dict[int, dict[int | None, int]]:
    """Per variant, how many of its lists each model version served (as each impression recorded it)."""
    with connection.cursor() as cursor:
        cursor.execute(_SERVED_VERSIONS_SQL, {"experiment_id": experiment_id})
        rows = cursor.fetchall()
    out: dict[int, dict[int | None, int]] = {}
    for variant_id, version, lists in rows:
        out.setdefault(variant_id, {})[version] = int(lists)
    return out


# The experiment's impressions, the interactions attributed to them, and per-unit outcomes. A unit is what the
# assignment hashed (ranking.serving.experiment_unit): the customer ("c:<pk>"); else, for a list assigned by a
# customer id but stored without the customer (no row yet at the flush), the pseudonymous unit kept of that id
# ("u:<customer_unit>", experiments.units), which is the customer's own once one of their lists in the experiment
# carries both; else the anonymous session ("s:<session_id>"); else the list itself ("r:<request_id>"). Rows stored
# before customer_unit was recorded have none and count as they always did.
# Attribution (docs/experiments.md):
#   (a) add-to-carts and purchases carrying the request id of one of the experiment's impressions;
#   (b) purchases of an item of a shown list by the same customer (or anonymous session) within the attribution
#       window after the list was served.
# UNION (not UNION ALL) counts an interaction once per unit and variant even when both rules match it.
# Postgres evaluates only the CTEs a statement references, so every query below shares this text.
_CTES = f"""
unlinked AS (
    -- Units of lists stored without their customer (few: the partial index impression_customer_unit).
    SELECT DISTINCT i.customer_unit
      FROM experiments_impression i
     WHERE i.experiment_id = %(experiment_id)s AND i.variant_id IS NOT NULL AND i.served_at < %(served_before)s
       AND i.customer_id IS NULL AND i.customer_unit IS NOT NULL
),
unit_customer AS MATERIALIZED (
    -- ... and the customer of each, where a later list of theirs carries both (none unlinked: no scan), as one jsonb
    -- object that imp reads once and looks up by key only for those lists: a join here slowed every results query by
    -- about a fifth, a correlated lookup grew with unlinked lists times links (on 400,000 lists: a tenth slower with
    -- none unlinked, twice as slow with one in seven unlinked, all of them linked).
    SELECT coalesce(jsonb_object_agg(linked.customer_unit::text, linked.customer_id), '{{}}') AS customers
      FROM (SELECT i.customer_unit, min(i.customer_id) AS customer_id
              FROM experiments_impression i
             WHERE i.experiment_id = %(experiment_id)s AND i.variant_id IS NOT NULL
               AND i.served_at < %(served_before)s
               AND i.customer_id IS NOT NULL AND i.customer_unit IN (SELECT customer_unit FROM unlinked)
             GROUP BY i.customer_unit) linked
),
imp AS (
    SELECT s.id, s.request_id, s.variant_id, s.customer_id, s.session_id, s.served_at, s.item_pks,
           CASE WHEN s.customer_id IS NOT NULL THEN 'c:' || s.customer_id::text
                WHEN s.customer_unit IS NOT NULL THEN 'u:' || s.customer_unit::text
                WHEN s.session_id <> '' THEN 's:' || s.session_id
                ELSE 'r:' || s.request_id END AS unit
      FROM (SELECT i.id, i.request_id, i.variant_id, i.session_id, i.served_at, i.item_pks, i.customer_unit,
                   coalesce(i.customer_id, CASE WHEN i.customer_unit IS NOT NULL THEN
                       ((SELECT customers FROM unit_customer) ->> i.customer_unit::text)::bigint END
                   ) AS customer_id
              FROM experiments_impression i
             WHERE i.experiment_id = %(experiment_id)s AND i.variant_id IS NOT NULL
               AND i.served_at < %(served_before)s) s
),
attributed AS (
    SELECT imp.variant_id, imp.unit, x.id AS interaction_id, x.type, {_VALUE} AS value
      FROM imp JOIN events_interaction x ON x.request_id = imp.request_id
     WHERE imp.request_id <> '' AND x.request_id <> '' AND x.type IN ({ADD_TO_CART}, {PURCHASE})
    UNION
    SELECT imp.variant_id, imp.unit, x.id, x.type, {_VALUE}
      FROM imp JOIN events_interaction x ON x.customer_id = imp.customer_id
     WHERE x.type = {PURCHASE} AND x.item_id = ANY (imp.item_pks)
       AND x.occurred_at >= imp.served_at
       AND x.occurred_at < imp.served_at + %(window_hours)s * interval '1 hour'
    UNION
    SELECT imp.variant_id, imp.unit, x.id, x.type, {_VALUE}
      FROM imp JOIN events_interaction x ON x.session_id = imp.session_id
     WHERE imp.customer_id IS NULL AND imp.session_id <> '' AND x.customer_id IS NULL
       AND x.type = {PURCHASE} AND x.item_id = ANY (imp.item_pks)
       AND x.occurred_at >= imp.served_at
       AND x.occurred_at < imp.served_at + %(window_hours)s * interval '1 hour'
),
unit_outcomes AS (
    SELECT variant_id, unit,
           bool_or(type = {ADD_TO_CART}) AS carted,
           bool_or(type = {PURCHASE}) AS converted,
           coalesce(sum(value) FILTER (WHERE type = {PURCHASE}), 0) AS revenue
      FROM attributed
     GROUP BY variant_id, unit
),
units AS (
    SELECT variant_id, unit, min(customer_id) AS customer_id, count(*) AS impressions, min(served_at) AS first_at
      FROM imp
     GROUP BY variant_id, unit
),
clicked AS (
    SELECT imp.variant_id, imp.unit, imp.served_at
      FROM imp
     WHERE imp.request_id <> ''
       AND EXISTS (SELECT 1 FROM events_interaction x
                    WHERE x.request_id = imp.request_id AND x.request_id <> '' AND x.type = {CLICK})
)
"""  # noqa: S608 (interpolates the Interaction.Type constants only; values go as parameters)

_TOTALS_SQL = f"""
WITH {_CTES},
unit_clicks AS (SELECT variant_id, unit, count(*) AS clicks FROM clicked GROUP BY variant_id, unit)
SELECT u.variant_id,
       count(*) AS exposures,
       sum(u.impressions) AS impressions,
       coalesce(sum(k.clicks), 0) AS clicks,
       count(*) FILTER (WHERE o.carted) AS carted_units,
       count(*) FILTER (WHERE o.converted) AS converted_units,
       coalesce(sum(o.revenue), 0) AS revenue,
       coalesce(stddev_samp(coalesce(o.revenue, 0)), 0) AS revenue_sd,
       -- Per-unit sums of squares and products of (clicked lists, lists shown): CTR's delta-method variance.
       coalesce(sum(k.clicks::float8 * k.clicks), 0) AS clicks_sq,
       sum(u.impressions::float8 * u.impressions) AS impressions_sq,
       coalesce(sum(k.clicks::float8 * u.impressions), 0) AS clicks_impressions
  FROM units u
  LEFT JOIN unit_outcomes o USING (variant_id, unit)
  LEFT JOIN unit_clicks k USING (variant_id, unit)
 GROUP BY u.variant_id
"""  # noqa: S608 (interpolates the Interaction.Type constants only; values go as parameters)

_DAILY_SQL = f"""
WITH {_CTES},
daily_units AS (
    SELECT u.variant_id, (u.first_at AT TIME ZONE 'UTC')::date AS day, count(*) AS new_units,
           count(*) FILTER (WHERE o.carted) AS carted, count(*) FILTER (WHERE o.converted) AS converted,
           coalesce(sum(o.revenue), 0) AS revenue
      FROM units u LEFT JOIN unit_outcomes o USING (variant_id, unit)
     GROUP BY 1, 2
),
daily_impressions AS (
    SELECT variant_id, (served_at AT TIME ZONE 'UTC')::date AS day, count(*) AS impressions FROM imp GROUP BY 1, 2
),
daily_clicks AS (
    SELECT variant_id, (served_at AT TIME ZONE 'UTC')::date AS day, count(*) AS clicks FROM clicked GROUP BY 1, 2
)
SELECT day, variant_id, i.impressions, coalesce(c.clicks, 0), coalesce(u.new_units, 0), coalesce(u.carted, 0),
       coalesce(u.converted, 0), coalesce(u.revenue, 0)
  FROM daily_impressions i
  LEFT JOIN daily_units u USING (variant_id, day)
  LEFT JOIN daily_clicks c USING (variant_id, day)
 ORDER BY day, variant_id
"""  # noqa: S608 (interpolates the Interaction.Type constants only; values go as parameters)

_CUPED_SQL = f"""
WITH {_CTES},
pre AS (
    SELECT x.customer_id, sum(coalesce({_VALUE}, 0)) AS revenue
      FROM events_interaction x
     WHERE x.type = {PURCHASE} AND x.occurred_at >= %(pre_start)s AND x.occurred_at < %(start)s
       AND x.customer_id IN (SELECT customer_id FROM units WHERE customer_id IS NOT NULL)
     GROUP BY x.customer_id
)
SELECT u.variant_id, coalesce(o.revenue, 0)::float8, coalesce(p.revenue, 0)::float8
  FROM units u
  LEFT JOIN unit_outcomes o USING (variant_id, unit)
  LEFT JOIN pre p ON p.customer_id = u.customer_id
"""  # noqa: S608 (interpolates the Interaction.Type constants only; values go as parameters)

# Distinct items grow with the lists shown, so arms of unequal traffic (a 90/10 split, a bandit's floored arm) are
# compared on as many lists each: every arm's first N lists, N the smallest arm's count (arms without lists aside).
_ITEMS_SHOWN_SQL = """
WITH lists AS (
    SELECT i.variant_id, i.item_pks,
           row_number() OVER (PARTITION BY i.variant_id ORDER BY i.served_at, i.id) AS n,
           count(*) OVER (PARTITION BY i.variant_id) AS of_variant
      FROM experiments_impression i
     WHERE i.experiment_id = %(experiment_id)s AND i.variant_id IS NOT NULL
)
SELECT l.variant_id, count(DISTINCT item)
  FROM lists l LEFT JOIN LATERAL unnest(l.item_pks) AS item ON true
 WHERE l.n <= (SELECT min(of_variant) FROM lists)
 GROUP BY l.variant_id
"""


# Every list, for the results page: "served before" the end of time.
_ALL_LISTS = "infinity"


def variant_totals(
    *, experiment_id: int, window_hours: int, served_before: dt.datetime | None = None
) -> dict[int, VariantTotals]:
    """Per variant: exposures, impressions, clicked impressions, carted/converted units, revenue and its SD, and the
    per-unit sums of squares and products of clicked and shown lists (CTR is a ratio metric over units).

    ``served_before``: only the lists served before it, and what they led to (the bandit passes now minus the
    attribution window, so that every list it counts has had its whole window to convert)."""
    params = {
        "experiment_id": experiment_id,
        "window_hours": window_hours,
        "served_before": _ALL_LISTS if served_before is None else served_before,
    }
    with connection.cursor() as cursor:
        cursor.execute(_TOTALS_SQL, params)
        rows = cursor.fetchall()
    return {
        row[0]: VariantTotals(
            variant_id=row[0],
            exposures=int(row[1]),
            impressions=int(row[2]),
            clicks=int(row[3]),
            carted_units=int(row[4]),
            converted_units=int(row[5]),
            revenue=float(row[6]),
            revenue_sd=float(row[7]),
            clicks_sq=float(row[8]),
            impressions_sq=float(row[9]),
            clicks_impressions=float(row[10]),
        )
        for row in rows
    }


def daily_totals(*, experiment_id: int, window_hours: int) -> list[DailyTotals]:
    with connection.cursor() as cursor:
        cursor.execute(
            _DAILY_SQL, {"experiment_id": experiment_id, "window_hours": window_hours, "served_before": _ALL_LISTS}
        )
        rows = cursor.fetchall()
    return [
        DailyTotals(day, variant_id, int(imps), int(clicks), int(units), int(carted), int(converted), float(revenue))
        for day, variant_id, imps, clicks, units, carted, converted, revenue in rows
    ]


def cuped_data(*, experiment_id: int, window_hours: int, start_at: dt.datetime) -> CupedData:
    """Per unit: variant, attributed revenue, and revenue in the ``CUPED_PRE_PERIOD_DAYS`` before ``start_at``."""
    params = {
        "experiment_id": experiment_id,
        "window_hours": window_hours,
        "start": start_at,
        "pre_start": start_at - dt.timedelta(days=CUPED_PRE_PERIOD_DAYS),
        "served_before": _ALL_LISTS,
    }
    with connection.cursor() as cursor:
        cursor.execute(_CUPED_SQL, params)
        rows = cursor.fetchall()
    table = np.array(rows, dtype=float).reshape(-1, 3)
    return CupedData(variant_ids=table[:, 0].astype(np.int64), y=table[:, 1], x=table[:, 2])


def items_shown(*, experiment_id: int) -> dict[int, int]:
    """Distinct items shown per variant in its first N lists, N the smallest number of lists a variant with lists has
    shown (the numerator of the coverage guardrail: equal samples, so that traffic alone does not move it)."""
    with connection.cursor() as cursor:
        cursor.execute(_ITEMS_SHOWN_SQL, {"experiment_id": experiment_id})
        return dict(cursor.fetchall())


def active_item_count() -> int:
    return Item.objects.filter(active=True).count()


_LATENCY_P95_SQL = """
SELECT variant_id, percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
  FROM experiments_impression
 WHERE experiment_id = %(experiment_id)s AND variant_id IS NOT NULL AND latency_ms IS NOT NULL
 GROUP BY variant_id
"""


def latency_p95_ms(*, experiment_id: int) -> dict[int, float]:
    """Per variant, the 95th percentile of the serving latency recorded with its impressions (ms, interpolated).
    Variants without a recorded latency (impressions logged before serving recorded it) have no entry."""
    with connection.cursor() as cursor:
        cursor.execute(_LATENCY_P95_SQL, {"experiment_id": experiment_id})
        return {variant_id: float(p95) for variant_id, p95 in cursor.fetchall()}


def weight_history(*, experiment_id: int) -> list[WeightPoint]:
    rows = (
        BanditWeightLog.objects.filter(experiment_id=experiment_id)
        .order_by("at", "variant_id")
        .values_list("at", "variant__name", "weight")
    )
    return [WeightPoint(at, name, weight) for at, name, weight in rows]
