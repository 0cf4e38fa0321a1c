"""A base for the serializers that validate a hot endpoint's query string (shared kernel: imports no app of ours).

DRF builds every serializer instance's fields by deep-copying the declared ones, which re-creates each field and
its validators: on a cached recommendation that was about a fifth of the request's CPU. Query fields hold no
per-request state (they read the value, validate it, return it), so each thread builds them once per class and
every later instance reuses them. Per thread, because a field is bound to one serializer at a time.
"""

from __future__ import annotations

import threading

from django.utils.functional import cached_property
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

_bound_fields = threading.local()


class QuerySerializer(serializers.Serializer):
    """Validates ``data=request.query_params``. Subclasses declare plain fields and ``validate_<field>`` methods,
    which run on the current instance as usual; they must not keep state on fields or read ``self.context``
    through a field (its parent is the first instance of the thread)."""

    @cached_property
    def fields(self) -> BindingDict:  # type: ignore[override]
        cache: dict[type, BindingDict] = _bound_fields.__dict__.setdefault("by_class", {})
        fields = cache.get(type(self))
        if fields is None:
            fields = BindingDict(self)
            for name, field in self.get_fields().items():
                fields[name] = field
            cache[type(self)] = fields
        return fields
