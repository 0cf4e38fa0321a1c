"""Catalog API input validation and output shapes."""

from rest_framework import serializers

from catalog.models import EXTERNAL_ID_MAX, Customer, Item

MAX_TAGS = 50


class ItemInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=500)
    description = serializers.CharField(max_length=20_000, required=False, allow_blank=True, default="")
    category = serializers.CharField(max_length=EXTERNAL_ID_MAX, required=False, allow_null=True, default=None)
    brand = serializers.CharField(max_length=EXTERNAL_ID_MAX, required=False, allow_null=True, default=None)
    price = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, required=False, allow_null=True, default=None
    )
    in_stock = serializers.BooleanField(required=False, default=True)
    active = serializers.BooleanField(required=False, default=True)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, default=list, max_length=MAX_TAGS
    )
    attributes = serializers.DictField(required=False, default=dict)
    created_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ItemOutputSerializer(serializers.ModelSerializer):
    item_id = serializers.CharField(source="external_id")
    category = serializers.CharField(source="category.external_id", default=None, allow_null=True)
    brand = serializers.CharField(source="brand.external_id", default=None, allow_null=True)

    class Meta:
        model = Item
        fields = (
            "item_id", "title", "description", "category", "brand", "price", "in_stock", "active",
            "tags", "attributes", "created_at", "updated_at",
        )  # fmt: skip


class CustomerInputSerializer(serializers.Serializer):
    attributes = serializers.DictField(required=False)
    personalisation_opt_out = serializers.BooleanField(required=False)


class CustomerOutputSerializer(serializers.ModelSerializer):
    customer_id = serializers.CharField(source="external_id")

    class Meta:
        model = Customer
        fields = ("customer_id", "created_at", "attributes", "personalisation_opt_out")
