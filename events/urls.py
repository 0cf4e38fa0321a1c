"""Event ingestion URLs."""

from django.urls import path

from events import api

urlpatterns = [
    path("events", api.EventIngestApi.as_view(), name="events"),
    path("sessions/<id:session_id>/merge", api.SessionMergeApi.as_view(), name="session-merge"),
]
