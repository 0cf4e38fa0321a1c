"""Merchandiser pages: set up an experiment with its variants, start/stop it, read its results, conclude it.

Forms validate with experiments.validation (the same rules as the services); every status change goes through a
service, which audits it and publishes it to the serving processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments import charts, services
from experiments.models import Experiment, SurfaceDefault, Variant
from experiments.results import METHODS, METRICS, ExperimentResults, MetricValue, VariantResult
from experiments.validation import (
    VariantSpec,
    config_error,
    guardrail_errors,
    namespace_errors,
    variant_set_errors,
    weight_error,
)

METRIC_LABELS = {
    "ctr": "Click-through rate",
    "add_to_cart_rate": "Add-to-cart rate",
    "conversion_rate": "Conversion rate",
    "revenue_per_customer": "Revenue per customer",
    "revenue_per_customer_cuped": "Revenue per customer (CUPED)",
}


class VariantForm(forms.ModelForm):
    class Meta:
        model = Variant
        fields = ("name", "is_control", "weight", "config")

    def clean_weight(self) -> float | None:
        weight = self.cleaned_data.get("weight")
        if weight is not None and (message := weight_error(weight)) is not None:
            raise ValidationError(f"The weight {message}")
        return weight

    def clean_config(self) -> Any:
        config = self.cleaned_data.get("config")
        if config is None:
            return {}
        message = config_error(config)
        if message:
            raise ValidationError(message)
        return config


class VariantFormSet(BaseInlineFormSet):
    """The variants as a whole: two or more, one control, weights summing to 1."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        if self.instance.pk is not None and self.instance.status != Experiment.Status.DRAFT:
            return  # the rows are read-only once started (VariantInline): nothing was submitted to check
        specs = [
            VariantSpec(
                name=form.cleaned_data["name"],
                weight=form.cleaned_data["weight"],
                is_control=form.cleaned_data.get("is_control", False),
                config=form.cleaned_data.get("config") or {},
            )
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        # Config errors are shown on their own rows already.
        errors = [e for e in variant_set_errors(specs) if not e.startswith("Configuration of")]
        if errors:
            raise ValidationError(errors)


class VariantInline(admin.TabularInline):
    model = Variant
    form = VariantForm
    formset = VariantFormSet
    extra = 0
    min_num = 2
    fields = ("name", "is_control", "weight", "config")

    def _editable(self, obj: Experiment | None) -> bool:
        # Live variants change only through the services (a bandit's reweighting); the hash ranges of a running
        # experiment must not move under its customers.
        return obj is None or obj.status == Experiment.Status.DRAFT

    def get_readonly_fields(self, request: HttpRequest, obj: Experiment | None = None) -> Sequence[str]:
        return () if self._editable(obj) else self.fields

    def has_add_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        return self._editable(obj) and super().has_delete_permission(request, obj)


class ExperimentForm(forms.ModelForm):
    class Meta:
        model = Experiment
        fields = (
            "key",
            "name",
            "hypothesis",
            "surface",
            "namespace",
            "namespace_start",
            "namespace_end",
            "mode",
            "primary_metric",
            "minimum_detectable_effect",
            "attribution_window_hours",
            "guardrails",
            "hash_seed",
        )

    def clean_namespace(self) -> str | None:
        return self.cleaned_data.get("namespace") or None

    def clean_guardrails(self) -> Any:
        guardrails = self.cleaned_data.get("guardrails") or {}
        errors = guardrail_errors(guardrails)
        if errors:
            raise ValidationError(errors)
        return guardrails

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        namespace, start, end = (cleaned.get(f) for f in ("namespace", "namespace_start", "namespace_end"))
        if namespace is None:
            if start is not None or end is not None:
                raise ValidationError("A namespace range needs a namespace; leave all three empty for none.")
        else:
            errors = namespace_errors((namespace, start, end))
            if errors:
                raise ValidationError(errors)
        if not cleaned.get("hash_seed") and cleaned.get("key"):
            cleaned["hash_seed"] = cleaned["key"]
        return cleaned


class ConcludeForm(forms.Form):
    winner = forms.ChoiceField(widget=forms.RadioSelect, required=False)

    def __init__(self, *args: Any, variants: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["winner"].choices = [("", "No winner: keep the surface's current default (roll back)")] + [
            (name, f"{name}: make its settings the surface default") for name in variants
        ]


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentForm
    inlines = (VariantInline,)
    list_display = (
        "key",
        "name",
        "surface",
        "namespace",
        "mode",
        "status",
        "primary_metric",
        "start_at",
        "end_at",
        "links",
    )
    list_filter = ("status", "surface", "mode")
    search_fields = ("key", "name")
    actions = ("start_selected", "stop_selected", "conclude_selected")
    change_form_template = "admin/experiments/experiment/change_form.html"
    _always_readonly = ("status", "start_at", "end_at", "winner", "created_by", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Experiment | None = None) -> Sequence[str]:
        if obj is None or obj.status == Experiment.Status.DRAFT:
            return self._always_readonly
        # Once started only the description may change: everything else shapes the assignment or the analysis.
        return tuple(f for f in ExperimentForm.Meta.fields if f not in ("name", "hypothesis")) + self._always_readonly

    def has_delete_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        # Only drafts: an experiment that ran is a record of a decision (its impressions PROTECT it anyway, and the
        # confirmation page would try to list them all).
        if obj is not None and obj.status != Experiment.Status.DRAFT:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # would not tell drafts from experiments that ran
        return actions

    def save_model(self, request: HttpRequest, obj: Experiment, form: forms.ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        obj.hash_seed = obj.hash_seed or obj.key
        super().save_model(request, obj, form, change)

    @admin.display(description="")
    def links(self, obj: Experiment) -> str:
        return format_html('<a href="{}">results</a>', reverse("admin:experiments_experiment_results", args=[obj.pk]))

    # --- actions ---

    @admin.action(description="Start selected draft experiments", permissions=["change"])
    def start_selected(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        self._each(request, queryset, services.experiment_start, "started")

    @admin.action(description="Stop selected running experiments", permissions=["change"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        self._each(request, queryset, services.experiment_stop, "stopped")

    @admin.action(description="Conclude the selected experiment (choose a winner)…", permissions=["change"])
    def conclude_selected(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one experiment to conclude.", messages.WARNING)
            return None
        return HttpResponseRedirect(reverse("admin:experiments_experiment_conclude", args=[queryset.get().pk]))

    def _each(self, request: HttpRequest, queryset: QuerySet[Experiment], service: Any, verb: str) -> None:
        for experiment in queryset.order_by("pk"):
            try:
                service(experiment_id=experiment.pk, user_id=request.user.pk)
            except services.ExperimentError as exc:
                self.message_user(request, f"{experiment.key}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{experiment.key} {verb}.", messages.SUCCESS)

    # --- custom views ---

    def get_urls(self) -> list:
        custom = [
            path(
                "<int:object_id>/results/",
                self.admin_site.admin_view(self.results_view),
                name="experiments_experiment_results",
            ),
            path(
                "<int:object_id>/conclude/",
                self.admin_site.admin_view(self.conclude_view),
                name="experiments_experiment_conclude",
            ),
        ]
        return custom + super().get_urls()

    def results_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        experiment = get_object_or_404(Experiment, pk=object_id)
        if not self.has_view_permission(request, experiment):
            raise PermissionDenied
        try:
            results = services.experiment_results(key=experiment.key)
        except services.ExperimentError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:experiments_experiment_change", args=[experiment.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": experiment,
            "title": f"Results: {experiment.name}",
            "results": results,
            "metric_tables": _metric_tables(results),
            "primary_label": METRIC_LABELS[results.primary_metric],
            "charts": _charts(results),
            "can_change": self.has_change_permission(request, experiment),
        }
        return TemplateResponse(request, "admin/experiments/experiment/results.html", context)

    def conclude_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        experiment = get_object_or_404(Experiment, pk=object_id)
        if not self.has_change_permission(request, experiment):
            raise PermissionDenied
        change_url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
        variants = list(experiment.variants.order_by("-is_control", "pk").values_list("name", flat=True))
        form = ConcludeForm(request.POST or None, variants=variants)
        if request.method == "POST" and form.is_valid():
            try:
                services.experiment_conclude(
                    experiment_id=experiment.pk, winner=form.cleaned_data["winner"] or None, user_id=request.user.pk
                )
            except services.ExperimentError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                winner = form.cleaned_data["winner"]
                self.message_user(
                    request,
                    f"{experiment.key} concluded"
                    + (f"; {winner} is now the {experiment.surface} default." if winner else " without a winner."),
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(change_url)
        try:
            results: ExperimentResults | None = services.experiment_results(key=experiment.key)
        except services.ExperimentError:
            results = None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": experiment,
            "title": f"Conclude: {experiment.name}",
            "form": form,
            "results": results,
            "primary_label": METRIC_LABELS[experiment.primary_metric],
            "primary_rows": _metric_tables(results)[0]["rows"] if results else [],
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/experiments/experiment/conclude.html", context)


def _metric_tables(results: ExperimentResults) -> list[dict[str, Any]]:
    """One table per metric, the primary first: a row per variant with its value and comparison."""
    order = [results.primary_metric] + [m for m in METRICS if m != results.primary_metric]
    tables = []
    for metric in order:
        tables.append(_table(metric, results.variants, lambda v, m=metric: v.metric(m)))
    if any(v.revenue_per_customer_cuped for v in results.variants):
        tables.append(_table("revenue_per_customer_cuped", results.variants, lambda v: v.revenue_per_customer_cuped))
    return tables


def _table(metric: str, variants: Sequence[VariantResult], pick: Any) -> dict[str, Any]:
    rows = []
    for variant in variants:
        value: MetricValue | None = pick(variant)
        rows.append({"variant": variant, "metric": value})
    return {
        "metric": metric,
        "label": METRIC_LABELS[metric],
        "is_rate": not metric.startswith("revenue"),
        "method": METHODS[metric],
        "rows": rows,
    }


def _charts(results: ExperimentResults) -> dict[str, str]:
    """Inline SVGs (built from escaped text by experiments.charts, hence safe to mark as such)."""
    names = [v.name for v in results.variants]
    is_rate = not results.primary_metric.startswith("revenue")
    primary = [
        charts.Series(
            name,
            tuple(
                (p.day, p.primary_value) for p in results.series if p.variant == name and p.primary_value is not None
            ),
        )
        for name in names
    ]
    impressions = [
        charts.Series(name, tuple((p.day, float(p.impressions)) for p in results.series if p.variant == name))
        for name in names
    ]
    out = {
        "primary": mark_safe(  # noqa: S308 - every text node is escaped by charts.line_chart_svg
            charts.line_chart_svg(
                primary,
                title=f"{METRIC_LABELS[results.primary_metric]}, cumulative by first exposure day",
                y_format=charts.percent if is_rate else charts.plain_number,
            )
        ),
        "impressions": mark_safe(  # noqa: S308
            charts.line_chart_svg(impressions, title="Impressions per day", y_format=charts.plain_number)
        ),
    }
    if results.mode == Experiment.Mode.BANDIT:
        weights = [
            charts.Series(name, tuple((w.at, w.weight) for w in results.weight_history if w.variant == name))
            for name in names
        ]
        out["weights"] = mark_safe(  # noqa: S308
            charts.line_chart_svg(weights, title="Traffic weights (bandit)", y_min=0.0, y_max=1.0)
        )
    return out


class SurfaceDefaultForm(forms.ModelForm):
    class Meta:
        model = SurfaceDefault
        fields = ("surface", "config")

    def clean_config(self) -> Any:
        config = self.cleaned_data.get("config") or {}
        message = config_error(config)
        if message:
            raise ValidationError(message)
        return config


@admin.register(SurfaceDefault)
class SurfaceDefaultAdmin(admin.ModelAdmin):
    form = SurfaceDefaultForm
    list_display = ("surface", "config", "updated_at")
    search_fields = ("surface",)

    def get_readonly_fields(self, request: HttpRequest, obj: SurfaceDefault | None = None) -> Sequence[str]:
        # Renaming would leave the old surface's row behind; a surface's row is edited, never moved.
        return ("surface",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: SurfaceDefault, form: forms.ModelForm, change: bool) -> None:
        # Through the service so every web process picks the new default up within a second.
        saved = services.surface_default_set(surface=obj.surface, config=obj.config)
        obj.pk = saved.pk
