"""A draft rule's effect on recent traffic, before it goes live ("Try on recent traffic").

A sample of the last N days' served requests on the customer surfaces (the impression log: who asked, surface,
time, list length) is re-served twice through serving's own pipeline (``serving.recommend``, the code every live
list runs): once with the published rules in force at the logged time, once with the draft swapped in
(the rule set is an input of the re-rank stage, passed explicitly: nothing is published, nothing is cached, no
impression is logged). Both runs see the same current online state, model and experiment configuration and use the
logged request id as the exploration seed, so every difference between the two lists is the draft's.

The comparison is a pure numpy core (:func:`compare`): lists changed, positions gained/lost per item, the items
pushed out most often, the category mix before/after, and an ESTIMATE of the click and purchase change: the items'
observed attributed rates under a position-based model (a slot at position p is examined with weight
1/log2(p + 1)), with a 95% interval from a bootstrap over requests that also redraws each item's rate from its
Gamma posterior. A draft's schedule is ignored (a rule for next week's sale is tried on last week's traffic); its
surfaces are not. The item surfaces (similar, bought together) are not replayed: the log has no anchor item.
The replay goes through ``serving.recommend`` itself with a ``serving.Replay`` (the one hook serving has for this).

Runs as a Celery task (``ranking.tasks.rule_dry_run``) with its progress and result in Redis
(:func:`run_start`, :func:`run_status`); ``manage.py rule_dry_run`` runs it in the foreground.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import redis
from celery import current_app
from django.db import connection
from django.db.models.functions import MD5
from django.utils import timezone

from catalog.models import Item
from events.models import Interaction
from experiments.config import InvalidConfig, VariantConfig, finite_number
from experiments.models import Impression
from kernel import redis_client
from ranking import rerank as rr
from ranking import rules, serving
from ranking.merchandising import CUSTOMER_SURFACES
from ranking.models import BusinessRule

logger = logging.getLogger(__name__)

DEFAULT_DAYS = 7.0
DEFAULT_SAMPLE = 500
MAX_DAYS = 90
MAX_SAMPLE = 5_000
BOOTSTRAP = 1_000
PRIOR_WEIGHT = 1.0  # exposure units of the global rate every item starts from (more biases rare items to the mean)
TOP_ITEMS = 20
RUN_TTL = 7 * 24 * 3600
RUN_KEY = "dryrun:{}"
TASK = "ranking.tasks.rule_dry_run"
# Serving settings a dry run may change for the draft side ("a change to a diversity setting").
CONFIG_FIELDS: dict[str, type] = {
    "diversity": str, "diversity_cap": float, "max_per_brand": int, "mmr_lambda": float,
    "exploration_share": float,
}  # fmt: skip

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class DryRunError(ValueError):
    """Bad input to a dry run, with the field it is about (the API answers 400 naming it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- The pure core ------------------------------------------------------------------------------------------------


def examination(positions: npt.ArrayLike) -> FloatArray:
    """The position-based model's examination weight of 1-based positions: 1/log2(p + 1) (1 at the top)."""
    return 1.0 / np.log2(np.asarray(positions, np.float64) + 1.0)


@dataclass(frozen=True)
class ItemRates:
    """Per item pk: examination-weighted exposure in the window and attributed clicks and purchases."""

    pks: IntArray  # sorted
    exposure: FloatArray
    clicks: FloatArray
    purchases: FloatArray


def _padded(lists: Sequence[IntArray], width: int) -> IntArray:
    out = np.full((len(lists), max(width, 1)), -1, np.int64)
    for row, values in enumerate(lists):
        out[row, : values.size] = values[:width]
    return out


def estimate(
    *, base: Sequence[IntArray], draft: Sequence[IntArray], rates: ItemRates, outcome: str, seed: int = 0,
    rounds: int = BOOTSTRAP,
) -> dict[str, Any]:  # fmt: skip
    """Expected ``outcome`` ("clicks" or "purchases") per 1,000 lists before and after, the relative change, and
    its 95% interval: a bootstrap over requests that redraws every item's rate from Gamma(events + prior, exposure
    + prior weight) each round. An estimate under the position-based model, not a measurement."""
    events = rates.clicks if outcome == "clicks" else rates.purchases
    n = len(base)
    if n == 0:
        return {"outcome": outcome, "lists": 0, "estimate": True}
    width = max(max((x.size for x in base), default=1), max((x.size for x in draft), default=1))
    lists = np.stack([_padded(base, width), _padded(draft, width)])  # (2, n, width), -1 = empty slot
    weights = examination(np.arange(1, width + 1))
    known = np.searchsorted(rates.pks, lists).clip(0, max(rates.pks.size - 1, 0))
    found = (rates.pks.size > 0) & (lists >= 0)
    if rates.pks.size:
        found &= rates.pks[known] == lists
    global_rate = float(events.sum() / rates.exposure.sum()) if rates.exposure.sum() > 0 else 0.0
    shape = np.append(events + PRIOR_WEIGHT * global_rate, PRIOR_WEIGHT * global_rate)  # last: never-shown items
    scale = 1.0 / np.append(rates.exposure + PRIOR_WEIGHT, PRIOR_WEIGHT)
    slot = np.where(found, known, rates.pks.size)  # index into shape/scale
    filled = lists >= 0

    def per_list(item_rates: FloatArray) -> FloatArray:
        return (item_rates[slot] * filled * weights).sum(axis=2)  # (2, n)

    point = per_list(shape * scale)
    rng = np.random.default_rng(seed)
    changes = np.empty(rounds)
    for b in range(rounds):
        drawn = rng.gamma(np.maximum(shape, 1e-12), scale)
        sample = rng.integers(0, n, n)
        before, after = per_list(drawn)[:, sample].sum(axis=1)
        changes[b] = after / before - 1.0 if before > 0 else 0.0
    before, after = point.sum(axis=1)
    return {
        "outcome": outcome,
        "lists": n,
        "estimate": True,
        "observed_events": int(events.sum()),  # attributed events the rates come from
        "before_per_1000": round(float(before / n * 1000), 3),
        "after_per_1000": round(float(after / n * 1000), 3),
        "change": round(float(after / before - 1.0), 5) if before > 0 else 0.0,
        "interval": [round(float(np.quantile(changes, 0.025)), 5), round(float(np.quantile(changes, 0.975)), 5)],
    }


def compare(
    *, base: Sequence[IntArray], draft: Sequence[IntArray], category_of: Mapping[int, int], top: int = TOP_ITEMS
) -> dict[str, Any]:
    """How the draft lists differ from the base lists, request by request (same order). Items by pk, categories by
    pk (-1: none)."""
    changed = [i for i, (a, b) in enumerate(zip(base, draft, strict=True)) if not np.array_equal(a, b)]
    gained: dict[int, list[int]] = {}  # pk -> positions gained where it stayed in the list (negative: lost)
    entered: dict[int, int] = {}
    pushed: dict[int, int] = {}
    for i in changed:
        a, b = base[i], draft[i]
        pos_a = {int(pk): p for p, pk in enumerate(a.tolist())}
        pos_b = {int(pk): p for p, pk in enumerate(b.tolist())}
        for pk, p in pos_a.items():
            if pk in pos_b:
                if pos_b[pk] != p:
                    gained.setdefault(pk, []).append(p - pos_b[pk])
            else:
                pushed[pk] = pushed.get(pk, 0) + 1
        for pk in pos_b.keys() - pos_a.keys():
            entered[pk] = entered.get(pk, 0) + 1
    affected = set(gained) | set(entered) | set(pushed)
    items = sorted(
        (
            {
                "pk": pk,
                "lists_entered": entered.get(pk, 0),
                "lists_left": pushed.get(pk, 0),
                "lists_moved": len(gained.get(pk, ())),
                "positions_gained": int(sum(gained.get(pk, ()))),
                "mean_positions_gained": round(float(np.mean(gained[pk])), 3) if pk in gained else 0.0,
            }  # fmt: skip
            for pk in affected
        ),
        key=lambda row: (-(row["lists_entered"] + row["lists_left"] + row["lists_moved"]), row["pk"]),
    )
    pushed_out = sorted(({"pk": pk, "lists_left": n} for pk, n in pushed.items()), key=lambda r: (-r["lists_left"],
                                                                                               r["pk"]))  # fmt: skip

    def mix(lists: Sequence[IntArray]) -> dict[int, float]:
        slots = np.concatenate([*lists, np.empty(0, np.int64)]).astype(np.int64)
        if slots.size == 0:
            return {}
        cats, counts = np.unique([category_of.get(int(pk), -1) for pk in slots.tolist()], return_counts=True)
        return {int(c): float(n / slots.size) for c, n in zip(cats.tolist(), counts.tolist(), strict=True)}

    before, after = mix(base), mix(draft)
    categories = sorted(
        ({"category": c, "before": round(before.get(c, 0.0), 4), "after": round(after.get(c, 0.0), 4)}
         for c in before.keys() | after.keys()),
        key=lambda row: (-max(row["before"], row["after"]), row["category"]),
    )  # fmt: skip
    return {
        "lists": len(base),
        "lists_changed": len(changed),
        "share_changed": round(len(changed) / len(base), 4) if base else 0.0,
        "items": items[:top],
        "items_affected": len(affected),
        "pushed_out": pushed_out[:top],
        "categories": categories,
    }


# --- Adapters: the sample, the rates, the replay -------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    """One served list from the impression log, as much of it as a replay needs."""

    request_id: str
    surface: str
    customer_id: str
    session_id: str
    served_at: float
    count: int


def sample_requests(*, days: float, size: int, surfaces: Sequence[str] = CUSTOMER_SURFACES) -> list[LoggedRequest]:
    """Up to ``size`` served requests of the last ``days`` on ``surfaces``: a stable pseudo-random sample (ordered
    by the md5 of the request id, so the same log gives the same sample)."""
    since = timezone.now() - dt.timedelta(days=days)
    rows = (
        Impression.objects.filter(served_at__gte=since, surface__in=list(surfaces))
        .exclude(item_pks=[])
        .annotate(digest=MD5("request_id"))
        .order_by("digest", "request_id")
        .values_list("request_id", "surface", "customer__external_id", "session_id", "served_at", "item_pks")
    )[: size * 4]  # a LIMIT lets Postgres keep only the top rows while it scans; a request has a row per experiment
    seen: set[str] = set()
    sample: list[LoggedRequest] = []
    for request_id, surface, customer, session, served_at, item_pks in rows.iterator(chunk_size=1000):
        if request_id in seen:  # one row per experiment the request was in
            continue
        seen.add(request_id)
        sample.append(LoggedRequest(request_id, surface, customer or "", session or "", served_at.timestamp(),
                                    min(len(item_pks), serving.MAX_COUNT)))  # fmt: skip
        if len(sample) >= size:
            break
    return sample


def item_rates(*, days: float, surfaces: Sequence[str] = CUSTOMER_SURFACES) -> ItemRates:
    """Every item's examination-weighted exposure in the window's impressions and the clicks and purchases
    attributed to them (an event carrying the list's request id, on an item of that list): two queries."""
    since = timezone.now() - dt.timedelta(days=days)
    slots = f"""
        WITH imp AS (
            SELECT DISTINCT ON (request_id) request_id, item_pks FROM {Impression._meta.db_table}
            WHERE served_at >= %s AND surface = ANY(%s)
        )
        SELECT imp.request_id, u.pk, u.pos
        FROM imp CROSS JOIN LATERAL unnest(imp.item_pks) WITH ORDINALITY AS u(pk, pos)
    """  # noqa: S608 - table names from the models, values bound
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH slots AS ({slots}) SELECT pk, SUM(1.0 / log(2, pos + 1.0)) FROM slots GROUP BY pk ORDER BY pk",  # noqa: S608
            [since, list(surfaces)],
        )
        exposure_rows = cursor.fetchall()
        cursor.execute(
            f"""WITH slots AS ({slots})
            SELECT e.item_id, e.type, COUNT(DISTINCT e.request_id) FROM {Interaction._meta.db_table} e
            JOIN slots s ON s.request_id = e.request_id AND s.pk = e.item_id
            WHERE e.type IN (%s, %s) AND e.occurred_at >= %s GROUP BY e.item_id, e.type""",  # noqa: S608
            [since, list(surfaces), Interaction.Type.CLICK, Interaction.Type.PURCHASE, since],
        )
        outcome_rows = cursor.fetchall()
    pks = np.array([int(pk) for pk, _ in exposure_rows], np.int64)
    exposure = np.array([float(value) for _, value in exposure_rows], np.float64)
    clicks = np.zeros(pks.size)
    purchases = np.zeros(pks.size)
    for pk, type_, n in outcome_rows:
        at = int(np.searchsorted(pks, pk))
        if at < pks.size and pks[at] == pk:
            (clicks if type_ == Interaction.Type.CLICK else purchases)[at] += n
    return ItemRates(pks=pks, exposure=exposure, clicks=clicks, purchases=purchases)


