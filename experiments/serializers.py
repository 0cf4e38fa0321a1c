"""Output serializers of the experiment results (read from the frozen dataclasses of experiments.results)."""

from __future__ import annotations

from rest_framework import serializers


class ComparisonSerializer(serializers.Serializer):
    difference = serializers.FloatField(help_text="Variant minus control.")
    relative_lift = serializers.FloatField(allow_null=True, help_text="Difference / control value.")
    ci_low = serializers.FloatField(help_text="95% confidence interval of the difference.")
    ci_high = serializers.FloatField()
    p_value = serializers.FloatField()
    p_value_holm = serializers.FloatField(help_text="Holm-adjusted across the variants compared with the control.")
    always_valid_p_value = serializers.FloatField(
        allow_null=True, help_text="mSPRT, Holm-adjusted like p_value_holm; safe to check at any time."
    )
    chance_to_beat_control = serializers.FloatField(allow_null=True)
    method = serializers.CharField(help_text="How the interval and p-values were computed (unit of analysis, test).")
    verdict = serializers.CharField(
        help_text='"better" or "worse" when the interval excludes 0 and the Holm-adjusted p-value is below 0.05, '
        'else "".'
    )


class MetricValueSerializer(serializers.Serializer):
    metric = serializers.CharField()
    numerator = serializers.FloatField()
    denominator = serializers.IntegerField()
    value = serializers.FloatField(allow_null=True)
    vs_control = ComparisonSerializer(allow_null=True)


class GuardrailSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["min", "max"])
    threshold = serializers.FloatField()
    value = serializers.FloatField(allow_null=True)
    breached = serializers.BooleanField()


class VariantResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    is_control = serializers.BooleanField()
    weight = serializers.FloatField()
    exposures = serializers.IntegerField(help_text="Distinct customers (or anonymous sessions) shown a list.")
    impressions = serializers.IntegerField()
    clicks = serializers.IntegerField(help_text="Impressions with at least one click.")
    add_to_carts = serializers.IntegerField(help_text="Exposed customers with an attributed add-to-cart.")
    conversions = serializers.IntegerField(help_text="Exposed customers with an attributed purchase.")
    revenue = serializers.FloatField()
    ctr = MetricValueSerializer()
    add_to_cart_rate = MetricValueSerializer()
    conversion_rate = MetricValueSerializer()
    revenue_per_customer = MetricValueSerializer()
    revenue_per_customer_cuped = MetricValueSerializer(allow_null=True)
    sample_size_required = serializers.IntegerField(allow_null=True)
    sample_size_progress = serializers.FloatField(allow_null=True)
    guardrails = GuardrailSerializer(many=True)


class SeriesPointSerializer(serializers.Serializer):
    day = serializers.DateField()
    variant = serializers.CharField()
    impressions = serializers.IntegerField()
    clicks = serializers.IntegerField()
    exposures = serializers.IntegerField()
    primary_value = serializers.FloatField(allow_null=True)


class WeightPointSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    variant = serializers.CharField()
    weight = serializers.FloatField()


class ExperimentResultsSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    surface = serializers.CharField()
    namespace = serializers.ListField(
        allow_null=True, help_text="GrowthBook's namespace [id, start, end): only units in the range are in it."
    )
    status = serializers.CharField()
    mode = serializers.CharField()
    primary_metric = serializers.CharField()
    minimum_detectable_effect = serializers.FloatField()
    attribution_window_hours = serializers.IntegerField()
    start_at = serializers.DateTimeField(allow_null=True)
    end_at = serializers.DateTimeField(allow_null=True)
    winner = serializers.CharField(allow_null=True)
    variants = VariantResultSerializer(many=True)
    srm_p_value = serializers.FloatField(allow_null=True)
    srm_flagged = serializers.BooleanField()
    guardrails_breached = serializers.BooleanField()
    cuped_variance_reduction = serializers.FloatField(allow_null=True)
    cuped_theta = serializers.FloatField(allow_null=True)
    cuped_note = serializers.CharField(allow_null=True)
    series = SeriesPointSerializer(many=True)
    weight_history = WeightPointSerializer(many=True)
    warnings = serializers.ListField(child=serializers.CharField())
    computed_at = serializers.DateTimeField()
