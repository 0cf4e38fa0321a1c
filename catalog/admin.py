"""Merchandiser admin for the catalog, usable with a million items: indexed search, autocomplete, no full counts."""

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from catalog.models import Brand, Category, Customer, Item
from catalog.services import catalog_version_bump, opt_out_version_bump
from kernel.admin_utils import EstimatedCountPaginator
from kernel.validation import check_text


class ItemAdminForm(forms.ModelForm):
    """The API's display-text rule for titles and descriptions (kernel.validation.text_problem)."""

    class Meta:
        model = Item
        fields = (
            "external_id", "title", "description", "category", "brand", "price", "in_stock", "active", "tags",
            "attributes", "created_at",
        )  # fmt: skip

    def clean_title(self) -> str:
        return check_text(self.cleaned_data["title"])

    def clean_description(self) -> str:
        return check_text(self.cleaned_data["description"], multiline=True)


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "external_id", "parent")
    search_fields = ("name", "external_id")
    autocomplete_fields = ("parent",)
    list_select_related = ("parent",)


@admin.register(Brand)
class BrandAdmin(admin.ModelAdmin):
    list_display = ("name", "external_id")
    search_fields = ("name", "external_id")


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    form = ItemAdminForm
    list_display = ("external_id", "title", "category", "brand", "price", "in_stock", "active", "created_at")
    list_filter = ("active", "in_stock", "category")
    search_fields = ("=external_id", "title")
    autocomplete_fields = ("category", "brand")
    list_select_related = ("category", "brand")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    readonly_fields = ("updated_at",)

    def save_model(self, request: HttpRequest, obj: Item, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        catalog_version_bump()

    # A deleted item leaves every cached list at once (the item cache's version is part of each list's key).
    def delete_model(self, request: HttpRequest, obj: Item) -> None:
        super().delete_model(request, obj)
        catalog_version_bump()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Item]) -> None:
        super().delete_queryset(request, queryset)
        catalog_version_bump()


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("external_id", "created_at", "personalisation_opt_out")
    list_filter = ("personalisation_opt_out",)
    search_fields = ("=external_id",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def save_model(self, request: HttpRequest, obj: Customer, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        opt_out_version_bump()
