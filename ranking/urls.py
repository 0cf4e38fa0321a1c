"""Recommendation URLs."""

from django.urls import path

from ranking import api

urlpatterns = [
    path("recommendations", api.RecommendationListApi.as_view(), name="recommendations"),
    path("pages", api.PageApi.as_view(), name="pages"),
    path("items/<id:item_id>/similar", api.SimilarItemsApi.as_view(), name="similar-items"),
    path("items/<id:item_id>/bought-together", api.BoughtTogetherApi.as_view(), name="bought-together"),
    path(
        "customers/<id:customer_id>/because-you-viewed",
        api.BecauseYouViewedApi.as_view(),
        name="because-you-viewed",
    ),
    path("rules/dry-runs", api.RuleDryRunStartApi.as_view(), name="rule-dry-runs"),
    path("rules/dry-runs/<str:run_id>", api.RuleDryRunApi.as_view(), name="rule-dry-run"),
]
