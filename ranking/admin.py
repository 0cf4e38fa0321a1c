"""Admin for the model registry (versions with their validation figures and a chart of them, activation and
roll-back with a confirmation page; otherwise read-only) and for merchandising (business rules with their reach,
and "preview as customer")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments import charts
from kernel.validation import id_problem
from ranking import dry_run, merchandising, services, serving
from ranking.models import BusinessRule, ModelVersion


@dataclass(frozen=True)
class _Validation:
    """A version's offline figures: validation metrics at ``k`` per source, on the temporal hold-out's main segment."""

    k: int
    source: str  # the source the promotion rule compares
    by_source: dict[str, dict[str, float]]

    @classmethod
    def of(cls, metrics: dict[str, Any] | None) -> _Validation:
        metrics = metrics or {}
        validation = metrics.get("validation") or {}
        main = (validation.get("segments") or {}).get("main") or {}
        return cls(
            k=int(validation.get("k", 10)),
            source=str(metrics.get("validation_source", "")),
            by_source=dict(main.get("sources") or {}),
        )

    def value(self, metric: str, source: str | None = None) -> float | None:
        value = self.by_source.get(source or self.source, {}).get(f"{metric}@{self.k}")
        return float(value) if value is not None else None

    def ranked(self, metric: str) -> list[str]:
        """Sources with a value of ``metric``, best first."""
        scored = [(value, source) for source in self.by_source if (value := self.value(metric, source)) is not None]
        return [source for _, source in sorted(scored, reverse=True)]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """The model registry: every trained version with its offline figures, a chart of them over versions, and
    activation (or roll-back) with a confirmation page, audited in the admin history. Otherwise read-only: versions
    are created by training and changed only by the registry services."""

    list_display = (
        "name", "status", "created_at", "ndcg_display", "coverage_display", "best_source", "serves_display",
        "ann_display", "decision_code",
    )  # fmt: skip
    list_filter = ("status", "decision", "ann_kind")
    search_fields = ("=name",)
    ordering = ("-created_at",)
    list_per_page = 50
    change_list_template = "admin/ranking/modelversion/change_list.html"
    readonly_fields = [field.name for field in ModelVersion._meta.fields] + [
        "validation_table", "training_choices", "activation_link",
    ]  # fmt: skip
    fieldsets = (
        (None, {"fields": ("name", "status", "decision", "activation_link", "created_at", "activated_at")}),
        ("Offline evaluation", {"fields": ("validation_table",)}),
        ("Training choices", {"fields": ("training_choices",)}),
        ("Data and index", {"fields": ("data_from", "data_to", "sizes", "ann_kind", "ann_recall")}),
        ("Artifacts", {"classes": ("collapse",), "fields": ("checksum", "artifact_path", "parameters", "metrics")}),
        ("Notes", {"fields": ("notes",)}),
    )
    CHART_VERSIONS = 30  # the newest versions drawn on the registry page
    CHART_SOURCES = 5  # lines per chart

    # Versions are created by training and changed by activation (services), never edited by hand.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False

    @staticmethod
    def can_activate(request: HttpRequest) -> bool:
        """Activation is the one change a version allows; it needs the model's change permission."""
        return request.user.has_perm("ranking.change_modelversion")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        # The active version's training time on every row, in the same query: older versions offer a roll-back.
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).values("created_at")[:1]
        return super().get_queryset(request).annotate(active_created_at=Subquery(active))

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        columns = tuple(super().get_list_display(request))
        if not self.can_activate(request):
            return columns
        # Next to the status, where it stays visible on a narrow screen.
        at = columns.index("status") + 1
        return (*columns[:at], "activation_link", *columns[at:])

    # --- columns ---

    @admin.display(description="validation NDCG")
    def ndcg_display(self, obj: ModelVersion) -> str:
        value = obj.validation_ndcg
        return "-" if value is None else f"{value:.4f}"

    @admin.display(description="coverage")
    def coverage_display(self, obj: ModelVersion) -> str:
        value = _Validation.of(obj.metrics).value("coverage")
        return "-" if value is None else f"{value:.1%}"

    @admin.display(description="best source (NDCG)")
    def best_source(self, obj: ModelVersion) -> str:
        """Every source's figures are on the version's page and in the charts; the list shows the leader."""
        validation = _Validation.of(obj.metrics)
        ranked = validation.ranked("ndcg")
        return "-" if not ranked else f"{ranked[0]} {validation.value('ndcg', ranked[0]):.4f}"

    @admin.display(description="serves")
    def serves_display(self, obj: ModelVersion) -> str:
        """ "pipeline" or "source:<name>" (a single source beat the pipeline on validation)."""
        return str((obj.parameters or {}).get("serve") or "-")

    @admin.display(description="ANN index (recall)")
    def ann_display(self, obj: ModelVersion) -> str:
        if not obj.ann_kind:
            return "-"
        return obj.ann_kind if obj.ann_recall is None else f"{obj.ann_kind} ({obj.ann_recall:.3f})"

    @admin.display(description="decision", ordering="decision")
    def decision_code(self, obj: ModelVersion) -> str:
        return format_html('<span title="{}">{}</span>', obj.get_decision_display(), obj.decision or "-")

    @admin.display(description="activation")
    def activation_link(self, obj: ModelVersion) -> str:
        if obj.status == ModelVersion.Status.ACTIVE:
            return "active"
        if obj.pk is None or obj.status == ModelVersion.Status.FAILED or not obj.checksum:
            return "-"
        url = reverse("admin:ranking_modelversion_activate", args=[obj.pk])
        active_created_at = getattr(obj, "active_created_at", None)
        older = active_created_at is not None and obj.created_at < active_created_at
        return format_html('<a class="button" href="{}">{}</a>', url, "Roll back…" if older else "Activate…")

    @admin.display(description="validation by source")
    def validation_table(self, obj: ModelVersion) -> str:
        validation = _Validation.of(obj.metrics)
        metrics = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
        rows = [
            {"source": source, "promoted": source == validation.source,
             "values": [validation.value(metric, source) for metric in metrics]}
            for source in sorted(validation.by_source)
        ]  # fmt: skip
        return render_to_string(
            "admin/ranking/modelversion/validation.html",
            {"k": validation.k, "metrics": metrics, "rows": rows, "promotion": obj.metrics.get("promotion")},
        )

    @admin.display(description="validation protocol, tuning and what the version serves")
    def training_choices(self, obj: ModelVersion) -> str:
        validation = (obj.metrics or {}).get("validation") or {}
        search = validation.get("tuning") or {}
        trials = sorted(search.get("trials") or [], key=lambda t: t.get("trial", 0))
        return render_to_string(
            "admin/ranking/modelversion/tuning.html",
            {
                "protocol": validation.get("protocol"),
                "serve": validation.get("serve"),
                "tuning": search,
                "chosen": sorted((search.get("chosen") or {}).items()),
                "trials": trials,
                "best_trial": search.get("best_trial"),
                "balanced": any(trial.get("by_question") for trial in trials),
            },
        )

    # --- the registry page: charts over versions ---

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "registry_charts": self._charts()})

    def _charts(self) -> dict[str, str]:
        """NDCG and coverage at k over the newest evaluated versions (inline SVG; experiments.charts escapes every
        text node). A line per source would be a dozen: the chart keeps the newest version's best sources and the
        one the promotion rule compares."""
        rows = list(
            ModelVersion.objects.exclude(status=ModelVersion.Status.FAILED)
            .order_by("-created_at")
            .values_list("created_at", "metrics")[: self.CHART_VERSIONS]
        )
        validations = [(created_at, _Validation.of(metrics)) for created_at, metrics in reversed(rows)]
        newest = validations[-1][1] if validations else _Validation(k=10, source="", by_source={})
        sources = newest.ranked("ndcg")[: self.CHART_SOURCES - 1]
        if newest.source and newest.source not in sources:
            sources.append(newest.source)

        def series(metric: str) -> list[charts.Series]:
            return [
                charts.Series(
                    source,
                    tuple(
                        (created_at, value)
                        for created_at, v in validations
                        if (value := v.value(metric, source)) is not None
                    ),
                )
                for source in sources
            ]

        return {
            "ndcg": mark_safe(  # noqa: S308 - charts.line_chart_svg escapes every text node
                charts.line_chart_svg(
                    series("ndcg"), title=f"Validation NDCG@{newest.k} per version", y_format=charts.plain_number
                )
            ),
            "coverage": mark_safe(  # noqa: S308
                charts.line_chart_svg(series("coverage"), title=f"Validation coverage@{newest.k} per version")
            ),
        }

    # --- activation / roll-back ---

    def get_urls(self) -> list:
        return [
            path(
                "<int:object_id>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name="ranking_modelversion_activate",
            ),
            *super().get_urls(),
        ]

    def activate_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """GET: what activating this version changes (the active version, both validations). POST: activate it
        through ``model_version_activate`` and record who did it on both versions' history."""
        if not self.can_activate(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=object_id)
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exclude(pk=version.pk).first()
        list_url = reverse("admin:ranking_modelversion_changelist")
        rollback = active is not None and version.created_at < active.created_at
        blocked = ""
        if version.status == ModelVersion.Status.ACTIVE:
            blocked = "This version is already the active one."
        elif version.status == ModelVersion.Status.FAILED or not version.checksum:
            blocked = "This version has no usable artifacts (its training failed)."
        if request.method == "POST" and not blocked:
            verb = "Rolled back to" if rollback else "Activated"
            try:
                services.model_version_activate(
                    version_id=version.pk,
                    decision=ModelVersion.Decision.MANUAL,
                    note=f"{verb} {version.name} by {request.user.get_username()} in the admin.",
                )
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(list_url)
            version.refresh_from_db()
            replaced = f", replacing {active.name}" if active else ""
            self.log_change(request, version, f"{verb} this version{replaced}.")
            if active is not None:
                active.refresh_from_db()
                self.log_change(request, active, f"Retired: {version.name} was activated instead.")
            self.message_user(
                request,
                f"{verb} {version.name}. Serving processes switch to it within a minute.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(list_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{'Roll back to' if rollback else 'Activate'} {version.name}?",
            "version": version,
            "active": active,
            "rollback": rollback,
            "blocked": blocked,
            "rows": [
                ("validation NDCG", version.validation_ndcg, active.validation_ndcg if active else None),
                (
                    "coverage",
                    _Validation.of(version.metrics).value("coverage"),
                    _Validation.of(active.metrics).value("coverage") if active else None,
                ),
                ("ANN recall", version.ann_recall, active.ann_recall if active else None),
            ],  # fmt: skip
            "list_url": list_url,
        }
        return TemplateResponse(request, "admin/ranking/modelversion/activate.html", context)


