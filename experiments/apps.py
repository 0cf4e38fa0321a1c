from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"

    def ready(self) -> None:
        from experiments.services.impressions import customers_created_connect

        customers_created_connect()
