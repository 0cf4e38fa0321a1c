from django.urls import path

from catalog import api

urlpatterns = [
    path("items/<str:item_id>", api.ItemApi.as_view(), name="item"),
    path("customers/<str:customer_id>", api.CustomerApi.as_view(), name="customer"),
]
