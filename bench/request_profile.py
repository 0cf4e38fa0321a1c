"""Where an uncached recommendation request spends its time, layer by layer (issue 18). Run by bench_serving.py in a
subprocess with the bench's environment (its database, Redis databases and API key); not a test.

Uncached requests (a new exclusion pair each) go through Django's whole handler in this process (middleware, DRF's
authentication, throttling and permission checks, the view, the list cache, the pipeline, the impression log, the
renderer, and the list cache's store when the response is closed), first unprofiled
(wall time per request), then under cProfile. A layer's share is its function's cumulative time minus the layers
nested inside it, over the profiled total; cProfile's per-call cost inflates call-heavy Python code, so the
shares are a map of where to look, the unprofiled wall time is the figure.

Prints one JSON object: {"wall_ms": [...], "layers": [[layer, ms_per_request, share], ...], "requests": n}.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (layer, parent layer, functions) — each function as (file suffix, name) as cProfile records it. A layer's own time
# is its functions' cumulative time minus its children's.
LAYERS: list[tuple[str, str | None, tuple[tuple[str, str], ...]]] = [
    ("whole request (test client's WSGI handler)", None, (("django/test/client.py", "__call__"),)),
    ("middleware + URL routing + Django", "whole request (test client's WSGI handler)",
     (("django/core/handlers/base.py", "get_response"),)),
    ("view dispatch (DRF)", "middleware + URL routing + Django", (("rest_framework/views.py", "dispatch"),)),
    ("authentication (API key)", "view dispatch (DRF)", (("kernel/auth.py", "authenticate"),)),
    ("scope check", "view dispatch (DRF)", (("kernel/auth.py", "has_permission"),)),
    ("throttling", "view dispatch (DRF)", (("kernel/throttling.py", "allow_request"),)),
    # The first read of the query string, which parses it, happens here.
    ("content negotiation (and the query string's parsing)", "view dispatch (DRF)",
     (("kernel/negotiation.py", "select_renderer"),)),
    ("query validation", "view dispatch (DRF)", (("ranking/serializers.py", "recommendation_query"),)),
    ("recommend (serving)", "view dispatch (DRF)", (("ranking/serving.py", "recommend"),)),
    ("experiment assignment", "recommend (serving)", (("experiments/services/assignment.py", "assign"),)),
    ("list cache (lookup, lock + owner-state round trips)", "recommend (serving)",
     (("ranking/cache.py", "get_or_compute"),)),
    # The pipeline's stages as the trace times them: the owner-state read and the user vector (shared_work), then
    # the list itself (serve).
    ("pipeline (traced stages)", "list cache (lookup, lock + owner-state round trips)",
     (("ranking/serving.py", "shared_work"), ("ranking/serving.py", "serve"))),
    ("impression logging", "recommend (serving)", (("experiments/services/impressions.py", "impression_log"),)),
    ("response serialisation (DRF Response)", "middleware + URL routing + Django",
     (("rest_framework/response.py", "rendered_content"),)),
    # Plain JSON lists are rendered in the view itself (ranking/api.py, _json).
    ("response serialisation (in the view)", "view dispatch (DRF)", (("ranking/api.py", "_json"),)),
    # Over HTTP this runs after gunicorn has written the response (ranking/cache.py): off the client's clock.
    ("list cache store (at the request's end)", "whole request (test client's WSGI handler)",
     (("ranking/cache.py", "_request_ended"),)),
]  # fmt: skip


def main() -> None:
    from kernel.native_threads import limit_for_serving

    limit_for_serving()  # as a web process does (recsys/wsgi.py)
    import django

    django.setup()
    from django.test import Client

    from catalog.models import Customer, Item

    key, count, n = os.environ["PROFILE_KEY"], int(os.environ.get("PROFILE_COUNT", "10")), 300
    rng = random.Random()  # unseeded: a run soon after another must not meet the lists it cached (60 s)
    customers = list(Customer.objects.values_list("external_id", flat=True)[:5000])
    items = list(Item.objects.values_list("external_id", flat=True)[:5000])
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {key}")

    def paths(k: int) -> list[str]:
        # A new exclusion pair per request: every cache key is new, every request runs the whole pipeline.
        return [
            f"/v1/recommendations?customer_id={rng.choice(customers)}&count={count}&exclude={a},{b}"
            for a, b in (rng.sample(items, 2) for _ in range(k))
        ]

    for path in paths(100):  # warm: model mapped, per-process snapshots filled, ranker compiled or loading
        assert client.get(path).status_code == 200
    wall = []
    for path in paths(n):
        started = time.perf_counter()
        response = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:200]
    profiler = cProfile.Profile()
    profiled = paths(n)
    profiler.enable()
    for path in profiled:
        client.get(path)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for layer, _, functions in LAYERS:
        cumulative[layer] = sum(
            ct
            for (filename, _, func), (_, _, _, ct, _) in stats.items()
            if any(func == name and filename.endswith(suffix) for suffix, name in functions)
        )
    total = cumulative[LAYERS[0][0]] or 1.0
    rows = []
    for layer, _, _ in LAYERS:
        children = sum(cumulative[child] for child, parent, _ in LAYERS if parent == layer)
        own = max(cumulative[layer] - children, 0.0)
        label = "WSGI request and response objects" if layer == LAYERS[0][0] else layer
        rows.append([label, own * 1000 / n, own / total])
    print(json.dumps({"wall_ms": wall, "layers": rows, "requests": n}))


if __name__ == "__main__":
    main()
