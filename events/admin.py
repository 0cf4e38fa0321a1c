"""Interactions in the admin: newest first by primary key (an index scan, not a sort), exact-id search."""

from datetime import datetime

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from events.models import Interaction
from events.parsing import InvalidEvent, check_time
from kernel.admin_utils import EstimatedCountPaginator
from kernel.validation import sentence


class InteractionAdminForm(forms.ModelForm):
    """An event's time follows the rule of the API and the imports (``events.parsing.check_time``): from 1990 to
    an hour after the event was received. The form took any date (year 1, 9999), and one such row failed every
    ``rebuild_online_state`` after it. A row stored before the rule keeps its time through edits of other fields."""

    class Meta:
        model = Interaction
        fields = ("event_id", "customer", "session_id", "item", "type", "value", "occurred_at", "request_id")

    def clean_occurred_at(self) -> datetime:
        value = self.cleaned_data["occurred_at"]
        stored = self.instance.pk is not None and value == self.instance.occurred_at
        if value is not None and not stored:
            try:
                # "Received": the row's own received_at (a new row's is the moment this form was opened).
                value = check_time(value, now=self.instance.received_at)
            except InvalidEvent as exc:
                raise ValidationError(sentence(exc.reason)) from None
        return value


@admin.register(Interaction)
class InteractionAdmin(admin.ModelAdmin):
    form = InteractionAdminForm
    list_display = ("occurred_at", "type", "customer", "session_id", "item", "value", "request_id")
    list_filter = ("type",)
    # Exact matches only: each is an index lookup on a table of hundreds of millions of rows.
    search_fields = ("=event_id", "=customer__external_id", "=item__external_id", "=session_id", "=request_id")
    search_help_text = "Exact event id, customer id, item id, session id or request id."
    list_select_related = ("customer", "item")
    raw_id_fields = ("customer", "item")
    ordering = ("-id",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    readonly_fields = ("received_at",)
