"""Merchandiser admin for the catalog, usable with a million items: indexed search, autocomplete, no full counts."""

from django.contrib import admin
from django.http import HttpRequest

from catalog.models import Brand, Category, Customer, Item
from catalog.services import catalog_version_bump, opt_out_version_bump
from kernel.admin_utils import EstimatedCountPaginator


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
