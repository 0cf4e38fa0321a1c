"""Recommendation API input validation and output shapes.

The query strings of the hot endpoints (a list, the item-anchored lists) are validated by :func:`recommendation_query`
and :func:`count_query`: a plain-Python check accepts the everyday query and returns exactly what the serializer
would; anything it does not recognise as plainly valid goes through the serializer, which answers it (the same
values, or the same field-named 400). The serializers stay the one definition of the rules and the API schema;
tests/ranking/test_query_parsing.py checks the two agree on generated queries.
"""

import re
from typing import Any

from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import EXTERNAL_ID_MAX
from kernel.query_serializers import QuerySerializer
from kernel.validation import DOT_SEGMENTS, BodySerializer, IdField, optional_id
from ranking.pages import MAX_PAGE_WIDGETS, PAGE_WIDGET_KINDS
from ranking.serving import MAX_COUNT, MAX_EXCLUDE_REQUESTS, VERBS

MAX_EXCLUDE = 100
# Every reason code a list's item or group can carry: the pipeline's explanations (ranking/pipeline/stages.py
# reason_for; anchored.py for the item-anchored lists), "because_you_<verb>" for each verb an anchoring event is
# named by. tests/recsys/test_api_schema.py checks the pipeline gives no other.
REASON_CODES = (
    *(f"because_you_{verb}" for verb in dict.fromkeys(VERBS.values())),
    "bought_together", "also_liked", "similar", "similar_content", "popular_in_category", "for_you", "trending",
    "popular", "new_arrival", "featured", "discover",
)  # fmt: skip


class CountQuerySerializer(QuerySerializer):
    count = serializers.IntegerField(min_value=1, max_value=MAX_COUNT, default=10)


class RecommendationQuerySerializer(CountQuerySerializer):
    customer_id = serializers.CharField(max_length=EXTERNAL_ID_MAX, required=False, default="", allow_blank=True)
    session_id = serializers.CharField(max_length=EXTERNAL_ID_MAX, required=False, default="", allow_blank=True)
    surface = serializers.SlugField(max_length=32, default="home")
    category = serializers.CharField(max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="")
    exclude = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="Comma-separated item ids to leave out."
    )
    context_item_id = serializers.CharField(
        max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="",
        help_text="The item on the page the visitor is looking at: its neighbours join the candidates as if the "
        "visitor had just viewed it, and it is left out of the list. An id the catalog does not know is ignored.",
    )  # fmt: skip
    context_category = serializers.CharField(
        max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="",
        help_text="The category of the page: a fresh interest in it and its popular items first among the popular "
        "candidates. Shapes the list without filtering it (``category`` filters). Unknown ids are ignored.",
    )  # fmt: skip
    exclude_request_ids = serializers.CharField(
        required=False, allow_blank=True, default="",
        help_text=f"Comma-separated request ids (at most {MAX_EXCLUDE_REQUESTS}) of earlier answers to this customer "
        "or session (the last 30 minutes): their items are left out. Unknown or expired ids leave nothing out.",
    )  # fmt: skip
    debug = serializers.BooleanField(default=False, help_text="Add the pipeline trace (needs the admin scope).")

    def validate_exclude_request_ids(self, value: str) -> list[str]:
        return _request_ids(value.split(","))

    # The one id rule (kernel.validation): ids a read names can end up stored (impressions).
    def validate_customer_id(self, value: str) -> str:
        return optional_id(value)

    def validate_session_id(self, value: str) -> str:
        return optional_id(value)

    def validate_exclude(self, value: str) -> list[str]:
        return _exclude_ids(value)


def _exclude_ids(value: str) -> list[str]:
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if len(ids) > MAX_EXCLUDE:
        raise serializers.ValidationError(f"At most {MAX_EXCLUDE} item ids.")
    if any(len(item) > EXTERNAL_ID_MAX for item in ids):
        raise serializers.ValidationError(f"An item id is longer than {EXTERNAL_ID_MAX} characters.")
    return ids