# --- Merchandising ------------------------------------------------------------------------------------------


class BusinessRuleForm(forms.ModelForm):
    class Meta:
        model = BusinessRule
        fields = (
            "name", "status", "enabled", "kind", "target", "item", "category", "brand", "weight", "position",
            "surfaces", "starts_at", "ends_at", "replaces",
        )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is None and "status" not in self.initial:
            # A new rule starts as a draft: serving ignores it until it is tried and published.
            self.initial["status"] = BusinessRule.Status.DRAFT

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        target = data.get("target")
        chosen = {name: data.get(name) for name in ("item", "category", "brand")}
        if target and not chosen.get(target):
            self.add_error(target, f"Choose the {target} this rule is about.")
        for name, value in chosen.items():
            if value is not None and name != target:
                self.add_error(name, f"Leave empty: the rule targets a {target}.")
        if data.get("kind") == BusinessRule.Kind.PIN:
            if target != BusinessRule.Target.ITEM:
                self.add_error("target", "A pin places one item: choose 'an item'.")
            if not data.get("position"):
                self.add_error("position", "A pin needs a position (1 = first).")
        replaces = data.get("replaces")
        if replaces is not None:
            if data.get("status") != BusinessRule.Status.DRAFT:
                self.add_error("replaces", "Only a draft changes another rule: publishing it replaces that rule.")
            elif replaces.status != BusinessRule.Status.PUBLISHED or replaces.pk == self.instance.pk:
                self.add_error("replaces", "Choose a published rule.")
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "The end must be after the start.")
        return data


