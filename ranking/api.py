"""Recommendation endpoints (scope ``recommend``): personalised lists, similar items, bought together, and
"because you viewed" groups. Views validate, call one service, serialize."""

from __future__ import annotations

from dataclasses import asdict

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from experiments import services as experiments
from kernel.auth import request_has_scope
from kernel.models import ApiKey
from kernel.schema import BODY_ERRORS, api_errors
from kernel.validation import check_id
from ranking import dry_run, pages, serving
from ranking.serializers import (
    AnchorGroupsSerializer,
    CountQuerySerializer,
    DryRunSerializer,
    DryRunStartSerializer,
    PageRequestSerializer,
    PageSerializer,
    RecommendationListSerializer,
    RecommendationQuerySerializer,
    count_query,
    recommendation_query,
)

FORCE_VARIANT_HEADER = "X-Experiment-Variant"
# The item-anchored lists: a bad count or id, or no such item.
_ANCHORED_RESPONSES = {
    200: RecommendationListSerializer,
    **api_errors(400, 404, descriptions={404: "No item with this id."}),
}


def _list_body(result: serving.RecommendationList) -> dict:
    body = result.as_dict()
    body.pop("cache")
    if body.get("debug") is None:
        body.pop("debug")
    return body


def _json(request: Request, body: dict) -> HttpResponse | Response:
    """``Response(body)``, rendered at once by the negotiated renderer when it is plain JSON (the everyday case):
    the same bytes and content type without DRF's response machinery, a measurable share of a cached list's time.
    Anything else negotiated (e.g. ``application/json; indent=4``) goes through DRF as usual."""
    renderer, media_type = request.accepted_renderer, request.accepted_media_type
    if media_type == renderer.media_type == "application/json" and renderer.charset is None:
        return HttpResponse(renderer.render(body, media_type), content_type=media_type)
    return Response(body)


