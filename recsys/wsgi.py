"""WSGI entry point for gunicorn."""

import gc
import os

from kernel.native_threads import limit_for_serving

# One native thread per web process (BLAS, OpenMP, faiss) before anything starts a pool: docs/operations.md.
limit_for_serving()

from django.core.wsgi import get_wsgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")

django_application = get_wsgi_application()

from ranking import kernels  # noqa: E402
from recsys.wsgi_guards import chunked_body_shim, url_guard  # noqa: E402 - needs the settings above

# Django reads CONTENT_LENGTH bytes only: the shim makes a chunked body (gunicorn de-chunks it) readable; an
# over-long URL is a JSON 414 (recsys/wsgi_guards.py).
application = url_guard(chunked_body_shim(django_application))

# Serving's compiled loops (ranking/kernels.py), compiled or loaded from numba's disk cache now, not on a request.
kernels.warm()

# Everything imported so far (Django, DRF, numpy, LightGBM, faiss: a few hundred thousand objects) lives as long as
# the process. Moving it out of the collector's reach keeps full collections short: without this they walked all
# of it and stalled a worker for tens of milliseconds now and then (the serving bench's p99).
gc.freeze()
