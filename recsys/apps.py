from django.apps import AppConfig


class RecsysConfig(AppConfig):
    name = "recsys"
    verbose_name = "API access"

    def ready(self) -> None:
        from recsys import metrics, schema  # noqa: F401  (registers the OpenAPI auth extension, task metrics)
