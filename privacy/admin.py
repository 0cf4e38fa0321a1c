"""Deleting a customer in the admin is an erasure: the same steps as ``DELETE /v1/customers/{id}``
(privacy.services.customer_erase: the online state in Redis, the rows, the suppression-list entry, the anonymous
record). A plain ORM delete removed the rows only: the customer's history, interests and purchases stayed in Redis
for months, the API answered 404 to the erasure that would have removed them, and the next event naming the id
created the customer again with that state (found by a fifth tester, 5 December).

The catalog app sits below privacy and cannot call it, so the deletes are a mixin here, which the customer admin
the site registers (recsys.admin_panels.CustomerWithPanelsAdmin) puts in front of catalog.admin.CustomerAdmin.
"""

from __future__ import annotations

from typing import Any

import redis
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from catalog.models import Customer
from privacy.services import CustomerNotFound, customer_erase

REDIS_DOWN = "Redis is unavailable: nothing more was erased (an erasure must reach the online state). Try again."


class ErasureStopped(Exception):
    """Redis failed before (all of) the customers were erased; the message says how many were."""


@admin.action(permissions=["delete"], description="Erase selected customers (everything stored about them)")
def delete_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Customer]) -> Any:
    """Django's "delete selected" (its confirmation page included), each customer erased; named like it so the
    confirmation page's form comes back here."""
    try:
        return django_delete_selected(modeladmin, request, queryset)
    except ErasureStopped as stopped:
        modeladmin.message_user(request, str(stopped), messages.ERROR)
        return None


class ErasingDeletes(admin.ModelAdmin):
    """For the customer admin: its deletes (one, or the "delete selected" action) are erasures."""

    actions = [delete_selected]

    def delete_model(self, request: HttpRequest, obj: Customer) -> None:
        try:
            customer_erase(customer_id=obj.external_id)
        except CustomerNotFound:
            pass  # erased meanwhile
        except redis.RedisError as error:
            raise ErasureStopped(REDIS_DOWN) from error

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Customer]) -> None:
        erased = 0
        for customer_id in queryset.values_list("external_id", flat=True).iterator():
            try:
                customer_erase(customer_id=customer_id)
            except CustomerNotFound:
                continue
            except redis.RedisError as error:
                raise ErasureStopped(f"{erased} customers erased. {REDIS_DOWN}") from error
            erased += 1

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        # Not in one transaction as Django's delete_view is: the erasure commits its own, then cleans Redis of what
        # a racing event wrote (privacy.services.customer_erase, step 3), which must come after that commit.
        try:
            return self._delete_view(request, object_id, extra_context)
        except ErasureStopped as stopped:
            self.message_user(request, str(stopped), messages.ERROR)
            return HttpResponseRedirect(request.path)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: int) -> HttpResponse:
        response = super().response_delete(request, obj_display, obj_id)
        self.message_user(request, "Erased: its events, impressions and online state are gone; the id is suppressed.")
        return response
