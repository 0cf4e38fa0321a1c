"""Event ingestion URLs."""

urlpatterns: list = []
