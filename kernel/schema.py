"""OpenAPI description of our API-key authentication for drf-spectacular."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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
