"""URLs of the demo storefront (mounted at "/"): home, item pages and the customer picker."""

from django.urls import path

from storefront import views as storefront

app_name = "storefront"

urlpatterns = [
    path("", storefront.home, name="home"),
    path("items/<id:item_id>", storefront.item_detail, name="item"),
    path("customer", storefront.customer_choose, name="customer"),
]