def _dry_run_html(state: dict[str, Any] | None) -> str:
    if not state or state.get("status") != "done":
        return ""
    result = state["result"]

    def pct(value: float, sign: bool = True) -> str:
        return f"{value:+.1%}" if sign else f"{value:.1%}"

    estimates = [
        {**e, "change_pct": pct(e["change"]), "low_pct": pct(e["interval"][0]), "high_pct": pct(e["interval"][1])}
        for e in result["estimate"].values()
        if e.get("lists")
    ]
    categories = [
        {**row, "before_pct": pct(row["before"], False), "after_pct": pct(row["after"], False)}
        for row in result["categories"]
    ]
    return render_to_string(
        "admin/ranking/dry_run_result.html",
        {
            "result": result,
            "estimates": estimates,
            "categories": categories,
            "share": pct(result["share_changed"], False),
        },
    )


ANONYMOUS = "anonymous"  # the picker's choice for a visitor without a customer id
PREVIEW_SURFACES = (*merchandising.CUSTOMER_SURFACES, *merchandising.ITEM_SURFACES)


@admin.register(BusinessRule)
class BusinessRuleAdmin(admin.ModelAdmin):
    form = BusinessRuleForm
    change_list_template = "admin/ranking/businessrule/change_list.html"
    change_form_template = "admin/ranking/businessrule/change_form.html"
    list_display = ("name", "status", "kind", "target", "target_label", "weight", "position", "surfaces_label",
                    "window", "enabled", "updated_by", "updated_at")  # fmt: skip
    list_filter = ("status", "enabled", "kind", "target")
    search_fields = ("name",)
    autocomplete_fields = ("item", "category", "brand", "replaces")
    list_select_related = ("item", "category", "brand", "updated_by")
    readonly_fields = ("reach",)
    actions = ("enable", "disable", "publish", "draft_copy")

    def save_model(self, request: HttpRequest, obj: BusinessRule, form: Any, change: bool) -> None:
        merchandising.business_rule_save(rule=obj, user_id=request.user.pk)
        for warning in [*merchandising.surface_warnings(obj.surfaces), *merchandising.pin_warnings(obj)]:
            self.message_user(request, warning, messages.WARNING)

    def delete_model(self, request: HttpRequest, obj: BusinessRule) -> None:
        merchandising.business_rule_delete(rule=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[BusinessRule]) -> None:
        for rule in queryset:
            merchandising.business_rule_delete(rule=rule)

    @admin.action(description="Enable selected rules")
    def enable(self, request: HttpRequest, queryset: QuerySet[BusinessRule]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected rules")
    def disable(self, request: HttpRequest, queryset: QuerySet[BusinessRule]) -> None:
        self._set_enabled(request, queryset, False)

    @admin.action(description="Publish selected drafts (serving uses them at once)")
    def publish(self, request: HttpRequest, queryset: QuerySet[BusinessRule]) -> None:
        published = 0
        for rule in queryset.filter(status=BusinessRule.Status.DRAFT):
            live = merchandising.business_rule_publish(rule=rule, user_id=request.user.pk)
            self.log_change(request, live, "Published the rule.")
            published += 1
        self.message_user(request, f"Published {published} draft{'s' if published != 1 else ''}.")

    @admin.action(description="Make a draft change of the selected rules")
    def draft_copy(self, request: HttpRequest, queryset: QuerySet[BusinessRule]) -> None:
        for rule in queryset.filter(status=BusinessRule.Status.PUBLISHED):
            draft = merchandising.business_rule_draft_of(rule=rule, user_id=request.user.pk)
            self.log_addition(request, draft, f"Draft change of rule {rule.pk}.")
        self.message_user(request, "Edit the draft, try it on recent traffic, then publish it to replace the rule.")

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[BusinessRule], enabled: bool) -> None:
        changed = 0
        for rule in queryset:
            rule.enabled = enabled
            merchandising.business_rule_save(rule=rule, user_id=request.user.pk)
            self.log_change(request, rule, f"{'Enabled' if enabled else 'Disabled'} the rule.")
            changed += 1
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(
            request, f"{verb} {changed} rule{'s' if changed != 1 else ''}: serving follows at once for published ones."
        )

    @admin.display(description="surfaces")
    def surfaces_label(self, obj: BusinessRule) -> str:
        return ", ".join(obj.surfaces) or "all"

    @admin.display(description="when")
    def window(self, obj: BusinessRule) -> str:
        start = obj.starts_at.strftime("%Y-%m-%d %H:%M") if obj.starts_at else "now"
        end = obj.ends_at.strftime("%Y-%m-%d %H:%M") if obj.ends_at else "open-ended"
        return f"{start} → {end}"

    @admin.display(description="items this rule touches")
    def reach(self, obj: BusinessRule) -> str:
        if obj.pk is None:
            return "Save the rule to see which items it touches."
        reach = merchandising.business_rule_reach(rule=obj)
        return render_to_string("admin/ranking/rule_reach.html", {"reach": reach})

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("preview/", view(self.preview_view), name="ranking_preview"),
            path("<int:object_id>/dry-run/", view(self.dry_run_view), name="ranking_rule_dry_run"),
            path("<int:object_id>/dry-run/<str:run_id>/", view(self.dry_run_view), name="ranking_rule_dry_run_run"),
            path(
                "<int:object_id>/dry-run/<str:run_id>/status/",
                view(self.dry_run_status_view),
                name="ranking_rule_dry_run_status",
            ),  # fmt: skip
            path("<int:object_id>/publish/", view(self.publish_view), name="ranking_rule_publish"),
            *super().get_urls(),
        ]

    def _rule_for(self, request: HttpRequest, object_id: int, change: bool = False) -> BusinessRule:
        rule = get_object_or_404(BusinessRule, pk=object_id)
        allowed = self.has_change_permission(request, rule) if change else self.has_view_permission(request, rule)
        if not allowed:
            raise PermissionDenied
        return rule

    def dry_run_view(self, request: HttpRequest, object_id: int, run_id: str = "") -> HttpResponse:
        """ "Try on recent traffic": start a dry run (POST), then watch it (the page polls its status)."""
        rule = self._rule_for(request, object_id, change=request.method == "POST")
        days, sample, error = dry_run.DEFAULT_DAYS, dry_run.DEFAULT_SAMPLE, ""
        config: dict[str, Any] = {}
        if request.method == "POST":
            try:
                days = float(request.POST.get("days", days))
                sample = int(request.POST.get("sample", sample))
                changes: dict[str, Any] = {}
                for name, kind in (("diversity_cap", float), ("max_per_brand", int)):
                    if raw := request.POST.get(name, "").strip():
                        changes[name] = kind(raw)
                config = changes
                run_id = dry_run.run_start(rule_id=rule.pk, days=days, sample=sample, config_changes=changes)["id"]
            except ValueError as exc:  # DryRunError is one
                numbers = "Days, sample and settings must be numbers."
                error = str(exc) if isinstance(exc, dry_run.DryRunError) else numbers
            else:
                return HttpResponseRedirect(reverse("admin:ranking_rule_dry_run_run", args=(rule.pk, run_id)))
        state = dry_run.run_status(run_id=run_id[:64]) if run_id else None
        if state is not None:
            days, sample, config = state.get("days", days), state.get("sample", sample), state.get("config") or {}
        if run_id and state is None:
            error = "This dry run is no longer kept (runs are kept for 7 days): start another."
        context = {
            **self.admin_site.each_context(request),
            "title": f"Try on recent traffic: {rule.name}",
            "opts": self.model._meta,
            "original": rule,
            "rule": rule,
            "days": days,
            "sample": sample,
            "config": config,
            "run_id": run_id if state else "",
            "state": state,
            "result_html": _dry_run_html(state),
            "error": error,
            "can_publish": rule.status == BusinessRule.Status.DRAFT and self.has_change_permission(request, rule),
        }
        return TemplateResponse(request, "admin/ranking/dry_run.html", context)

    def dry_run_status_view(self, request: HttpRequest, object_id: int, run_id: str) -> HttpResponse:
        """What the dry-run page polls: the run's progress, and its tables as HTML once done."""
        self._rule_for(request, object_id)
        state = dry_run.run_status(run_id=run_id[:64])
        if state is None:
            return JsonResponse({"status": "missing", "error": "No such dry run."}, status=404)
        return JsonResponse({
            "status": state["status"], "done": state.get("done", 0), "total": state.get("total", 0),
            "error": state.get("error", ""), "html": _dry_run_html(state),
        })  # fmt: skip

    def publish_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        rule = self._rule_for(request, object_id, change=True)
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:ranking_rule_dry_run", args=(rule.pk,)))
        if rule.status != BusinessRule.Status.DRAFT:
            self.message_user(request, "This rule is already published.", messages.WARNING)
        else:
            live = merchandising.business_rule_publish(rule=rule, user_id=request.user.pk)
            self.log_change(request, live, "Published the rule.")
            self.message_user(request, f"Published “{live.name}”: serving uses it now.", messages.SUCCESS)
            rule = live
        return HttpResponseRedirect(reverse("admin:ranking_businessrule_change", args=(rule.pk,)))

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """ "Preview as customer": the live list with rules on and off, side by side, and the rules that touch it."""
        customer_id = request.GET.get("customer_id", "").strip()
        if customer_id.lower() == ANONYMOUS:
            customer_id = ""
        anchor_item_id = request.GET.get("anchor_item_id", "").strip()
        surface = request.GET.get("surface", "home").strip()[:32] or "home"
        if surface not in PREVIEW_SURFACES:
            surface = "home"
        try:
            count = max(1, min(int(request.GET.get("count", "10")), 50))
        except ValueError:
            count = 10
        preview, error = None, ""
        # The ids follow the API's rule (a NUL reached Postgres and was a 500); blank means none.
        problems = [
            f"The {label}: {problem}."
            for label, value in (("customer id", customer_id), ("anchor item id", anchor_item_id))
            if value and (problem := id_problem(value))
        ]
        if "surface" in request.GET and problems:
            error = " ".join(problems)
        elif "surface" in request.GET:
            if surface in merchandising.ITEM_SURFACES and not anchor_item_id:
                error = f"The {surface} surface lists items for an item: enter its id as the anchor item."
            else:
                try:
                    preview = merchandising.preview_as_customer(
                        customer_id=customer_id, surface=surface, count=count, anchor_item_id=anchor_item_id
                    )
                except serving.UnknownItem:
                    error = f"No item with id {anchor_item_id!r}."
        context = {
            **self.admin_site.each_context(request),
            "title": "Preview as customer",
            "opts": self.model._meta,
            "customer_id": customer_id,
            "anchor_item_id": anchor_item_id,
            "surface": surface,
            "count": count,
            "preview": preview,
            "error": error,
            "surfaces": PREVIEW_SURFACES,
            "item_surfaces": merchandising.ITEM_SURFACES,
            "customers": merchandising.preview_customers(),
            "anonymous": ANONYMOUS,
        }
        return TemplateResponse(request, "admin/ranking/preview.html", context)
