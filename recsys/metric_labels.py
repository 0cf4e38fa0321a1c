"""The bounds on serving's metric labels: a label takes a client's surface or variant only when the platform knows it
(built in, or named by a running experiment), else ``"other"``. Wiring between ranking's metrics and experiments'
knowledge, so it lives in the project; installed by RecsysConfig.ready."""

from __future__ import annotations

from django.core.signals import request_started

from kernel.metrics import bound_labels
from ranking import merchandising

OTHER = "other"
# The surfaces the platform itself serves (ranking.merchandising's customer and item surfaces, and the endpoint of
# because-you-viewed); experiments and surface defaults add theirs (experiments.services.surface_known).
BUILTIN_SURFACES: frozenset[str] = frozenset(merchandising.BUILTIN_SURFACES)
_NO_VARIANT = "-"


def metric_surface(surface: str) -> str:
    """``surface`` when it exists (built in, or named by a running experiment or a surface default), else
    ``"other"``: a metric label must never take a client's free-form value."""
    if surface in BUILTIN_SURFACES:
        return surface
    from experiments.services import surface_known  # lazily: experiments is loaded after the apps

    try:
        return surface if surface_known(surface) else OTHER
    except Exception:  # noqa: BLE001 - a label must never fail a request; unknown is the safe answer
        return OTHER


def surface_exists(surface: str) -> bool:
    """For the quality gauges (kernel.metrics.surface_filter_install): a made-up surface adds no series."""
    return metric_surface(surface) != OTHER


def metric_variant(variant: str) -> str:
    """``variant`` when a running experiment has it (or ``-``, no variant), else ``"other"``."""
    if variant in ("", _NO_VARIANT):
        return variant
    from experiments.services import variant_known

    try:
        return variant if variant_known(variant) else OTHER
    except Exception:  # noqa: BLE001 - as above
        return OTHER


def bound_serving_labels() -> None:
    """Bound the surface and variant labels of ranking.serving's request metrics: serving labels them with the
    request's surface as sent."""
    from ranking import serving

    for metric in (serving.REQUESTS, serving.LATENCY):
        bound_labels(metric, surface=metric_surface, variant=metric_variant)


_BOUND_LABELS_UID = "recsys.metric_labels.bound_serving_labels"


def _bound_serving_labels_now(**_: object) -> None:
    request_started.disconnect(dispatch_uid=_BOUND_LABELS_UID)
    bound_serving_labels()


def bound_serving_labels_on_first_request() -> None:
    """Install :func:`bound_serving_labels` when this process starts its first request (RecsysConfig.ready): every
    recommendation a client asks for comes through a request, and processes that serve none (management commands,
    workers) never import ranking.serving for it."""
    request_started.connect(_bound_serving_labels_now, dispatch_uid=_BOUND_LABELS_UID, weak=False)
