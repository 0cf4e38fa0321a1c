"""gunicorn settings read from the working directory by every `gunicorn recsys.wsgi` started here (`make run`, the
benches, a deployment from this checkout; docs/operations.md). Command-line flags override them."""

import logging
import os
import time

from kernel.logformat import logging_config
from recsys import gunicorn_errors

# The request line: gunicorn's largest bounded limit (8,190 bytes; its default is 4,094), about what a CDN passes
# on (CloudFront: 8,192). Longer lines are answered 414 by gunicorn itself, in JSON (below); Django's side answers
# 414 in JSON past the same length under any other server (recsys/wsgi_guards.py). docs/reliability.md.
limit_request_line = 8190
# One header line: twice gunicorn's default (8,190), for the cookies of a storefront on the same domain.
limit_request_field_size = 16380

# gunicorn's own lines (worker booted, exited, timed out) in the application's format (LOG_FORMAT, LOG_LEVEL;
# kernel/logformat.py) on the same stderr handler; gunicorn.error keeps --log-level. The access log, when enabled,
# keeps gunicorn's own format (access_log_format).
logconfig_dict = logging_config(
    level=os.environ.get("LOG_LEVEL", "INFO"),
    log_format=os.environ.get("LOG_FORMAT", "text"),
    loggers={"gunicorn.error": {"handlers": [], "propagate": True}},
)

# gunicorn's logger, except that it builds a request's access record only when something writes it (an access log
# file, syslog, or a logging configuration giving "gunicorn.access" a handler): logconfig_dict above alone made gunicorn
# build one per request for no handler (recsys/gunicorn_logging.py). With --statsd-host, name gunicorn's statsd logger
# instead (--logger-class gunicorn.instrument.statsd.Statsd): gunicorn picks it by itself only when this is unset.
logger_class = "recsys.gunicorn_logging.Logger"

# gunicorn's own error answers (bad request line or header bytes, 414, 431) as JSON instead of an HTML page.
gunicorn_errors.install()


def child_exit(server: object, worker: object) -> None:
    """Tell prometheus_client when a worker exits, so its live gauges stop being reported (docs/operations.md)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


_forked_at = time.monotonic()


def post_fork(server: object, worker: object) -> None:
    global _forked_at  # the worker process's own copy of the module, after the fork
    _forked_at = time.monotonic()


def post_worker_init(worker: object) -> None:
    """Log when a worker has loaded the application (Django, the compiled loops) and is about to accept requests:
    during a rolling restart (TTIN/TTOU or USR2, docs/operations.md) the sign that the new workers are ready."""
    logging.getLogger("gunicorn.error").info(
        "web_worker_ready", extra={"pid": os.getpid(), "seconds": round(time.monotonic() - _forked_at, 1)}
    )
