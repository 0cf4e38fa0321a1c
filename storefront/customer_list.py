"""``GET /v1/customers``: customers, the most active first, for pickers (the demo storefront's). Beside the other
customer endpoints (``privacy/api.py``); the query is ``events.selectors.customer_activity_list``, bounded whatever
the data size.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events.selectors import (
    ACTIVITY_WINDOW,
    MAX_LIMIT,
    MAX_OFFSET,
    ORDERINGS,
    customer_activity_list,
)
from kernel.models import ApiKey
from kernel.schema import api_errors


class CustomerListInputSerializer(serializers.Serializer):
    ordering = serializers.ChoiceField(choices=ORDERINGS, required=False, default="-activity")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, required=False, default=20)
    offset = serializers.IntegerField(min_value=0, max_value=MAX_OFFSET, required=False, default=0)


class CustomerActivitySerializer(serializers.Serializer):
    customer_id = serializers.CharField()
    interactions = serializers.IntegerField(help_text=f"Among the latest {ACTIVITY_WINDOW:,} interactions.")
    purchases = serializers.IntegerField(help_text="Of those, purchases.")


class CustomerListOutputSerializer(serializers.Serializer):
    results = CustomerActivitySerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="The next page, or null on the last one.")


class CustomerListApi(APIView):
    required_scope = ApiKey.Scope.CATALOG

    @extend_schema(
        operation_id="v1_customers_list",
        summary="List customers, the most active first",
        description=(
            f"A page of customers with their interactions and purchases among the latest {ACTIVITY_WINDOW:,} "
            "interactions. `ordering=-activity` (default) lists the most active first and leaves out customers "
            "without any recent interaction; `ordering=customer_id` lists every customer by id. Pages of at most "
            f"{MAX_LIMIT} customers, offsets up to {MAX_OFFSET:,}."
        ),
        parameters=[CustomerListInputSerializer],
        responses={200: CustomerListOutputSerializer, **api_errors(400)},
    )
    def get(self, request: Request) -> Response:
        params = CustomerListInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        page = customer_activity_list(**params.validated_data)
        data = params.validated_data
        following = data["offset"] + data["limit"]
        more = len(page) == data["limit"] and following <= MAX_OFFSET
        next_url = (
            request.build_absolute_uri(
                f"{request.path}?ordering={data['ordering']}&limit={data['limit']}&offset={following}"
            )
            if more
            else None
        )
        return Response(CustomerListOutputSerializer({"results": page, "next": next_url}).data)