def draft_rule_set(
    rule: BusinessRule | None, *, published: Sequence[rules.StoredRule], surface: str, at: float
) -> tuple[tuple[rr.Rule, ...], tuple[rr.Rule, ...]]:
    """The rule sets of one replayed request: (published rules in force at ``at`` on ``surface``, the same with the
    draft swapped in). The draft replaces the rule it changes (``replaces``, or itself when it is a published rule
    being tried), applies on its surfaces whatever its schedule, and none of it when disabled."""
    base = tuple(s.rule for s in published if s.applies(surface, at))
    if rule is None:
        return base, base
    replaced = {rule.pk, rule.replaces_id} - {None}
    draft = [r for r in base if r.rule_id not in replaced]
    stored = rules.stored_rule(rule)
    if stored is not None and rule.enabled and (not stored.surfaces or surface in stored.surfaces):
        draft.append(stored.rule)
    return base, tuple(draft)


def replay(request: LoggedRequest, *, rule_set: tuple[rr.Rule, ...], config_changes: Mapping[str, Any]) -> IntArray:
    """The list serving would give this logged request now with ``rule_set`` (and ``config_changes``): the served
    path itself (``serving.recommend``) under the logged request id, the exploration seed. Not cached, not logged,
    not counted as traffic."""
    result = serving.recommend(
        serving.RecommendRequest(
            customer_id=request.customer_id, session_id=request.session_id, surface=request.surface,
            count=request.count, log_impression=False,
            replay=serving.Replay(request.request_id, rule_set, tuple(sorted(config_changes.items()))),
        )
    )  # fmt: skip
    pks = [serving.item_pk(item.item_id) for item in result.items]  # served items: in the item cache
    return np.array([pk for pk in pks if pk is not None], np.int64)


