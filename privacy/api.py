"""Customer data endpoints (scope ``catalog``, the storefront's customer data management): opt-out and opt-in of
personalisation, erasure (``DELETE /v1/customers/{id}``) and export. Views validate, call one service, serialize."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import api as catalog_api
from kernel.auth import ApiClient
from kernel.models import ApiKey
from kernel.schema import api_errors
from kernel.validation import check_id
from privacy import services as privacy
from privacy.serializers import CustomerExportSerializer, PersonalisationSerializer, export_json_chunks

_ERRORS = api_errors(
    400, 404,
    descriptions={
        400: "The customer id in the path is not a valid id (or, to opt in or out, it was erased).",
        404: "No customer with this id.",
        503: "Redis or Postgres is unavailable; nothing was changed. Retry later.",
    },
)  # fmt: skip
# Opting in or out creates an unknown customer: no 404.
_PERSONALISATION_ERRORS = {status: r for status, r in _ERRORS.items() if status != 404}


def _check_id(customer_id: str) -> str:
    return check_id(customer_id, "customer_id")


class CustomerApi(catalog_api.CustomerApi):
    """The catalog's ``GET``/``PUT`` of a customer, plus ``DELETE``: the erasure reaches into every app, so it
    lives here and this view is mounted in front of the catalog's at the same path."""

    required_scope = ApiKey.Scope.CATALOG

    @extend_schema(
        summary="Erase the customer and everything stored about them",
        description=(
            "Deletes the customer, their interactions and impressions, their online history and affinities and "
            "their cached recommendation lists, and records that an erasure happened (without the customer's id). "
            "The next training run does not see them."
        ),
        responses={204: None, **_ERRORS},
    )
    def delete(self, request: Request, customer_id: str) -> Response:
        client = request.user
        try:
            privacy.customer_erase(
                customer_id=_check_id(customer_id),
                requested_by_key_id=client.key_id if isinstance(client, ApiClient) else None,
            )
        except privacy.CustomerNotFound:
            raise NotFound(f"No customer with id {customer_id!r}.") from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class _PersonalisationApi(APIView):
    required_scope = ApiKey.Scope.CATALOG
    opted_out: bool

    def post(self, request: Request, customer_id: str) -> Response:
        try:
            result = privacy.customer_personalisation_set(customer_id=_check_id(customer_id), opted_out=self.opted_out)
        except privacy.CustomerErased:
            raise ValidationError({"customer_id": [privacy.CustomerErased.message]}) from None
        return Response(PersonalisationSerializer(result).data)


class CustomerOptOutApi(_PersonalisationApi):
    opted_out = True

    @extend_schema(
        summary="Opt the customer out of personalisation",
        description=(
            "From within 5 seconds the customer gets non-personalised lists, and training leaves their events out. "
            "An unknown customer is created with the choice (an erased one is not: 400). Idempotent."
        ),
        request=None,
        responses={200: PersonalisationSerializer, **_PERSONALISATION_ERRORS},
    )
    def post(self, request: Request, customer_id: str) -> Response:
        return super().post(request, customer_id)


class CustomerOptInApi(_PersonalisationApi):
    opted_out = False

    @extend_schema(
        summary="Opt the customer back in to personalisation",
        description="An unknown customer is created with the choice (an erased one is not: 400). Idempotent.",
        request=None,
        responses={200: PersonalisationSerializer, **_PERSONALISATION_ERRORS},
    )
    def post(self, request: Request, customer_id: str) -> Response:
        return super().post(request, customer_id)


class CustomerExportApi(APIView):
    required_scope = ApiKey.Scope.CATALOG

    @extend_schema(
        summary="Everything stored about the customer, as JSON",
        description="The customer row, every interaction and impression, and the online state; streamed.",
        responses={200: CustomerExportSerializer, **_ERRORS},
    )
    def get(self, request: Request, customer_id: str) -> StreamingHttpResponse:
        try:
            export = privacy.customer_export(customer_id=_check_id(customer_id))
        except privacy.CustomerNotFound:
            raise NotFound(f"No customer with id {customer_id!r}.") from None
        return StreamingHttpResponse(export_json_chunks(export), content_type="application/json")
