"""gunicorn's logger, minus an access record built for nobody.

gunicorn builds each request's access record (its atoms: headers, environ, the formatted time; then a LogRecord)
whenever any logging configuration is set, and gunicorn.conf.py sets one (``logconfig_dict``, so gunicorn's own lines
share the application's format). Without ``--access-logfile`` (or syslog) nothing has a handler for that record:
every request paid for a line no one writes. :class:`Logger` builds it only when something would write it.
gunicorn.conf.py names it as ``logger_class``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gunicorn import glogging


class Logger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    _writes_access = False

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # After gunicorn's handlers and the dictConfig: an access log file, syslog, or a logging configuration that
        # gives "gunicorn.access" (or an ancestor it propagates to) a handler all count.
        self._writes_access = self.access_log.isEnabledFor(logging.INFO) and self.access_log.hasHandlers()

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if self._writes_access:
            super().access(resp, req, environ, request_time)
