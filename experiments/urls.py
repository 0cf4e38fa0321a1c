"""Experiment API URLs (mounted under /v1/)."""

from django.urls import path

from experiments import api

urlpatterns = [
    path("experiments/<slug:key>/results", api.ExperimentResultsApi.as_view(), name="experiment-results"),
]
