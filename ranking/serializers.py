"""Recommendation API input validation and output shapes."""

from rest_framework import serializers

from catalog.models import EXTERNAL_ID_MAX
from kernel.query_serializers import QuerySerializer
from kernel.validation import optional_id
from ranking.serving import MAX_COUNT

MAX_EXCLUDE = 100


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
    debug = serializers.BooleanField(default=False, help_text="Add the pipeline trace (needs the admin scope).")

    # The one id rule (kernel.validation): ids a read names can end up stored (impressions).
    def validate_customer_id(self, value: str) -> str:
        return optional_id(value)

    def validate_session_id(self, value: str) -> str:
        return optional_id(value)

    def validate_exclude(self, value: str) -> list[str]:
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if len(ids) > MAX_EXCLUDE:
            raise serializers.ValidationError(f"At most {MAX_EXCLUDE} item ids.")
        if any(len(item) > EXTERNAL_ID_MAX for item in ids):
            raise serializers.ValidationError(f"An item id is longer than {EXTERNAL_ID_MAX} characters.")
        return ids


class ReasonSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, e.g. because_you_viewed, trending, popular.")
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
    groups = AnchorGroupSerializer(many=True)
