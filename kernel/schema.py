"""OpenAPI description of the API for drf-spectacular: our API-key authentication, the error responses every
operation shares (:func:`api_errors`, with the bodies :mod:`kernel.exceptions` really answers) and nullable nested
objects that OpenAPI 3.0.3 validators accept."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "kernel.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer rk_…`, created in the admin or with "
            "`manage.py create_api_key`. Each endpoint needs a scope (recommend, events, catalog, admin).",
        }


# --- Error responses ----------------------------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """The body of every error but a 400 that names fields: `{"detail": "…"}` (DRF's)."""

    detail = serializers.CharField(help_text="What went wrong, in words for people.")


class ValidationErrorSerializer(serializers.Serializer):
    """A 400's body (for the schema; DRF writes it, :func:`kernel.exceptions.error_paths` names list elements)."""


# A field's messages; for a list of objects (a page's ``widgets``) one entry per element, ``{}`` when valid, or the
# list's own messages keyed by ``non_field_errors`` (too few, too many).
_MESSAGES = {"type": "array", "items": {"type": "string"}}
_NESTED = {"type": "object", "additionalProperties": _MESSAGES}
_FIELD_ERRORS = {"anyOf": [{"type": "array", "items": {"anyOf": [{"type": "string"}, _NESTED]}}, _NESTED]}


class ValidationErrorSchema(OpenApiSerializerExtension):
    """``ValidationErrorSerializer`` as the object it stands for: keys are the fields, values their messages."""

    target_class = ValidationErrorSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "description": (
                "Each key names a field of the query, the body or the path: an element of a list by its index "
                "(`tags[2]`), a setting by its path (`config.diversity_cap`), a request header by its name "
                "(`X-Experiment-Variant`), a problem with the body as a whole by `non_field_errors`; each value is "
                'the list of messages. Example: `{"price": ["Ensure this value is greater than or equal to 0."]}`. '
                'A body that is not usable JSON, or holds a value that cannot be stored, is `{"detail": "…"}`.'
            ),
            "properties": {"detail": {"type": "string", "description": "Only when the body as such is unusable."}},
            "additionalProperties": _FIELD_ERRORS,
        }


# Statuses every operation behind an API key can answer, whatever it does: no or a bad key (kernel.auth), a key
# without the scope, an Accept header without JSON (kernel.negotiation), a rate limit (kernel.throttling and the
# unauthenticated limit in kernel.auth), Postgres or Redis unavailable where the answer needs them
# (kernel.exceptions; a key this process never verified needs Postgres).
COMMON_ERRORS = (401, 403, 406, 429, 503)
# Statuses of an operation that reads a JSON body besides (kernel.parsers.BoundedJSONParser).
BODY_ERRORS = (413, 415)

_DESCRIPTIONS = {
    400: "Invalid input, each field named with its messages.",
    401: "No API key, or a malformed, unknown or revoked one (`WWW-Authenticate: Bearer`).",
    403: "The API key lacks the scope this endpoint needs.",
    404: "Not found.",
    406: "The Accept header allows no JSON.",
    409: "Conflict.",
    413: "The body is larger than the limit ({limit:,} bytes).",
    415: "The body is not `application/json`.",
    429: "Over a rate limit (per key, per customer, or per client address without a valid key); `Retry-After` "
    "says how many seconds to wait.",
    503: "Postgres or Redis is unavailable; nothing was changed. `Retry-After` says when to retry.",
}


def api_errors(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int, OpenApiResponse]:
    """The error responses of an operation behind an API key, for ``extend_schema(responses={200: …,
    **api_errors(400, 404)})``: the ``statuses`` the operation itself gives (400 when it validates a query, a body
    or an id in its path; 404 when it names a resource; :data:`BODY_ERRORS` when it reads a body) and the
    :data:`COMMON_ERRORS` of every operation, each with the body it really has: :class:`ValidationErrorSerializer`
    for a 400, :class:`ErrorSerializer` (``{"detail": …}``) otherwise. ``descriptions`` says, per status, what it
    means for this operation."""
    wanted = sorted({*statuses, *COMMON_ERRORS})
    said = {**_DESCRIPTIONS, **(descriptions or {})}
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0
    return {
        status: OpenApiResponse(
            response=ValidationErrorSerializer if status == 400 else ErrorSerializer,
            description=said[status].format(limit=limit),
        )
        for status in wanted
    }


# --- Nullable nested objects --------------------------------------------------------------------------------------

# Only null: "null" is no type in OpenAPI 3.0, so an object type that allows null and no object.
_NULL = {"type": "object", "nullable": True, "enum": [None]}


class NullableNestedSerializer(OpenApiSerializerFieldExtension):
    """A nested serializer with ``allow_null=True`` as ``oneOf: [{$ref}, null]`` beside ``type``/``nullable``.

    drf-spectacular writes ``{allOf: [{$ref}], nullable: true}`` under OpenAPI 3.0.3, where ``nullable`` without a
    ``type`` beside it means nothing and the referenced object does not allow null, so validators that follow the
    specification (openapi-schema-validator) refuse the null the API answers (an experiment's control arm has no
    ``vs_control``). Its OAS 3.1 output, ``oneOf: [{$ref}, {type: null}]``, is this in 3.0 terms."""

    target_class = "rest_framework.serializers.Serializer"
    match_subclasses = True

    @classmethod
    def _matches(cls, target: Any) -> bool:
        return bool(super()._matches(target) and getattr(target, "allow_null", False))

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any] | None:
        component = auto_schema.resolve_serializer(self.target, direction)
        if component is None:
            return None
        # drf-spectacular adds the field's own "nullable: true" (and description) beside these.
        return {"type": "object", "oneOf": [component.ref, _NULL]}
