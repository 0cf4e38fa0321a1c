"""Shapes of the events API for the OpenAPI schema and the responses.

Events themselves are validated by events.validation in one loop, not by these serializers: a serializer per
event would cost more than storing it. The input serializers here describe the shape for drf-spectacular.
"""

from __future__ import annotations

from rest_framework import serializers

from catalog.models import EXTERNAL_ID_MAX
from events.parsing import TYPE_BY_NAME
from events.validation import MAX_BATCH, REQUEST_ID_MAX
from kernel.validation import BodySerializer, IdField


class EventInputSerializer(BodySerializer):
    event_id = serializers.CharField(
        max_length=100, required=False, help_text="Idempotency key; derived from the content when absent."
    )
    customer_id = serializers.CharField(
        max_length=EXTERNAL_ID_MAX, required=False, help_text="The customer; customer_id or session_id is required."
    )
    session_id = serializers.CharField(
        max_length=100, required=False, help_text="The anonymous session; see POST /v1/sessions/{id}/merge."
    )
    item_id = serializers.CharField(max_length=EXTERNAL_ID_MAX)
    type = serializers.ChoiceField(choices=list(TYPE_BY_NAME))
    value = serializers.FloatField(
        required=False, allow_null=True, help_text="Rating value (required for ratings), quantity or revenue."
    )
    occurred_at = serializers.DateTimeField(
        required=False, help_text="ISO 8601; without an offset read as UTC; defaults to the time received."
    )
    request_id = serializers.CharField(
        max_length=REQUEST_ID_MAX, required=False, help_text="The recommendation response this came from."
    )


class EventBatchInputSerializer(BodySerializer):
    events = EventInputSerializer(many=True, max_length=MAX_BATCH)


class RejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the request.")
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Newly stored events.")
    duplicates = serializers.IntegerField(help_text="Events already stored (same event_id): acknowledged, not stored.")
    rejected = RejectionSerializer(many=True)


class SessionMergeInputSerializer(BodySerializer):
    # A JSON string under the one id rule (a number is refused), surrounding whitespace stripped as in events.
    customer_id = IdField(strip=True)


class SessionMergeOutputSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    customer_id = serializers.CharField()
    interactions_merged = serializers.IntegerField()
