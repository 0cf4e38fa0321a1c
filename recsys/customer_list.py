"""``GET /v1/customers``: customers, the most active first, for pickers (the demo storefront's, the admin's "preview
as customer"). Activity comes from the interactions, so the view lives at the top layer beside the other customer
endpoints (``recsys/api.py``) rather than in ``catalog``, which imports no other app.

Bounded whatever the data size: activity is counted over the latest ``ACTIVITY_WINDOW`` interactions (an id range
on the primary key), and a page holds at most ``MAX_LIMIT`` customers at an offset of at most ``MAX_OFFSET``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events.models import Interaction
from recsys.models import ApiKey

ACTIVITY_WINDOW = 200_000  # the latest interactions activity is counted over
MAX_LIMIT = 100
MAX_OFFSET = 10_000
ORDERINGS = ("-activity", "customer_id")


@dataclass(frozen=True)
class CustomerActivity:
    customer_id: str
    interactions: int  # among the latest ACTIVITY_WINDOW interactions
    purchases: int


_WINDOW = "r.id > (SELECT coalesce(max(id), 0) FROM events_interaction) - %(window)s"

_BY_ACTIVITY = f"""
SELECT c.external_id, count(*) AS interactions, count(*) FILTER (WHERE r.type = %(purchase)s) AS purchases
  FROM events_interaction r JOIN catalog_customer c ON c.id = r.customer_id
 WHERE {_WINDOW}
 GROUP BY c.external_id
 ORDER BY interactions DESC, purchases DESC, c.external_id
 LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 (interpolates a module constant only; values go as parameters)

_BY_ID = f"""
SELECT c.external_id, count(r.id), count(r.id) FILTER (WHERE r.type = %(purchase)s)
  FROM (SELECT id, external_id FROM catalog_customer ORDER BY external_id LIMIT %(limit)s OFFSET %(offset)s) c
  LEFT JOIN events_interaction r ON r.customer_id = c.id AND {_WINDOW}
 GROUP BY c.external_id
 ORDER BY c.external_id
"""  # noqa: S608 (same)


def customer_activity_list(*, ordering: str = "-activity", limit: int = 20, offset: int = 0) -> list[CustomerActivity]:
    """A page of customers with their recent activity; ``-activity``: the most interactions first (customers with
    none in the window are not listed), ``customer_id``: every customer by id. One query."""
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}")
    params = {
        "window": ACTIVITY_WINDOW, "purchase": int(Interaction.Type.PURCHASE),
        "limit": max(1, min(limit, MAX_LIMIT)), "offset": max(0, min(offset, MAX_OFFSET)),
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_BY_ACTIVITY if ordering == "-activity" else _BY_ID, params)
        rows = cursor.fetchall()
    return [CustomerActivity(str(external_id), int(n), int(purchases)) for external_id, n, purchases in rows]


# --- API --------------------------------------------------------------------------------------------------------


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
        responses={200: CustomerListOutputSerializer},
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