def _request_ids(values: list[str]) -> list[str]:
    ids = [part.strip() for part in values if part.strip()]
    if len(ids) > MAX_EXCLUDE_REQUESTS:
        raise serializers.ValidationError(f"At most {MAX_EXCLUDE_REQUESTS} request ids.")
    for request_id in ids:
        if len(request_id) > 64 or not request_id.isprintable():
            raise serializers.ValidationError(f"Not a request id: {request_id[:70]!r}.")
    return ids


# --- The hot path's query strings ----------------------------------------------------------------------------------
# Building and running a DRF serializer costs more than a cached list's own work; these checks accept only what is
# plainly valid (ASCII digits, slugs, printable ids without surrounding whitespace, known booleans) and leave every
# other case, valid or not, to the serializer.

_COUNT = re.compile(r"[0-9]{1,3}")
_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,32}")  # SlugField(max_length=32)
_TRUE = frozenset(v for v in serializers.BooleanField.TRUE_VALUES if isinstance(v, str))
_FALSE = frozenset(v for v in serializers.BooleanField.FALSE_VALUES if isinstance(v, str))
_TEXT_FIELDS = ("customer_id", "session_id", "category", "context_item_id", "context_category")


def _plain_text(value: str, max_length: int | None = EXTERNAL_ID_MAX) -> bool:
    """A CharField value the serializer takes as it is: printable (no NUL, no surrogate), nothing to trim, short
    enough; for the id fields that is also everything ``optional_id`` asks."""
    return (max_length is None or len(value) <= max_length) and value.isprintable() and value == value.strip()


def _fast_count(params: QueryDict) -> int | None:
    value = params.get("count", "")
    if value == "":
        return 10
    if _COUNT.fullmatch(value) and 1 <= int(value) <= MAX_COUNT:
        return int(value)
    return None


def _fast_recommendation_query(params: QueryDict) -> dict[str, Any] | None:
    count = _fast_count(params)
    if count is None:
        return None
    data: dict[str, Any] = {"count": count}
    for name in _TEXT_FIELDS:
        value = params.get(name, "")
        # An id holding "/" or being "." / ".." may break the id rule's segment checks: the serializer decides.
        if not _plain_text(value) or "/" in value or value in DOT_SEGMENTS:
            return None
        data[name] = value
    surface = params.get("surface", "")
    if surface and not _SLUG.fullmatch(surface):
        return None
    data["surface"] = surface or "home"
    debug = params.get("debug", "")
    if debug in _TRUE:
        data["debug"] = True
    elif debug == "" or debug in _FALSE:
        data["debug"] = False
    else:
        return None
    exclude, request_ids = params.get("exclude", ""), params.get("exclude_request_ids", "")
    if not (_plain_text(exclude, None) and _plain_text(request_ids, None)):
        return None
    try:
        data["exclude"] = _exclude_ids(exclude)
        data["exclude_request_ids"] = _request_ids(request_ids.split(","))
    except serializers.ValidationError:
        return None
    return data


