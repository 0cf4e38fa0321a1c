"""Admin for the model registry (read-only: versions, validation figures, decisions) and for merchandising
(business rules with their reach, and "preview as customer")."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path

from ranking import merchandising
from ranking.models import BusinessRule, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "id", "name", "status", "created_at", "activated_at", "validation_ndcg_display", "validation_source",
        "n_users", "n_items", "n_interactions", "ann_kind", "ann_recall", "decision",
    )  # fmt: skip
    list_filter = ("status", "decision", "ann_kind")
    search_fields = ("=name",)
    ordering = ("-created_at",)
    readonly_fields = [field.name for field in ModelVersion._meta.fields]

    # Versions are created by training and changed by activation (services), never edited by hand.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False

    @admin.display(description="validation NDCG")
    def validation_ndcg_display(self, obj: ModelVersion) -> str:
        value = obj.validation_ndcg
        return "-" if value is None else f"{value:.4f}"

    @admin.display(description="validated source")
    def validation_source(self, obj: ModelVersion) -> str:
        return str(obj.metrics.get("validation_source", "-"))

    @admin.display(description="users")
    def n_users(self, obj: ModelVersion) -> object:
        return obj.sizes.get("n_users", "-")

    @admin.display(description="items")
    def n_items(self, obj: ModelVersion) -> object:
        return obj.sizes.get("n_items", "-")

    @admin.display(description="interactions")
    def n_interactions(self, obj: ModelVersion) -> object:
        return obj.sizes.get("n_interactions", "-")


# --- Merchandising ------------------------------------------------------------------------------------------


class BusinessRuleForm(forms.ModelForm):
    class Meta:
        model = BusinessRule
        fields = (
            "name", "enabled", "kind", "target", "item", "category", "brand", "weight", "position", "surfaces",
            "starts_at", "ends_at",
        )  # fmt: skip

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
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "The end must be after the start.")
        return data


@admin.register(BusinessRule)
class BusinessRuleAdmin(admin.ModelAdmin):
    form = BusinessRuleForm
    list_display = ("name", "kind", "target", "target_label", "weight", "position", "surfaces_label", "window",
                    "enabled", "updated_by", "updated_at")  # fmt: skip
    list_filter = ("enabled", "kind", "target")
    search_fields = ("name",)
    autocomplete_fields = ("item", "category", "brand")
    list_select_related = ("item", "category", "brand", "updated_by")
    readonly_fields = ("reach",)
    actions = ("enable", "disable")

    def save_model(self, request: HttpRequest, obj: BusinessRule, form: Any, change: bool) -> None:
        merchandising.business_rule_save(rule=obj, user_id=request.user.pk)

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

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[BusinessRule], enabled: bool) -> None:
        for rule in queryset:
            rule.enabled = enabled
            merchandising.business_rule_save(rule=rule, user_id=request.user.pk)
            self.log_change(request, rule, f"{'Enabled' if enabled else 'Disabled'} the rule.")

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
        return [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="ranking_preview"),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """ "Preview as customer": the live list with rules on and off, side by side."""
        customer_id = request.GET.get("customer_id", "").strip()[:100]
        surface = request.GET.get("surface", "home").strip()[:32] or "home"
        try:
            count = max(1, min(int(request.GET.get("count", "10")), 50))
        except ValueError:
            count = 10
        preview = None
        if "surface" in request.GET:
            preview = merchandising.preview_as_customer(customer_id=customer_id, surface=surface, count=count)
        context = {
            **self.admin_site.each_context(request),
            "title": "Preview as customer",
            "opts": self.model._meta,
            "customer_id": customer_id,
            "surface": surface,
            "count": count,
            "preview": preview,
            "surfaces": ("home", "item", "cart", "category", "similar", "bought_together"),
        }
        return TemplateResponse(request, "admin/ranking/preview.html", context)