def check_config_changes(changes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the serving settings a dry run may change, naming the field at fault."""
    clean: dict[str, Any] = {}
    for name, value in (changes or {}).items():
        if name not in CONFIG_FIELDS:
            raise DryRunError(f"config.{name}", f"config.{name} is not a setting a dry run can change; one of "
                              f"{', '.join(CONFIG_FIELDS)}.")  # fmt: skip
        kind = CONFIG_FIELDS[name]
        if kind is str:
            if value not in ("greedy", "mmr"):
                raise DryRunError(f"config.{name}", f"config.{name} must be 'greedy' or 'mmr'.")
            clean[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not finite_number(value):
            raise DryRunError(f"config.{name}", f"config.{name} must be a finite number.")
        if kind is int and value != int(value):
            raise DryRunError(f"config.{name}", f"config.{name} must be a whole number.")
        if not ((0 <= value <= 1) if kind is float else (1 <= value <= 100)):
            raise DryRunError(f"config.{name}", f"config.{name} must be between {0 if kind is float else 1} and "
                              f"{1 if kind is float else 100}.")  # fmt: skip
        clean[name] = kind(value)
    try:  # and what serving itself requires of them (a category cap above 0, ...)
        VariantConfig.from_dict(clean)
    except InvalidConfig as exc:
        name, message = next(iter(exc.errors.items()))
        raise DryRunError(f"config.{name}", f"config.{name} {message}.") from None
    return clean


def rule_dry_run(
    *, rule_id: int | None, days: float = DEFAULT_DAYS, sample: int = DEFAULT_SAMPLE,
    config_changes: Mapping[str, Any] | None = None, progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Re-serve a sample of the last ``days`` of served requests with and without the draft ``rule_id`` (and/or
    ``config_changes``) and compare them (see the module docstring). Raises DryRunError for bad input."""
    if not 0 < days <= MAX_DAYS:
        raise DryRunError("days", f"days must be more than 0 and at most {MAX_DAYS}.")
    if not 0 < sample <= MAX_SAMPLE:
        raise DryRunError("sample", f"sample must be between 1 and {MAX_SAMPLE}.")
    changes = check_config_changes(config_changes)
    rule = None
    if rule_id is not None:
        rule = BusinessRule.objects.filter(pk=rule_id).first()
        if rule is None:
            raise DryRunError("rule_id", f"No business rule with id {rule_id}.")
    elif not changes:
        raise DryRunError("rule_id", "Give a rule to try, a config change, or both.")
    started = time.perf_counter()
    requests = sample_requests(days=days, size=sample)
    published = rules.published_rules()
    base_lists: list[IntArray] = []
    draft_lists: list[IntArray] = []
    total = len(requests)
    for n, request in enumerate(requests):
        base_rules, draft_rules = draft_rule_set(rule, published=published, surface=request.surface,
                                                 at=request.served_at)  # fmt: skip
        base_lists.append(replay(request, rule_set=base_rules, config_changes={}))
        draft_lists.append(replay(request, rule_set=draft_rules, config_changes=changes))
        if progress is not None and (n + 1 == total or (n + 1) % 10 == 0):
            progress(n + 1, total)
    shown = {int(pk) for lists in (base_lists, draft_lists) for x in lists for pk in x.tolist()}
    rows = {
        pk: (external_id, title, category_id, category_name)
        for pk, external_id, title, category_id, category_name in Item.objects.filter(pk__in=shown).values_list(
            "pk", "external_id", "title", "category_id", "category__name"
        )
    }
    category_of = {pk: (row[2] if row[2] is not None else -1) for pk, row in rows.items()}
    result = compare(base=base_lists, draft=draft_lists, category_of=category_of)
    for table in ("items", "pushed_out"):
        for row in result[table]:
            external_id, title, *_ = rows.get(row["pk"], (str(row["pk"]), "", None, ""))
            row.update(item_id=external_id, title=title)
            del row["pk"]
    names = {row[2]: row[3] for row in rows.values() if row[2] is not None}
    for row in result["categories"]:
        row["name"] = names.get(row["category"], "(none)") if row["category"] != -1 else "(none)"
        del row["category"]
    rates = item_rates(days=days)
    result["estimate"] = {
        outcome: estimate(base=base_lists, draft=draft_lists, rates=rates, outcome=outcome, seed=seed)
        for outcome in ("clicks", "purchases")
    }
    result.update(
        rule_id=rule_id, rule=rule.name if rule else None, days=days, sample=sample, config=changes,
        surfaces=list(CUSTOMER_SURFACES), seconds=round(time.perf_counter() - started, 2),
        notes=_notes(rule, requests, days),
    )  # fmt: skip
    return result


def _notes(rule: BusinessRule | None, requests: Sequence[LoggedRequest], days: float) -> list[str]:
    """What a "0 lists changed" may mean, said outright (it read like "this rule changes nothing": an eighth tester,
    6 December): no traffic to replay, or none on the rule's surfaces (the item surfaces are never replayed)."""
    if not requests:
        return [f"No lists were served on the customer surfaces ({', '.join(CUSTOMER_SURFACES)}) in the last "
                f"{days:g} days: there was nothing to replay."]  # fmt: skip
    if rule is None:
        return []
    if not rule.enabled:
        return ["The rule is disabled, and a disabled rule changes nothing: enable it to try it."]
    if not rule.surfaces:
        return []
    replayed = {request.surface for request in requests}
    unreplayable = [s for s in rule.surfaces if s not in CUSTOMER_SURFACES]
    why = (
        f"only the customer surfaces ({', '.join(CUSTOMER_SURFACES)}) are replayed (the log has no anchor item for "
        "the item surfaces)"
    )
    if replayed.intersection(rule.surfaces):
        return [f"Its effect on {', '.join(unreplayable)} is not counted: {why}."] if unreplayable else []
    note = (
        f"None of the {len(requests):,} replayed lists was on this rule's surfaces ({', '.join(rule.surfaces)}), "
        "so it could change none of them."
    )
    if unreplayable:
        note += f" {', '.join(unreplayable)} {'is' if len(unreplayable) == 1 else 'are'} not replayed: {why}."
    return [note]


# --- Runs in the background: progress and result in Redis ---------------------------------------------------------


def _save(run_id: str, state: dict[str, Any]) -> None:
    redis_client.get().set(RUN_KEY.format(run_id), orjson.dumps(state), ex=RUN_TTL)


def run_status(*, run_id: str) -> dict[str, Any] | None:
    """A run's state: status (queued, running, done, failed), done/total requests, the result when done."""
    raw = cast(bytes | None, redis_client.get().get(RUN_KEY.format(run_id)))
    return orjson.loads(raw) if raw else None


def run_start(
    *, rule_id: int | None, days: float = DEFAULT_DAYS, sample: int = DEFAULT_SAMPLE,
    config_changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Validate, record a queued run and send it to a Celery worker (the task by name: ``ranking.tasks`` calls this
    module); the run's state as queued (its ``id`` among it), which is what the API answers: a fast worker may have
    moved the stored state on before it could be read back. Raises DryRunError for bad input."""
    if not 0 < days <= MAX_DAYS:
        raise DryRunError("days", f"days must be more than 0 and at most {MAX_DAYS}.")
    if not 0 < sample <= MAX_SAMPLE:
        raise DryRunError("sample", f"sample must be between 1 and {MAX_SAMPLE}.")
    changes = check_config_changes(config_changes)
    if rule_id is not None and not BusinessRule.objects.filter(pk=rule_id).exists():
        raise DryRunError("rule_id", f"No business rule with id {rule_id}.")
    if rule_id is None and not changes:
        raise DryRunError("rule_id", "Give a rule to try, a config change, or both.")
    run_id = uuid.uuid4().hex
    state = {"id": run_id, "status": "queued", "done": 0, "total": 0, "rule_id": rule_id, "days": days,
             "sample": sample, "config": changes, "queued_at": time.time()}  # fmt: skip
    _save(run_id, state)
    current_app.send_task(TASK, args=(run_id, rule_id, days, sample, changes))
    return state


def run_execute(
    *, run_id: str, rule_id: int | None, days: float, sample: int, config_changes: Mapping[str, Any]
) -> None:
    """The task's body: run, reporting progress every ten requests, and store the result (or the error)."""
    state = run_status(run_id=run_id) or {"id": run_id, "rule_id": rule_id, "days": days, "sample": sample}
    state.update(status="running", started_at=time.time())
    _save(run_id, state)

    def progress(done: int, total: int) -> None:
        state.update(done=done, total=total)
        try:
            _save(run_id, state)
        except redis.RedisError:
            logger.warning("dry_run_progress_not_saved", exc_info=True)

    try:
        result = rule_dry_run(rule_id=rule_id, days=days, sample=sample, config_changes=config_changes,
                              progress=progress)  # fmt: skip
    except DryRunError as exc:
        state.update(status="failed", error=str(exc), field=exc.field)
    except Exception:
        logger.exception("dry_run_failed", extra={"run_id": run_id})
        # The caller sees that it failed and where to look; the exception's text (SQL, paths) stays in the log.
        message = f"The dry run failed unexpectedly; the worker's log has why (dry_run_failed, run {run_id})."
        state.update(status="failed", error=message)
        _save(run_id, state)
        raise
    else:
        state.update(status="done", result=result, done=result["lists"], total=result["lists"])
    state["finished_at"] = time.time()
    _save(run_id, state)
