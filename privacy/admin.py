"""Deleting a customer in the admin is an erasure: the same steps as ``DELETE /v1/customers/{id}``
(privacy.services.customer_erase: the online state in Redis, the rows, the suppression-list entry, the anonymous
record). A plain ORM delete removed the rows only: the customer's history, interests and purchases stayed in Redis
for months, the API answered 404 to the erasure that would have removed them, and the next event naming the id
created the customer again with that state (found by a fifth tester, 5 December).

The admin's change log ("who changed what") names nobody either: Django's deletion entry (which would carry the
customer's id, and be written before the deletion, so even for one that failed) is replaced by one entry per
erasure done, naming its anonymous record; the erasure removes the customer's earlier entries.

The catalog app sits below privacy and cannot call it, so the deletes are a mixin here, which the customer admin
the site registers (recsys.admin_panels.CustomerWithPanelsAdmin) puts in front of catalog.admin.CustomerAdmin.
"""

from __future__ import annotations

from typing import Any

import redis
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.models import ADDITION, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from catalog.models import Customer
from privacy.models import ErasureRecord
from privacy.services import CustomerNotFound, customer_erase

REDIS_DOWN = "Redis is unavailable: nothing more was erased (an erasure must reach the online state). Try again."
# An erasure takes about a tenth of a second (it flushes the queued impressions first): a larger selection would
# outlast a web worker's timeout. More at once: DELETE /v1/customers/{id} from a script.
MAX_SELECTED = 100


class ErasureStopped(Exception):
    """Redis failed before (all of) the customers were erased; the message says how many were."""


@admin.action(permissions=["delete"], description="Erase selected customers (everything stored about them)")
def delete_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Customer]) -> Any:
    """Django's "delete selected" (its confirmation page included), each customer erased; named like it so the
    confirmation page's form comes back here."""
    if queryset.count() > MAX_SELECTED:
        modeladmin.message_user(
            request, f"Select at most {MAX_SELECTED} customers to erase at once (the API erases any number).",
            messages.ERROR,
        )  # fmt: skip
        return None
    try:
        return django_delete_selected(modeladmin, request, queryset)
    except ErasureStopped as stopped:
        modeladmin.message_user(request, str(stopped), messages.ERROR)
        return None


class ErasingDeletes(admin.ModelAdmin):
    """For the customer admin: its deletes (one, or the "delete selected" action) are erasures."""

    actions = [delete_selected]

    def log_deletions(self, request: HttpRequest, queryset: Any) -> list[LogEntry]:
        return []  # each erasure done is logged by _erase, naming its record, not the customer

    def _erase(self, request: HttpRequest, customer_id: str) -> bool:
        """Erase one customer and log it; False when it was gone already."""
        try:
            record = customer_erase(customer_id=customer_id)
        except CustomerNotFound:
            return False
        LogEntry.objects.log_actions(
            user_id=request.user.pk, queryset=ErasureRecord.objects.filter(pk=record.pk), action_flag=ADDITION,
            change_message="Erased a customer in the admin.", single_object=True,
        )  # fmt: skip
        return True

    def delete_model(self, request: HttpRequest, obj: Customer) -> None:
        try:
            self._erase(request, obj.external_id)
        except redis.RedisError as error:
            raise ErasureStopped(REDIS_DOWN) from error

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Customer]) -> None:
        erased = 0
        for customer_id in list(queryset.values_list("external_id", flat=True)):
            try:
                erased += self._erase(request, customer_id)
            except redis.RedisError as error:
                raise ErasureStopped(f"{erased} customers erased. {REDIS_DOWN}") from error

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
