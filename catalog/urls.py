from django.urls import path

from catalog import api

urlpatterns = [
    path("items/<id:item_id>", api.ItemApi.as_view(), name="item"),
    path("customers/<id:customer_id>", api.CustomerApi.as_view(), name="customer"),
]