def recommendation_query(params: QueryDict) -> dict[str, Any]:
    """The validated query of a personalised list (``RecommendationQuerySerializer``'s ``validated_data``); raises
    its ``ValidationError`` (a 400 naming each field) when invalid."""
    data = _fast_recommendation_query(params)
    if data is not None:
        return data
    query = RecommendationQuerySerializer(data=params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def count_query(params: QueryDict) -> int:
    """The validated ``count`` of an item-anchored list (``CountQuerySerializer``); raises its ``ValidationError``."""
    count = _fast_count(params)
    if count is not None:
        return count
    query = CountQuerySerializer(data=params)
    query.is_valid(raise_exception=True)
    return int(query.validated_data["count"])


class PageWidgetSerializer(BodySerializer):
    kind = serializers.ChoiceField(choices=PAGE_WIDGET_KINDS)
    surface = serializers.SlugField(max_length=32, default="home", help_text="recommendations: the surface.")
    count = serializers.IntegerField(min_value=1, max_value=MAX_COUNT, default=10)
    # Ids in a JSON body are JSON strings (a number is refused, as in the events API), surrounding whitespace
    # stripped; blank means none.
    category = IdField(
        strip=True, max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="",
        help_text="recommendations: only this category.",
    )  # fmt: skip
    item_id = IdField(
        strip=True, max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="",
        help_text="similar: the anchor item (default: the page's context_item_id).",
    )  # fmt: skip
    groups = serializers.IntegerField(min_value=1, max_value=5, default=2, help_text="because_you_viewed: rows.")

    def validate_item_id(self, value: str) -> str:
        return optional_id(value)


class PageRequestSerializer(BodySerializer):
    customer_id = IdField(strip=True, max_length=EXTERNAL_ID_MAX, required=False, default="", allow_blank=True)
    session_id = IdField(strip=True, max_length=EXTERNAL_ID_MAX, required=False, default="", allow_blank=True)
    context_item_id = IdField(strip=True, max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="")
    context_category = IdField(strip=True, max_length=EXTERNAL_ID_MAX, required=False, allow_blank=True, default="")
    exclude_request_ids = serializers.ListField(
        child=IdField(strip=True, max_length=64), required=False, default=list, max_length=MAX_EXCLUDE_REQUESTS
    )
    widgets = PageWidgetSerializer(many=True, min_length=1, max_length=MAX_PAGE_WIDGETS)

    def validate_customer_id(self, value: str) -> str:
        return optional_id(value)

    def validate_session_id(self, value: str) -> str:
        return optional_id(value)

    def validate_exclude_request_ids(self, value: list[str]) -> list[str]:
        return _request_ids(value)


@extend_schema_field({"type": "string", "enum": list(REASON_CODES)}, component_name="ReasonCode")
class ReasonCodeField(serializers.ChoiceField):
    """A reason code (one of :data:`REASON_CODES`), a ``ReasonCode`` enum in the schema."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=REASON_CODES, **kwargs)


class ReasonSerializer(serializers.Serializer):
    code = ReasonCodeField(
        help_text="Machine-readable: why the item is shown (featured: a pinned item; discover: the exploration "
        "slot; because_you_<verb>: a neighbour of what the visitor viewed, added, bought or rated)."
    )
    text = serializers.CharField(help_text="For people, e.g. 'Because you viewed Red Mug'.")


class RecommendedItemSerializer(serializers.Serializer):
    item_id = serializers.CharField()
    title = serializers.CharField()
    category = serializers.CharField(allow_null=True)
    price = serializers.FloatField(allow_null=True)
    score = serializers.FloatField()
    reason = ReasonSerializer()
    sources = serializers.ListField(child=serializers.CharField(), help_text="Retrieval sources that found it.")


class RecommendationListSerializer(serializers.Serializer):
    request_id = serializers.CharField(help_text="Send it back with events from this list to attribute them.")
    surface = serializers.CharField()
    experiment = serializers.CharField(allow_null=True)
    variant = serializers.CharField(allow_null=True)
    model_version = serializers.IntegerField(allow_null=True)
    degraded = serializers.BooleanField(help_text="True when served without the model or the online state.")
    items = RecommendedItemSerializer(many=True)
    debug = serializers.DictField(required=False, allow_null=True)


class AnchorGroupSerializer(serializers.Serializer):
    anchor_item_id = serializers.CharField()
    anchor_title = serializers.CharField()
    reason = ReasonSerializer()
    items = RecommendedItemSerializer(many=True)


class AnchorGroupsSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    experiment = serializers.CharField(allow_null=True)
    variant = serializers.CharField(allow_null=True)
    model_version = serializers.IntegerField(allow_null=True)
    degraded = serializers.BooleanField(help_text="True when served without the model (no groups then).")
    groups = AnchorGroupSerializer(many=True)


class DryRunStartSerializer(BodySerializer):
    """What to try on recent traffic: a rule (usually a draft), a change of serving settings, or both."""

    rule_id = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1,
        help_text="The business rule to try (a draft, or a published rule with its current settings).",
    )  # fmt: skip
    days = serializers.FloatField(default=7.0, help_text="How many days of served requests to sample (at most 90).")
    sample = serializers.IntegerField(default=500, help_text="How many requests to re-serve (at most 5,000).")
    config = serializers.DictField(
        required=False, default=dict,
        help_text="Serving settings to change on the draft side only: diversity ('greedy'/'mmr'), diversity_cap, "
        "max_per_brand, mmr_lambda, exploration_share.",
    )  # fmt: skip


class DryRunItemSerializer(serializers.Serializer):
    item_id = serializers.CharField()
    title = serializers.CharField()
    lists_entered = serializers.IntegerField(required=False)
    lists_left = serializers.IntegerField()
    lists_moved = serializers.IntegerField(required=False)
    positions_gained = serializers.IntegerField(required=False, help_text="Summed over the lists it stayed in.")
    mean_positions_gained = serializers.FloatField(required=False)


class DryRunCategorySerializer(serializers.Serializer):
    name = serializers.CharField()
    before = serializers.FloatField(help_text="Share of the sample's slots.")
    after = serializers.FloatField()


class DryRunEstimateSerializer(serializers.Serializer):
    outcome = serializers.CharField()
    lists = serializers.IntegerField()
    estimate = serializers.BooleanField(help_text="Always true: modelled from observed rates, not measured.")
    observed_events = serializers.IntegerField(required=False, help_text="Attributed events behind the rates.")
    before_per_1000 = serializers.FloatField(required=False)
    after_per_1000 = serializers.FloatField(required=False)
    change = serializers.FloatField(required=False, help_text="Relative change, e.g. 0.05 = +5%.")
    interval = serializers.ListField(child=serializers.FloatField(), required=False, help_text="95% interval.")


class DryRunResultSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField(allow_null=True)
    rule = serializers.CharField(allow_null=True)
    days = serializers.FloatField()
    sample = serializers.IntegerField()
    config = serializers.DictField()
    surfaces = serializers.ListField(child=serializers.CharField())
    lists = serializers.IntegerField(help_text="Requests re-served.")
    lists_changed = serializers.IntegerField()
    share_changed = serializers.FloatField()
    items_affected = serializers.IntegerField()
    items = DryRunItemSerializer(many=True)
    pushed_out = DryRunItemSerializer(many=True)
    categories = DryRunCategorySerializer(many=True)
    estimate = serializers.DictField(child=DryRunEstimateSerializer())
    seconds = serializers.FloatField()
    notes = serializers.ListField(
        child=serializers.CharField(), help_text="What the numbers may hide (e.g. nothing to replay), in words."
    )


class DryRunSerializer(serializers.Serializer):
    """A run's state as ranking.dry_run keeps it: what was asked, progress, times, and the result or the error."""

    id = serializers.CharField()
    status = serializers.ChoiceField(choices=["queued", "running", "done", "failed"])
    rule_id = serializers.IntegerField(allow_null=True, help_text="The rule tried; null for settings alone.")
    days = serializers.FloatField()
    sample = serializers.IntegerField()
    config = serializers.DictField(required=False, help_text="The serving settings changed on the draft side.")
    done = serializers.IntegerField(required=False)
    total = serializers.IntegerField(required=False)
    queued_at = serializers.FloatField(required=False, help_text="Unix time.")
    started_at = serializers.FloatField(required=False, help_text="Unix time the worker took it.")
    finished_at = serializers.FloatField(required=False, help_text="Unix time it was done or failed.")
    error = serializers.CharField(required=False, help_text="Why it failed.")
    field = serializers.CharField(required=False, help_text="The input a failed run refused (e.g. rule_id).")
    result = DryRunResultSerializer(required=False)


class PageWidgetResultSerializer(serializers.Serializer):
    kind = serializers.CharField()
    request_id = serializers.CharField(help_text="This widget's own request id: send it back with its events.")
    surface = serializers.CharField()
    experiment = serializers.CharField(allow_null=True)
    variant = serializers.CharField(allow_null=True)
    items = RecommendedItemSerializer(many=True, help_text="recommendations and similar widgets.")
    groups = AnchorGroupSerializer(many=True, help_text="because_you_viewed widgets.")


class PageSerializer(serializers.Serializer):
    model_version = serializers.IntegerField(allow_null=True)
    degraded = serializers.BooleanField()
    widgets = PageWidgetResultSerializer(many=True)
