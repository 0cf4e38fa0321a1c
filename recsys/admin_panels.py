"""The catalog's admin pages with what the platform does with each row: an item's "similar" and "bought
together" lists, a customer's recent history and current recommendations; a customer's deletes are erasures
(privacy.admin).

These panels ask ranking and events, so they live here at the top layer (catalog imports no other app): the plain
catalog admins are defined in catalog/admin.py and replaced by these subclasses when this module is imported.
Each panel is bounded (ten or twenty entries, titles in one query) and never fails the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from django.contrib import admin
from django.db import DatabaseError
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse

from catalog.admin import CustomerAdmin, ItemAdmin
from catalog.models import Customer, Item
from events import selectors as event_selectors
from events.keys import customer_owner
from events.models import Interaction
from privacy.admin import ErasingDeletes
from ranking import serving

PANEL_ITEMS = 10  # recommendations per panel
HISTORY_ITEMS = 20  # history entries on a customer's page
# What a panel may meet on a bad day; anything else is a bug and should be seen.
PANEL_ERRORS = (serving.UnknownItem, DatabaseError, redis.RedisError)


def _with_panels(
    fieldsets: Sequence[tuple[str | None, dict[str, Any]]], panels: Sequence[str], title: str, obj: object
) -> list[tuple[str | None, dict[str, Any]]]:
    """The default fieldsets with the read-only panels moved into a section of their own (change pages only)."""
    result = [
        (name, {**options, "fields": [f for f in options["fields"] if f not in panels]}) for name, options in fieldsets
    ]
    if obj is not None:
        result.append((title, {"fields": list(panels)}))
    return result


def _recommendation_panel(load: Callable[[], serving.RecommendationList], empty: str, *, note: str = "") -> str:
    try:
        result = load()
    except PANEL_ERRORS as exc:
        return render_to_string("admin/catalog/recommendation_panel.html", {"error": f"{type(exc).__name__}: {exc}"})
    items = [
        {
            "item_id": item.item_id,
            "title": item.title,
            "reason": item.reason.text,
            "score": item.score,
            "url": f"{reverse('admin:catalog_item_changelist')}?q={item.item_id}",
        }
        for item in result.items
    ]
    return render_to_string(
        "admin/catalog/recommendation_panel.html",
        {"items": items, "result": result, "empty": empty, "note": note},
    )


class ItemWithPanelsAdmin(ItemAdmin):
    panels = ("similar_items_panel", "bought_together_panel")

    def get_readonly_fields(self, request: HttpRequest, obj: Item | None = None) -> Sequence[str]:
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, *self.panels) if obj is not None else fields

    def get_fieldsets(self, request: HttpRequest, obj: Item | None = None) -> list[tuple[str | None, dict[str, Any]]]:
        return _with_panels(super().get_fieldsets(request, obj), self.panels, "Recommended with this item", obj)

    @admin.display(description="similar items")
    def similar_items_panel(self, obj: Item) -> str:
        return _recommendation_panel(
            lambda: serving.similar_items(item_id=obj.external_id, count=PANEL_ITEMS, log_impression=False),
            "No similar items yet: the item is not in a trained model and its category has no popular items.",
        )

    @admin.display(description="frequently bought together")
    def bought_together_panel(self, obj: Item) -> str:
        return _recommendation_panel(
            lambda: serving.bought_together(item_id=obj.external_id, count=PANEL_ITEMS, log_impression=False),
            "Nothing yet: the item has no co-purchases in the active model.",
        )


class CustomerWithPanelsAdmin(ErasingDeletes, CustomerAdmin):
    panels = ("recent_history_panel", "recommendations_panel")

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> Sequence[str]:
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, *self.panels) if obj is not None else fields

    def get_fieldsets(
        self, request: HttpRequest, obj: Customer | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        return _with_panels(super().get_fieldsets(request, obj), self.panels, "Activity and recommendations", obj)

    @admin.display(description="recent history")
    def recent_history_panel(self, obj: Customer) -> str:
        try:
            entries = event_selectors.recent_history(owner=customer_owner(obj.external_id), limit=HISTORY_ITEMS)
            rows = Item.objects.filter(pk__in={e.item_pk for e in entries}).values_list("pk", "external_id", "title")
            titles = {pk: (external_id, title) for pk, external_id, title in rows}
        except PANEL_ERRORS as exc:
            return render_to_string("admin/catalog/history_panel.html", {"error": f"{type(exc).__name__}: {exc}"})
        history = [
            {
                "type": Interaction.Type(entry.type).label if entry.type in Interaction.Type.values else entry.type,
                "at": datetime.fromtimestamp(entry.ts, tz=UTC),
                "item_id": titles.get(entry.item_pk, ("?", ""))[0],
                "title": titles.get(entry.item_pk, ("", "(item no longer in the catalog)"))[1],
            }
            for entry in entries
        ]
        return render_to_string("admin/catalog/history_panel.html", {"rows": history})

    @admin.display(description="current recommendations (home)")
    def recommendations_panel(self, obj: Customer) -> str:
        empty = "No recommendations: there is no model and no purchase to fall back on yet."
        if obj.personalisation_opt_out:
            empty += " The customer opted out of personalisation."
        return _recommendation_panel(
            lambda: serving.recommend(
                serving.RecommendRequest(customer_id=obj.external_id, count=PANEL_ITEMS, log_impression=False)
            ),
            empty,
            note="A preview: not logged as an impression.",
        )


for model, model_admin in ((Item, ItemWithPanelsAdmin), (Customer, CustomerWithPanelsAdmin)):
    if admin.site.is_registered(model) and not isinstance(admin.site._registry[model], model_admin):
        admin.site.unregister(model)
        admin.site.register(model, model_admin)
