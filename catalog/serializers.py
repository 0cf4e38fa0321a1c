"""Catalog API input validation and output shapes.

Ids (category, brand, tags) follow the one id rule (kernel.validation); ``attributes`` are bounded JSON at write
and rendered defensively at read, so nothing stored can make a later GET fail.
"""

from datetime import datetime

from rest_framework import serializers

from catalog.models import MAX_DESCRIPTION, MAX_TAGS, Customer, Item, created_at_problem
from kernel.validation import AttributesField, BodySerializer, IdField, check_text, sentence


class ItemInputSerializer(BodySerializer):
    title = serializers.CharField(max_length=500)
    description = serializers.CharField(max_length=MAX_DESCRIPTION, required=False, allow_blank=True, default="")
    # Surrounding whitespace stripped, as import_items does with every cell.
    category = IdField(strip=True, required=False, allow_null=True, default=None)
    brand = IdField(strip=True, required=False, allow_null=True, default=None)
    price = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, required=False, allow_null=True, default=None
    )
    in_stock = serializers.BooleanField(required=False, default=True)
    active = serializers.BooleanField(required=False, default=True)
    tags = serializers.ListField(child=IdField(strip=True), required=False, default=list, max_length=MAX_TAGS)
    attributes = AttributesField(required=False, default=dict)
    created_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_title(self, value: str) -> str:
        return check_text(value)

    def validate_description(self, value: str) -> str:
        return check_text(value, multiline=True)

    def validate_tags(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # a tag once, in the order given

    def validate_created_at(self, value: datetime | None) -> datetime | None:
        if (problem := created_at_problem(value)) is not None:
            raise serializers.ValidationError(sentence(problem))
        return value


class ItemOutputSerializer(serializers.ModelSerializer):
    item_id = serializers.CharField(source="external_id")
    category = serializers.CharField(source="category.external_id", default=None, allow_null=True)
    brand = serializers.CharField(source="brand.external_id", default=None, allow_null=True)
    attributes = AttributesField(read_only=True)

    class Meta:
        model = Item
        fields = (
            "item_id", "title", "description", "category", "brand", "price", "in_stock", "active",
            "tags", "attributes", "created_at", "updated_at",
        )  # fmt: skip


class CustomerInputSerializer(BodySerializer):
    attributes = AttributesField(required=False)
    personalisation_opt_out = serializers.BooleanField(required=False)


class CustomerOutputSerializer(serializers.ModelSerializer):
    customer_id = serializers.CharField(source="external_id")
    attributes = AttributesField(read_only=True)

    class Meta:
        model = Customer
        fields = ("customer_id", "created_at", "attributes", "personalisation_opt_out")
