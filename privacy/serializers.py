"""Shapes of the customer data endpoints (opt-out, opt-in, export) and the export's streamed JSON encoding."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder

from catalog.serializers import CustomerOutputSerializer
from events.parsing import TYPE_BY_NAME
from kernel.validation import render_safe_json
from privacy.services import CustomerExport


class PersonalisationSerializer(serializers.Serializer):
    customer_id = serializers.CharField()
    personalisation_opt_out = serializers.BooleanField(
        help_text="True: non-personalised recommendations, and the customer's events are left out of training."
    )


class ExportInteractionSerializer(serializers.Serializer):
    event_id = serializers.CharField()
    item_id = serializers.CharField()
    session_id = serializers.CharField(allow_blank=True)
    type = serializers.ChoiceField(choices=list(TYPE_BY_NAME))
    value = serializers.FloatField(allow_null=True)
    occurred_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    request_id = serializers.CharField(allow_blank=True)


class ExportImpressionSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    served_at = serializers.DateTimeField()
    surface = serializers.CharField()
    session_id = serializers.CharField(allow_blank=True)
    experiment = serializers.CharField(allow_null=True)
    variant = serializers.CharField(allow_null=True)
    model_version = serializers.IntegerField(allow_null=True)
    item_ids = serializers.ListField(child=serializers.CharField(), help_text="The list shown, in order.")


class ExportSessionMergeSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    merged_at = serializers.DateTimeField()


class ExportHistoryEntrySerializer(serializers.Serializer):
    item_id = serializers.CharField()
    type = serializers.ChoiceField(choices=list(TYPE_BY_NAME))
    occurred_at = serializers.DateTimeField()


class ExportDismissedSerializer(serializers.Serializer):
    item_id = serializers.CharField()
    dismissed_at = serializers.DateTimeField()


class ExportHadSerializer(serializers.Serializer):
    item_id = serializers.CharField()
    type = serializers.ChoiceField(choices=list(TYPE_BY_NAME))


class ExportOnlineStateSerializer(serializers.Serializer):
    history = ExportHistoryEntrySerializer(many=True, help_text="Recent events as the online store keeps them.")
    dismissed = ExportDismissedSerializer(
        many=True, help_text='"Not interested" (dismiss events): items never shown to the customer again.'
    )
    had = ExportHadSerializer(
        many=True, help_text="Items bought or rated over the whole history: left out of personal lists."
    )
    category_affinity = serializers.DictField(
        child=serializers.FloatField(), help_text="Category id -> interest weight, decayed to now."
    )


class ExportCustomerSerializer(CustomerOutputSerializer):
    created_at = serializers.DateTimeField(
        allow_null=True, help_text="Null for an id that never had a customer row but had lists served under it."
    )


class CustomerExportSerializer(serializers.Serializer):
    """The export's shape, for the schema; the body itself is streamed by :func:`export_json_chunks`."""

    exported_at = serializers.DateTimeField()
    customer = ExportCustomerSerializer()
    online = ExportOnlineStateSerializer()
    session_merges = ExportSessionMergeSerializer(
        many=True, help_text="Anonymous sessions handed to the customer at login (POST /v1/sessions/{id}/merge)."
    )
    interactions = ExportInteractionSerializer(many=True)
    impressions = ExportImpressionSerializer(
        many=True,
        help_text=(
            "The lists served to the customer (with those served under their id before the customer was created), and "
            "those their merged sessions were served before the merge."
        ),
    )


def _dumps(value: Any) -> str:
    # DRF's encoder: ISO 8601 date-times as in every other response; allow_nan=False so a NaN can never produce
    # invalid JSON (the service turns non-finite numbers into null).
    return json.dumps(value, cls=JSONEncoder, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _array(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield "["
    for n, row in enumerate(rows):
        yield ("," if n else "") + _dumps(row)
    yield "]"


def export_json_chunks(export: CustomerExport, *, rows_per_chunk: int = 500) -> Iterator[bytes]:
    """The export as one JSON object, in chunks of bytes: memory stays bounded however long the history is."""

    def parts() -> Iterator[str]:
        # The customer's stored attributes made renderable whatever they hold (kernel.validation.render_safe_json).
        customer = dict(export.customer)
        customer["attributes"] = render_safe_json(customer.get("attributes"))
        yield "{" + f'"exported_at":{_dumps(export.exported_at)},"customer":{_dumps(customer)},'
        yield f'"online":{_dumps(export.online)},"session_merges":{_dumps(export.session_merges)},"interactions":'
        yield from _array(export.interactions)
        yield ',"impressions":'
        yield from _array(export.impressions)
        yield "}"

    buffer: list[str] = []
    for part in parts():
        buffer.append(part)
        if len(buffer) >= rows_per_chunk:
            yield "".join(buffer).encode()
            buffer = []
    if buffer:
        yield "".join(buffer).encode()
