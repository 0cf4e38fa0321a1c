"""Merchandiser admin for the catalog, usable with a million items: indexed search, autocomplete, no full counts."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from catalog.models import MAX_DESCRIPTION, MAX_TAGS, Brand, Category, Customer, Item, created_at_problem
from catalog.services import catalog_version_bump, opt_out_version_bump
from kernel.admin_utils import EstimatedCountPaginator
from kernel.validation import check_text, id_problem, json_problem, sentence, text_problem


def _checked(form: forms.ModelForm, name: str, problem_of: Callable[[Any], str | None]) -> Any:
    """The field's cleaned value, refused with ``problem_of``'s sentence unless it is the row's stored one: a row
    stored before a rule keeps its value through edits of its other fields. (Not ``changed_data``, which trusts the
    hidden initial values the page posts back.)"""
    value = form.cleaned_data[name]
    if _is_new(form, name, value) and (problem := problem_of(value)) is not None:
        raise ValidationError(sentence(problem))
    return value


def _is_new(form: forms.ModelForm, name: str, value: Any) -> bool:
    return form.instance.pk is None or value != getattr(form.instance, name)  # the instance: not yet updated


class CatalogIdForm(forms.ModelForm):
    """Ids typed in the admin follow the API's id rule (kernel.validation.id_problem): an id with a control
    character or ending in ``/similar`` was stored here, then refused by every API path that names it."""

    def clean_external_id(self) -> str:
        return _checked(self, "external_id", id_problem)


class NamedForm(CatalogIdForm):
    """A category's or brand's display name: the title's text rule (one line, no control characters)."""

    def clean_name(self) -> str:
        return _checked(self, "name", text_problem)


class CustomerAdminForm(CatalogIdForm):
    """A customer's attributes: what the API accepts (kernel.validation.json_problem)."""

    def clean_attributes(self) -> object:
        return _checked(self, "attributes", json_problem)


class ItemAdminForm(CatalogIdForm):
    """The API's rules: ids, tags (each an id, kept once, at most the API's number), attributes, created_at's years,
    and display text for titles and descriptions (kernel.validation.text_problem)."""

    class Meta:
        model = Item
        fields = (
            "external_id", "title", "description", "category", "brand", "price", "in_stock", "active", "tags",
            "attributes", "created_at",
        )  # fmt: skip

    def clean_title(self) -> str:
        return check_text(self.cleaned_data["title"])

    def clean_tags(self) -> list[str]:
        tags = list(dict.fromkeys(self.cleaned_data["tags"] or []))
        for tag in tags if _is_new(self, "tags", tags) else ():
            if (problem := id_problem(tag)) is not None:
                raise ValidationError(f"The tag {tag!r}: {problem}.")
        if len(tags) > MAX_TAGS:
            raise ValidationError(f"At most {MAX_TAGS} tags.")
        return tags

    def clean_attributes(self) -> object:
        return _checked(self, "attributes", json_problem)

    def clean_description(self) -> str:
        description = self.cleaned_data["description"]
        if _is_new(self, "description", description) and len(description) > MAX_DESCRIPTION:
            raise ValidationError(f"At most {MAX_DESCRIPTION:,} characters.")
        return check_text(description, multiline=True)

    def clean_created_at(self) -> object:
        return _checked(self, "created_at", created_at_problem)


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    form = NamedForm
    list_display = ("name", "external_id", "parent")
    search_fields = ("name", "external_id")
    autocomplete_fields = ("parent",)
    list_select_related = ("parent",)


@admin.register(Brand)
class BrandAdmin(admin.ModelAdmin):
    form = NamedForm
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
    form = CustomerAdminForm
    list_display = ("external_id", "created_at", "personalisation_opt_out")
    list_filter = ("personalisation_opt_out",)
    search_fields = ("=external_id",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def save_model(self, request: HttpRequest, obj: Customer, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        opt_out_version_bump()
