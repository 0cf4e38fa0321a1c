"""Recommendation endpoints (scope ``recommend``): personalised lists, similar items, bought together, and
"because you viewed" groups. Views validate, call one service, serialize."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from kernel.auth import request_has_scope
from kernel.models import ApiKey
from kernel.validation import check_id
from ranking import serving
from ranking.serializers import (
    AnchorGroupsSerializer,
    CountQuerySerializer,
    RecommendationListSerializer,
    RecommendationQuerySerializer,
)

FORCE_VARIANT_HEADER = "X-Experiment-Variant"


def _list_body(result: serving.RecommendationList) -> dict:
    body = result.as_dict()
    body.pop("cache")
    if body.get("debug") is None:
        body.pop("debug")
    return body


class RecommendationListApi(APIView):
    required_scope = ApiKey.Scope.RECOMMEND

    @extend_schema(
        summary="A personalised list",
        parameters=[
            RecommendationQuerySerializer,
            OpenApiParameter(
                FORCE_VARIANT_HEADER, str, OpenApiParameter.HEADER, required=False,
                description="QA only (admin scope): serve this variant, as 'experiment_key:variant' or 'variant'.",
            ),
        ],
        responses=RecommendationListSerializer,
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        query = RecommendationQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        forced = request.headers.get(FORCE_VARIANT_HEADER) or None
        if (data["debug"] or forced) and not request_has_scope(request, ApiKey.Scope.ADMIN):
            raise PermissionDenied("debug=true and forced variants need an API key with the 'admin' scope.")
        result = serving.recommend(
            serving.RecommendRequest(
                customer_id=data["customer_id"], session_id=data["session_id"], surface=data["surface"],
                count=data["count"], category=data["category"] or None, exclude=tuple(data["exclude"]),
                context_item_id=data["context_item_id"], context_category=data["context_category"],
                debug=data["debug"], forced_variant=forced,
            )
        )  # fmt: skip
        return Response(_list_body(result))


class _ItemAnchoredListApi(APIView):
    """A list anchored on one item; subclasses name the service that makes it."""

    required_scope = ApiKey.Scope.RECOMMEND

    @staticmethod
    def make_list(*, item_id: str, count: int) -> serving.RecommendationList:
        raise NotImplementedError

    def get(self, request: Request, item_id: str) -> Response:
        query = CountQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:
            result = self.make_list(item_id=check_id(item_id, "item_id"), count=query.validated_data["count"])
        except serving.UnknownItem:
            raise NotFound(f"No item with id {item_id!r}.") from None
        return Response(_list_body(result))


@extend_schema(summary="Items similar to this one", parameters=[CountQuerySerializer],
               responses=RecommendationListSerializer)  # fmt: skip
class SimilarItemsApi(_ItemAnchoredListApi):
    """Collaborative neighbours blended with content similarity; content alone for items without interactions."""

    make_list = staticmethod(serving.similar_items)


@extend_schema(summary="Frequently bought together with this item", parameters=[CountQuerySerializer],
               responses=RecommendationListSerializer)  # fmt: skip
class BoughtTogetherApi(_ItemAnchoredListApi):
    """Co-purchases in the same basket, topped up with what buyers of the item also bought."""

    make_list = staticmethod(serving.bought_together)


class BecauseYouViewedApi(APIView):
    required_scope = ApiKey.Scope.RECOMMEND

    @extend_schema(summary="Lists grouped by recently viewed or bought items", parameters=[CountQuerySerializer],
                   responses=AnchorGroupsSerializer)  # fmt: skip
    def get(self, request: Request, customer_id: str) -> Response:
        query = CountQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        result = serving.because_you_viewed(
            customer_id=check_id(customer_id, "customer_id"), count=query.validated_data["count"]
        )
        return Response(asdict(result))
