"""Operator pages in the admin: the recommendation quality dashboard (daily figures as charts, today's breakdown,
model and event freshness) and a read-only "who changed what" list of the admin's change log.

Importing this module registers both with the default admin site.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments import charts
from kernel.admin_utils import EstimatedCountPaginator
from quality import services as quality
from quality import tasks
from quality.models import QualitySnapshot
from ranking import selectors as ranking_selectors

DASHBOARD_DAYS = 90
CHART_WIDTH = 520  # two charts side by side on a laptop screen


# --- Who changed what ---------------------------------------------------------------------------------------------


class LogEntryAdmin(admin.ModelAdmin):
    """Every change made through the admin (and by services that audit, e.g. experiment and model activations):
    when, who, what, and the change message. Read-only: the log is evidence, not a document."""

    list_display = ("action_time", "user", "action", "content_type", "object_link", "change")
    list_filter = ("action_flag", "content_type")
    search_fields = ("=user__username", "object_repr", "=object_id")
    search_help_text = "Exact user name or object id, or part of the object's name."
    list_select_related = ("user", "content_type")
    ordering = ("-action_time",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    ACTIONS = {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LogEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LogEntry | None = None) -> bool:
        return False

    @admin.display(description="action", ordering="action_flag")
    def action(self, obj: LogEntry) -> str:
        return self.ACTIONS.get(obj.action_flag, str(obj.action_flag))

    @admin.display(description="object")
    def object_link(self, obj: LogEntry) -> str:
        url = None
        if obj.action_flag != DELETION:
            try:
                url = obj.get_admin_url()
            except NoReverseMatch:  # a model no longer in the admin
                url = None
        return format_html('<a href="{}">{}</a>', url, obj.object_repr) if url else obj.object_repr

    @admin.display(description="change")
    def change(self, obj: LogEntry) -> str:
        return obj.get_change_message()


# --- The quality dashboard ----------------------------------------------------------------------------------------


class QualityDashboardAdmin(admin.ModelAdmin):
    """The daily ``QualitySnapshot`` rows as a dashboard (its list page); rows are written by the quality task only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: QualitySnapshot | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: QualitySnapshot | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            tasks.quality_refresh.delay()
            self.message_user(
                request, "The quality figures are being recomputed; reload in a few seconds.", messages.INFO
            )
            return HttpResponseRedirect(request.path)
        return TemplateResponse(request, "admin/dashboard.html", self.dashboard_context(request))

    def dashboard_context(self, request: HttpRequest) -> dict[str, Any]:
        now = timezone.now()
        snapshots = quality.snapshot_list(days=DASHBOARD_DAYS, today=now.date())
        latest = snapshots[-1] if snapshots else None
        served = [s for s in snapshots if s.impressions]
        active = ranking_selectors.active_version()
        replayed = {s.date: quality.replayed_share(s) for s in snapshots}
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Recommendation quality",
            "days": DASHBOARD_DAYS,
            "snapshots": snapshots,
            "recent": [(s, replayed[s.date][0]) for s in reversed(snapshots[-14:])],
            "replayed_days": sum(1 for lists, _ in replayed.values() if lists),
            "replayed_lists": sum(lists for lists, _ in replayed.values()),
            "latest_replayed": replayed[latest.date][0] if latest else 0,
            "latest": latest,
            "latest_is_today": latest is not None and latest.date == now.date(),
            "surfaces": _surface_rows(latest),
            "has_traffic": bool(served),
            "has_latency": any(s.latency_p95_ms is not None for s in snapshots),
            "charts": _charts(snapshots),
            "active": active,
            "freshness": _moments(quality.freshness_read(now=now), now),
            "registry_url": reverse("admin:ranking_modelversion_changelist"),
        }


def _moments(freshness: quality.Freshness, now: datetime) -> dict[str, datetime | None]:
    """The ages as moments, for the template's ``timesince``."""
    return {
        name: None if age is None else now - timedelta(seconds=age)
        for name, age in (("last_training", freshness.last_training), ("last_event", freshness.last_event))
    }


def _surface_rows(snapshot: QualitySnapshot | None) -> list[dict[str, Any]]:
    """Today's breakdown: each surface's total first, then its experiments' variants."""
    if snapshot is None:
        return []
    rows = [row for row in snapshot.by_surface if row.get("surface") != quality.ALL]
    return sorted(
        rows, key=lambda row: (row["surface"], row["experiment"] != quality.ALL, row["experiment"], row["variant"])
    )


def _series(name: str, snapshots: list[QualitySnapshot], field: str, scale: float = 1.0) -> charts.Series:
    points: tuple[tuple[date, float], ...] = tuple(
        (s.date, float(value) * scale) for s in snapshots if (value := getattr(s, field)) is not None
    )
    return charts.Series(name, points)


def _charts(snapshots: list[QualitySnapshot]) -> dict[str, str]:
    """Inline SVGs, one per figure; experiments.charts escapes every text node and says "No data yet" when empty."""
    specs = {
        "outcomes": (
            [_series("CTR", snapshots, "ctr"), _series("conversion", snapshots, "conversion_rate")],
            "Click-through and conversion rate of served lists, per day",
            charts.percent, None, None,
        ),
        "coverage": (
            [_series("that day", snapshots, "coverage_24h"), _series("in 7 days", snapshots, "coverage_7d")],
            "Catalog coverage: share of active items recommended",
            charts.percent, 0.0, None,
        ),
        "diversity": (
            [_series("mean max-category share", snapshots, "max_category_share")],
            "Diversity: share of the most frequent category per list (lower = more varied)",
            charts.percent, 0.0, 1.0,
        ),
        "latency": (
            [_series("p95 (ms)", snapshots, "latency_p95_ms")],
            "Recommendation latency p95 inside the service, ms",
            charts.plain_number, 0.0, None,
        ),
        "impressions": (
            [_series("lists served", snapshots, "impressions")],
            "Recommendation lists served per day",
            charts.plain_number, 0.0, None,
        ),
    }  # fmt: skip
    return {
        key: mark_safe(  # noqa: S308 - charts.line_chart_svg escapes every text node
            charts.line_chart_svg(
                series, title=title, y_format=y_format, y_min=y_min, y_max=y_max, width=CHART_WIDTH, height=260
            )
        )
        for key, (series, title, y_format, y_min, y_max) in specs.items()
    }


if not admin.site.is_registered(LogEntry):
    admin.site.register(LogEntry, LogEntryAdmin)
if not admin.site.is_registered(QualitySnapshot):
    admin.site.register(QualitySnapshot, QualityDashboardAdmin)
