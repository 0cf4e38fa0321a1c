"""Path converters the API's routes share (shared kernel: imports no app of ours)."""

from __future__ import annotations

from django.urls import register_converter


class ExternalIdConverter:
    """A customer, item or session id in a path: any characters, ``/`` included (a shop's SKU ``WX/100-B``, a
    customer ``acme/42``), encoded as ``%2F`` or not; the id rule (:mod:`kernel.validation`) is checked by the view.

    Django's ``str`` converter stops at ``/``, so such an id could be stored through a body but never read, updated,
    exported or erased through its path. An id may hold ``/``, so a route with a suffix after the id
    (``customers/<id:customer_id>/export``) must come before the bare one (``customers/<id:customer_id>``), which
    would also match ``acme/42/export``: recsys/urls.py orders them. An id that itself ends in such a suffix
    (``x/export``) would read as that sub-resource of ``x``: the id rule refuses it
    (``kernel.validation.SUBRESOURCE_NAMES``).
    """

    # Any character, a line break included ("." stops at one: an id holding a newline got a 404 instead of the 400
    # that names the field).
    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExternalIdConverter, "id")