class RecommendationListApi(APIView):
    required_scope = ApiKey.Scope.RECOMMEND

    @extend_schema(
        summary="A personalised list",
        parameters=[
            RecommendationQuerySerializer,
            OpenApiParameter(
                FORCE_VARIANT_HEADER, str, OpenApiParameter.HEADER, required=False,
                description="QA only (admin scope): serve this variant, as 'experiment_key:variant' or 'variant', "
                "of an experiment running on the surface (else a 400 naming the header).",
            ),
        ],
        responses={
            200: RecommendationListSerializer,
            **api_errors(400, descriptions={
                403: "The API key lacks the 'recommend' scope, or asks for debug=true or a forced variant without "
                "the 'admin' scope.",
            }),
        },
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        data = recommendation_query(request.query_params)
        forced = request.headers.get(FORCE_VARIANT_HEADER) or None
        if (data["debug"] or forced) and not request_has_scope(request, ApiKey.Scope.ADMIN):
            raise PermissionDenied("debug=true and forced variants need an API key with the 'admin' scope.")
        if forced is not None and not experiments.forced_variant_known(surface=data["surface"], forced_variant=forced):
            raise ValidationError({FORCE_VARIANT_HEADER: [
                f"No running experiment on the surface {data['surface']!r} has the variant {forced[:100]!r} (send "
                "'experiment_key:variant' or 'variant')."
            ]})  # fmt: skip
        result = serving.recommend(
            serving.RecommendRequest(
                customer_id=data["customer_id"], session_id=data["session_id"], surface=data["surface"],
                count=data["count"], category=data["category"] or None, exclude=tuple(data["exclude"]),
                context_item_id=data["context_item_id"], context_category=data["context_category"],
                debug=data["debug"], forced_variant=forced, exclude_request_ids=tuple(data["exclude_request_ids"]),
            )
        )  # fmt: skip
        return _json(request, _list_body(result))


class _ItemAnchoredListApi(APIView):
    """A list anchored on one item; subclasses name the service that makes it."""

    required_scope = ApiKey.Scope.RECOMMEND

    @staticmethod
    def make_list(*, item_id: str, count: int) -> serving.RecommendationList:
        raise NotImplementedError

    def get(self, request: Request, item_id: str) -> Response:
        count = count_query(request.query_params)
        try:
            result = self.make_list(item_id=check_id(item_id, "item_id"), count=count)
        except serving.UnknownItem:
            raise NotFound(f"No item with id {item_id!r}.") from None
        return _json(request, _list_body(result))


@extend_schema(summary="Items similar to this one", parameters=[CountQuerySerializer],
               responses=_ANCHORED_RESPONSES)  # fmt: skip
class SimilarItemsApi(_ItemAnchoredListApi):
    """Collaborative neighbours blended with content similarity; content alone for items without interactions."""

    make_list = staticmethod(serving.similar_items)


@extend_schema(summary="Frequently bought together with this item", parameters=[CountQuerySerializer],
               responses=_ANCHORED_RESPONSES)  # fmt: skip
class BoughtTogetherApi(_ItemAnchoredListApi):
    """Co-purchases in the same basket, topped up with what customers who liked the item also liked."""

    make_list = staticmethod(serving.bought_together)


class BecauseYouViewedApi(APIView):
    required_scope = ApiKey.Scope.RECOMMEND

    @extend_schema(summary="Lists grouped by recently viewed or bought items", parameters=[CountQuerySerializer],
                   responses={200: AnchorGroupsSerializer, **api_errors(400)})  # fmt: skip
    def get(self, request: Request, customer_id: str) -> Response:
        count = count_query(request.query_params)
        result = serving.because_you_viewed(customer_id=check_id(customer_id, "customer_id"), count=count)
        return Response(asdict(result))


class RuleDryRunStartApi(APIView):
    """Try a draft business rule (or a serving-settings change) on recent traffic: starts a background run."""

    required_scope = ApiKey.Scope.ADMIN

    @extend_schema(
        summary="Try a draft rule on recent traffic",
        description="Re-serves a sample of the last `days` of served requests with and without the draft and "
        "compares them (lists changed, positions gained/lost, items pushed out, category mix, an estimate of the "
        "click/purchase change with a 95% interval). Runs on a Celery worker; poll the returned run.",
        request=DryRunStartSerializer,
        responses={202: DryRunSerializer, **api_errors(400, *BODY_ERRORS)},
    )  # fmt: skip
    def post(self, request: Request) -> Response:
        data = DryRunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        try:
            queued = dry_run.run_start(
                rule_id=values["rule_id"], days=values["days"], sample=values["sample"],
                config_changes=values["config"],
            )  # fmt: skip
        except dry_run.DryRunError as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        return Response(queued, status=202)


class RuleDryRunApi(APIView):
    required_scope = ApiKey.Scope.ADMIN

    @extend_schema(
        summary="A dry run's progress and result",
        responses={
            200: DryRunSerializer,
            **api_errors(400, 404, descriptions={404: "No dry run with this id (runs are kept for 7 days)."}),
        },
    )
    def get(self, request: Request, run_id: str) -> Response:
        state = dry_run.run_status(run_id=check_id(run_id, "run_id"))
        if state is None:
            raise NotFound(f"No dry run {run_id!r} (runs are kept for 7 days).")
        return Response(state)


class PageApi(APIView):
    """Several widgets of one page in one call, without repeats (``ranking.pages.recommend_page``)."""

    required_scope = ApiKey.Scope.RECOMMEND

    @extend_schema(summary="A whole page of widgets, no item twice", request=PageRequestSerializer,
                   responses={200: PageSerializer, **api_errors(400, *BODY_ERRORS)})  # fmt: skip
    def post(self, request: Request) -> Response:
        body = PageRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        widgets = tuple(
            pages.PageWidget(
                kind=w["kind"], surface=w["surface"], count=w["count"], category=w["category"] or None,
                item_id=w["item_id"], groups=w["groups"],
            )
            for w in data["widgets"]
        )  # fmt: skip
        try:
            page = pages.recommend_page(
                pages.PageRequest(
                    customer_id=data["customer_id"], session_id=data["session_id"], widgets=widgets,
                    context_item_id=data["context_item_id"], context_category=data["context_category"],
                    exclude_request_ids=tuple(data["exclude_request_ids"]),
                )
            )  # fmt: skip
        except pages.PageWidgetError as exc:
            # DRF's shape for a list's field errors: one entry per widget, the failing one naming its field.
            entries: list[dict[str, list[str]]] = [{} for _ in widgets]
            entries[exc.index] = {exc.field: [exc.message]}
            raise ValidationError({"widgets": entries}) from None
        return Response(
            {
                "model_version": page.model_version,
                "degraded": page.degraded,
                "widgets": [
                    {
                        "kind": w.kind, "request_id": w.request_id, "surface": w.surface, "experiment": w.experiment,
                        "variant": w.variant, "items": [asdict(item) for item in w.items],
                        "groups": [asdict(group) for group in w.groups],
                    }
                    for w in page.widgets
                ],
            }
        )  # fmt: skip
