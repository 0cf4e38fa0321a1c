"""Catalog endpoints: items and customers by the storefront's ids (scope ``catalog``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import selectors, services
from catalog.serializers import (
    CustomerInputSerializer,
    CustomerOutputSerializer,
    ItemInputSerializer,
    ItemOutputSerializer,
)
from kernel.models import ApiKey
from kernel.schema import BODY_ERRORS, api_errors
from kernel.validation import check_id

_NO_ITEM = {404: "No item with this id."}
_NO_CUSTOMER = {404: "No customer with this id."}


class ItemApi(APIView):
    required_scope = ApiKey.Scope.CATALOG

    @extend_schema(responses={200: ItemOutputSerializer, **api_errors(400, 404, descriptions=_NO_ITEM)})
    def get(self, request: Request, item_id: str) -> Response:
        item = selectors.item_get(external_id=check_id(item_id, "item_id"))
        if item is None:
            raise NotFound(f"No item with id {item_id!r}.")
        return Response(ItemOutputSerializer(item).data)

    @extend_schema(
        request=ItemInputSerializer,
        responses={200: ItemOutputSerializer, 201: ItemOutputSerializer, **api_errors(400, *BODY_ERRORS)},
    )
    def put(self, request: Request, item_id: str) -> Response:
        check_id(item_id, "item_id")
        serializer = ItemInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        data["tags"] = tuple(data["tags"])
        item, created = services.item_upsert(external_id=item_id, data=services.ItemData(**data))
        item = selectors.item_get(external_id=item.external_id)
        return Response(
            ItemOutputSerializer(item).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(responses={204: None, **api_errors(400, 404, descriptions=_NO_ITEM)})
    def delete(self, request: Request, item_id: str) -> Response:
        if not services.item_deactivate(external_id=check_id(item_id, "item_id")):
            raise NotFound(f"No item with id {item_id!r}.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class CustomerApi(APIView):
    required_scope = ApiKey.Scope.CATALOG

    @extend_schema(responses={200: CustomerOutputSerializer, **api_errors(400, 404, descriptions=_NO_CUSTOMER)})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = selectors.customer_get(external_id=check_id(customer_id, "customer_id"))
        if customer is None:
            raise NotFound(f"No customer with id {customer_id!r}.")
        return Response(CustomerOutputSerializer(customer).data)

    @extend_schema(
        request=CustomerInputSerializer,
        responses={200: CustomerOutputSerializer, 201: CustomerOutputSerializer, **api_errors(400, *BODY_ERRORS)},
    )
    def put(self, request: Request, customer_id: str) -> Response:
        check_id(customer_id, "customer_id")
        serializer = CustomerInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        customer, created = services.customer_upsert(external_id=customer_id, **serializer.validated_data)
        return Response(
            CustomerOutputSerializer(customer).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
