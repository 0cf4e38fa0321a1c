"""Events endpoints (scope ``events``): ingestion of interactions and the merge of an anonymous session."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events import services
from events.serializers import (
    EventBatchInputSerializer,
    EventInputSerializer,
    IngestResultSerializer,
    SessionMergeInputSerializer,
    SessionMergeOutputSerializer,
)
from events.validation import InvalidBody, unpack_body
from kernel.models import ApiKey
from kernel.schema import BODY_ERRORS, api_errors
from kernel.validation import check_id

_EVENT_EXAMPLE = {
    "event_id": "evt-7f3a",
    "customer_id": "C1042",
    "item_id": "SKU-85123A",
    "type": "purchase",
    "value": 2,
    "occurred_at": "2026-03-01T10:15:00Z",
    "request_id": "r-5c1d9e",
}


class EventIngestApi(APIView):
    required_scope = ApiKey.Scope.EVENTS

    @extend_schema(
        summary="Send one event or a batch of up to 1,000",
        description=(
            "Every valid event is stored durably before the answer and reflected in the next recommendation. "
            "A batch is answered 202 even when some events are rejected (each by index and reason); a single "
            "invalid event is answered 400. Events with an event_id already stored count as duplicates."
        ),
        request=PolymorphicProxySerializer(
            component_name="EventOrBatch",
            serializers=[EventInputSerializer, EventBatchInputSerializer],
            resource_type_field_name=None,
        ),
        responses={
            202: IngestResultSerializer,
            **api_errors(
                400,
                *BODY_ERRORS,
                descriptions={400: "Not JSON, not an object, over 1,000 events, or one invalid event."},
            ),
        },
        examples=[
            OpenApiExample("single event", value=_EVENT_EXAMPLE, request_only=True),
            OpenApiExample("batch", value={"events": [_EVENT_EXAMPLE]}, request_only=True),
        ],
    )
    def post(self, request: Request) -> Response:
        try:  # a body that is not JSON: the parser's 400 {"detail": ...}, as on every other endpoint
            raw_events, is_batch = unpack_body(request.data)
        except InvalidBody as exc:
            raise ValidationError(exc.errors) from exc
        result = services.event_ingest_batch(events=raw_events)
        if not is_batch and result.rejected:
            raise ValidationError(result.rejected[0].errors)
        return Response(IngestResultSerializer(result).data, status=status.HTTP_202_ACCEPTED)


class SessionMergeApi(APIView):
    required_scope = ApiKey.Scope.EVENTS

    @extend_schema(
        summary="Link an anonymous session to the customer who logged in",
        description="The session's interactions and online history become the customer's. Idempotent.",
        request=SessionMergeInputSerializer,
        responses={
            200: SessionMergeOutputSerializer,
            **api_errors(400, *BODY_ERRORS, descriptions={400: "Invalid ids, or the customer id was erased."}),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        # A path id: the one id rule, nothing stripped (the path is the resource: " x" is not session "x").
        session_id = check_id(session_id, "session_id")
        serializer = SessionMergeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            result = services.session_merge(session_id=session_id, customer_id=serializer.validated_data["customer_id"])
        except services.CustomerErased as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        return Response(SessionMergeOutputSerializer(result).data)
