"""Admin helpers: tables of millions of rows (no full COUNT(*) on list pages, filtered or not), and input a user
may type or edit by hand (addresses, related ids, JSON settings) that the database or the form cannot take: a
message, never a 500."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import (
    ALL_VAR,
    IS_FACETS_VAR,
    IS_POPUP_VAR,
    ORDER_VAR,
    SEARCH_VAR,
    TO_FIELD_VAR,
    ChangeList,
)
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.paginator import Paginator
from django.db import DataError, ProgrammingError, connection, models, transaction
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput, JSONString
from django.http import HttpRequest, HttpResponse

from kernel.parsers import json_text_loads

ESTIMATE_ABOVE = 10_000
COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    """An unfiltered table: the planner's row estimate (``estimated``). A filtered or searched list: an exact count
    up to ``count_cap`` rows, beyond which it says "10,000+" (``capped``) instead of counting on.

    COUNT(*) over a million-row table costs hundreds of milliseconds on every admin page view, and a filter that
    matches most of the table costs as much; the estimate from pg_class is free, and counting at most 10,001 rows of
    a ``LIMIT`` subquery is bounded whatever the filter. Pair with ``show_full_result_count = False``.
    """

    estimate_above = ESTIMATE_ABOVE
    count_cap = COUNT_CAP
    estimated = False
    capped = False

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is None:
            return super().count
        if not query.where:
            table = self.object_list.model._meta.db_table
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [table])
                row = cursor.fetchone()
            if row and row[0] > self.estimate_above:
                self.estimated = True
                return int(row[0])
            return super().count  # a small table: the exact count is cheap
        # SELECT COUNT(*) FROM (SELECT ... LIMIT cap + 1): stops after cap + 1 matching rows.
        counted = self.object_list.order_by()[: self.count_cap + 1].count()
        if counted > self.count_cap:
            self.capped = True
            return self.count_cap
        return counted


# The change list's own parameters (ordering, search, popups, facets): never the filter that failed.
_NOT_FILTERS = frozenset({ALL_VAR, IS_FACETS_VAR, IS_POPUP_VAR, ORDER_VAR, SEARCH_VAR, TO_FIELD_VAR})


class QueryStringSafeChangeList(ChangeList):
    """A change list whose filters come from a hand-edited address: a value the database refuses to compare (a NUL,
    a broken regular expression, a malformed array, ``__unaccent`` without its extension) or a lookup it cannot build
    (``?created_at__year=99999``) is Django's "incorrect lookup" (the list again, unfiltered, with ``?e=1``) and a
    message naming the parameters, not a 500. Django checks lookups when the filter is built; these fail only when
    the query runs."""

    def get_results(self, request: HttpRequest) -> None:
        if not self.filter_params:
            super().get_results(request)
            return
        try:
            with transaction.atomic():  # a failed query must not leave the request's transaction aborted
                super().get_results(request)
                bool(self.result_list)  # the page's own query, which the template would otherwise run
        except (DataError, ProgrammingError, ValueError, OverflowError) as exc:
            names = ", ".join(sorted(set(self.filter_params) - _NOT_FILTERS)) or "its parameters"
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # Postgres' first line, not its DETAIL
            messages.error(request, f"The list cannot be filtered by {names} as the address asks ({reason}).")
            raise IncorrectLookupParameters(exc) from exc


class StrictJSONFormField(forms.JSONField):
    """A JSON setting typed in the admin, under the API body's rules (:func:`kernel.parsers.json_text_loads`), and
    without a NUL, which ``jsonb`` cannot hold. Django's own field parsed ``[[[…`` 5,000 deep into a
    ``RecursionError`` and passed ``NaN`` and ``"\\u0000"`` on to Postgres, which refused them: a 500 each time.
    What a field may hold beyond that is its form's rule (item attributes: the API's)."""

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values or not isinstance(value, str):
            return super().to_python(value)
        try:
            converted = json_text_loads(value)
        except ValueError as exc:
            raise ValidationError(f"Enter valid JSON: {exc}.", code="invalid") from None
        if _holds_nul(converted):
            raise ValidationError("Enter JSON without a NUL character (\\u0000): it cannot be stored.", code="invalid")
        return JSONString(converted) if isinstance(converted, str) else converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or data is None or not isinstance(data, str):
            return super().bound_data(data, initial)
        try:
            return json_text_loads(data)
        except ValueError:
            return InvalidJSONInput(data)  # shown again as typed, with the error


def _holds_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class ValidIdsAutocompleteSelect(AutocompleteSelect):
    """A related field's autocomplete that shows a submitted value only when it can be an id: re-rendering a form
    whose ``item`` was posted as ``abc`` looked ``abc`` up as a number (a 500) before the error could be shown."""

    def optgroups(self, name: str, value: list[str], attrs: dict[str, Any] | None = None) -> list:
        target = self.field.target_field
        usable = []
        for each in value:
            try:
                target.to_python(each)
            except (ValidationError, ValueError, TypeError):
                continue
            usable.append(each)
        return super().optgroups(name, usable, attrs)


class InputSafeAdmin(admin.ModelAdmin):
    """Admin pages whose input a user may type or edit by hand. Filters in the address the database cannot apply
    send the user back to the whole list (:class:`QueryStringSafeChangeList`); an add form's initial values from
    the address (``add/?category=3``) that its fields cannot take (``?category=abc``, a date that is no date) are
    left out instead of failing the form's rendering; a search term with a NUL (which Postgres cannot compare)
    finds nothing (the change list's search box refuses one itself, the autocomplete of a related field did not);
    an action posted for ids that cannot be a row's runs on nothing, saying so. JSON fields follow
    :class:`StrictJSONFormField`, related autocompletes :class:`ValidIdsAutocompleteSelect`."""

    def __init__(self, model: type[models.Model], admin_site: admin.AdminSite) -> None:
        super().__init__(model, admin_site)
        self.formfield_overrides.setdefault(models.JSONField, {}).setdefault("form_class", StrictJSONFormField)

    def get_inline_instances(self, request: HttpRequest, obj: models.Model | None = None) -> list:
        inlines = super().get_inline_instances(request, obj)
        for inline in inlines:  # built per request, each with its own copy of the overrides
            inline.formfield_overrides.setdefault(models.JSONField, {}).setdefault("form_class", StrictJSONFormField)
        return inlines

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if "widget" not in kwargs and db_field.name in self.get_autocomplete_fields(request):
            kwargs["widget"] = ValidIdsAutocompleteSelect(db_field, self.admin_site, using=kwargs.get("using"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        changelist = super().get_changelist(request, **kwargs)
        if changelist is ChangeList:
            return QueryStringSafeChangeList
        # A page's own change list (a third party's admin may have one) keeps its behaviour, made input-safe too.
        if issubclass(changelist, QueryStringSafeChangeList):
            return changelist
        return type(changelist.__name__, (QueryStringSafeChangeList, changelist), {"__module__": changelist.__module__})

    def response_action(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        # The rows an action is for are filtered by the posted ids, which Django converts without asking first.
        for each in request.POST.getlist(ACTION_CHECKBOX_NAME):
            try:
                self.model._meta.pk.to_python(each)
            except (ValidationError, ValueError, TypeError):
                messages.error(request, f"No action was run: {each!r} is not the id of a row.")
                return None  # Django then shows the list again
        return super().response_action(request, queryset)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        if "\x00" in search_term:
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        for name, value in list(initial.items()):
            try:
                field = self.model._meta.get_field(name)
            except FieldDoesNotExist:
                continue
            # Only these fail the page with a value of the wrong kind (a related field's choices are looked up, a
            # date-time is split in two); any other field shows the text as it came.
            if (
                not isinstance(value, str)
                or field.many_to_many
                or not (field.is_relation or isinstance(field, models.DateTimeField))
            ):
                continue
            try:
                initial[name] = field.to_python(value)
            except (ValidationError, ValueError, TypeError):
                del initial[name]
        return initial


def admin_site_input_safe(*, site: admin.AdminSite) -> None:
    """Every page registered on ``site`` made :class:`InputSafeAdmin`, ours and those of the apps we install
    (auth's users and groups, django-axes' logs) alike: called once every app has registered its pages."""
    for model, model_admin in list(site._registry.items()):
        if isinstance(model_admin, InputSafeAdmin):
            continue
        base = type(model_admin)
        safe = type(base.__name__, (InputSafeAdmin, base), {"__module__": base.__module__})
        site.unregister(model)
        site.register(model, safe)
