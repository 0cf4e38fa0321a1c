"""The framework floor for the serving benchmark: a DRF view returning a constant list, on the same server and
middleware as the real endpoints. Mounted only when BENCH_ENDPOINTS=1 (bench/bench_serving.py sets it)."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

CONSTANT = {"items": [{"item_id": f"item-{n}", "score": 1.0 - n / 10} for n in range(10)]}


class FloorApi(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    def get(self, request: Request) -> Response:
        return Response(CONSTANT)
