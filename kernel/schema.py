"""OpenAPI description of the API for drf-spectacular: our API-key authentication and nullable nested objects that
OpenAPI 3.0.3 validators accept."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension


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
