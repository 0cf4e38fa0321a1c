"""Experiment endpoints (scope ``admin``): the results of an experiment as JSON."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from experiments import services
from experiments.serializers import ExperimentResultsSerializer
from kernel.models import ApiKey
from kernel.schema import api_errors


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class ExperimentResultsApi(APIView):
    required_scope = ApiKey.Scope.ADMIN

    @extend_schema(
        responses={
            200: ExperimentResultsSerializer,
            **api_errors(
                404,
                409,
                descriptions={
                    404: "No experiment with this key.",
                    409: "The experiment cannot have results yet (e.g. no control variant).",
                },
            ),
        }
    )
    def get(self, request: Request, key: str) -> Response:
        try:
            results = services.experiment_results(key=key)
        except services.ExperimentNotFound as exc:
            raise NotFound(str(exc)) from exc
        except services.ExperimentError as exc:
            raise Conflict(str(exc)) from exc
        return Response(ExperimentResultsSerializer(results).data)
