"""Interactions in the admin: newest first by primary key (an index scan, not a sort), exact-id search."""

from django.contrib import admin

from events.models import Interaction
from kernel.admin_utils import EstimatedCountPaginator


@admin.register(Interaction)
class InteractionAdmin(admin.ModelAdmin):
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
