"""The demo storefront pages, the demo data (build, load, traffic replay) and runstack."""

from django.apps import AppConfig


class StorefrontConfig(AppConfig):
    name = "storefront"
    verbose_name = "Demo storefront"
