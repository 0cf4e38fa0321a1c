"""Log lines that keep their structured fields: the ``extra={...}`` of every ``logger.x(...)`` call is appended to the
human-readable line as ``key=value`` (``LOG_FORMAT=text``, the default) or written as one JSON object per line for
log shippers (``LOG_FORMAT=json``). One configuration for every process: Django's ``LOGGING``, gunicorn's master
(gunicorn.conf.py) and the Celery worker and beat (recsys/celery.py)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import numbers
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

TEXT = "text"
JSON = "json"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The attributes every LogRecord has (and those formatters add); anything else on a record came from ``extra``.
_STANDARD = frozenset(RESERVED_ATTRS) | frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The ``extra`` fields of ``record``, in the order the call gave them. A field that is the message's own
    arguments is left out: it is already in the message (Celery logs a task's failure with its context as both)."""
    args = record.args
    return [
        (key, value) for key, value in vars(record).items() if key not in _STANDARD and not (args and value is args)
    ]


def _text(value: Any) -> str:
    """``value`` as one token of a log line: lists and dicts as compact JSON, the rest as ``str``; quoted (a JSON
    string, so line breaks and quotes are escaped) when empty or holding spaces, control characters or a leading
    quote, so the event stays one line and every ``key=value`` can be split at the spaces between them."""
    try:
        if isinstance(value, list | tuple | dict | set | frozenset):
            text = json.dumps(
                list(value) if isinstance(value, set | frozenset) else value,
                default=str, ensure_ascii=False, separators=(",", ":"),
            )  # fmt: skip
        else:
            text = str(value)
    except Exception:  # noqa: BLE001  (a field that cannot be shown must not cost the log line)
        text = f"<unprintable {type(value).__name__}>"
    if not text or text.startswith('"') or not text.isprintable() or any(c.isspace() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s %(message)s`` followed by the record's extra fields as ``key=value``;
    a traceback (``exc_info``) or stack follows on the next lines, as with ``logging.Formatter``."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, **kwargs: Any) -> None:
        super().__init__(fmt or TEXT_FORMAT, datefmt, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        line = super().formatMessage(record)
        fields = " ".join(f"{key}={_text(value)}" for key, value in extra_fields(record))
        return f"{line} {fields}" if fields else line


class _Encoder(JsonEncoder):
    """python-json-logger's encoder (datetimes, exceptions, dataclasses, anything else as ``str``), plus numbers
    that are not Python's own (numpy scalars) as JSON numbers rather than strings."""

    def default(self, o: Any) -> Any:
        if isinstance(o, numbers.Integral):
            return int(o)
        if isinstance(o, numbers.Real):
            return float(o)
        return super().default(o)


# The fields the JSON formatter writes itself (str or int), kept on the last-resort line (JsonFormatter).
_OWN_FIELDS = ("time", "level", "logger", "process", "message", "exc_info", "stack_info")


def _repr(value: Any) -> str:
    """``value`` as a string that stands for it on a JSON line: its ``repr()``, a non-finite number as its float's
    (``nan``, ``inf``, ``-inf``: numpy's too), or the type's name when even ``repr()`` fails."""
    with contextlib.suppress(Exception):  # a number that is no float after all is shown by its repr() below
        if isinstance(value, numbers.Real) and not math.isfinite(value):
            return repr(float(value))
    try:
        return repr(value)
    except Exception:  # noqa: BLE001  (a field that cannot be shown must not cost the log line)
        return f"<{type(value).__name__} without a repr>"


def _is_plain(value: Any) -> bool:
    """Whether ``value`` is a JSON scalar no encoder can fail on (exact types: a subclass may override anything)."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) in (str, int, bool) or value is None


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``process``, ``message``, the extra
    fields, and ``exc_info`` (the formatted traceback) when there is one.

    Every record gives one line of strict JSON. A field JSON cannot hold (a float NaN or infinity, a dict with tuple
    keys, a circular list) is written as the string of its ``repr()`` (``"nan"``, ``"inf"``, ``"-inf"``,
    ``"{(1, 2): 'a'}"``, ``"[1, [...]]"``) and named in ``repr_fields``; the others keep their JSON values. Should
    the line still fail (a value that changed while it was written), it holds the formatter's own fields, the plain
    (string, number, boolean, null) extra fields, and ``fields_left_out`` naming the others."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("json_encoder", _Encoder)
        kwargs.setdefault("json_ensure_ascii", False)
        # Strict JSON: NaN and infinities raise here (and are written as strings below) instead of going out as the
        # bare NaN / Infinity that JSON parsers refuse.
        kwargs.setdefault("json_serializer", functools.partial(json.dumps, allow_nan=False))
        super().__init__(
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=sorted(_STANDARD),
            **kwargs,
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        args = record.args
        if args:
            for key, value in list(log_data.items()):
                if value is args and key not in ("time", "level", "logger", "process", "message"):
                    del log_data[key]

    def _dumps(self, log_data: dict[str, Any]) -> str | None:
        """The library's serialisation of ``log_data``, or None when the encoder cannot write it."""
        try:
            return super().jsonify_log_record(log_data)
        except Exception:  # noqa: BLE001  (TypeError, ValueError, RecursionError, or whatever a default() raised)
            return None

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        line = self._dumps(log_data)
        if line is not None:
            return line
        named = {key if isinstance(key, str) else _repr(key): value for key, value in log_data.items()}
        # Field by field: those the encoder cannot write go as their repr(), the rest as they are.
        as_repr = [name for name, value in named.items() if self._dumps({name: value}) is None]
        fields: dict[str, Any] = {name: _repr(value) if name in as_repr else value for name, value in named.items()}
        fields["repr_fields"] = as_repr
        line = self._dumps(fields)
        if line is not None:
            return line
        kept: dict[str, Any] = {}
        left_out: list[str] = []
        for name, value in named.items():
            if _is_plain(value):
                kept[name] = value
            elif name in _OWN_FIELDS:
                kept[name] = _repr(value)
            else:
                left_out.append(name)
        kept["fields_left_out"] = left_out
        return json.dumps(kept, ensure_ascii=self.json_ensure_ascii, allow_nan=False)


def logging_config(
    *, level: str = "INFO", log_format: str = TEXT, loggers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary: the root logger at ``level`` writing to stderr in ``log_format``
    (``text`` or ``json``; anything else stops start-up with the variable's name), plus ``loggers``."""
    formats = {TEXT: "kernel.logformat.TextFormatter", JSON: "kernel.logformat.JsonFormatter"}
    chosen = log_format.strip().lower()
    if chosen not in formats:
        raise ImproperlyConfigured(f"LOG_FORMAT={log_format!r} is neither {TEXT!r} nor {JSON!r}.")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formats[chosen]}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"handlers": ["console"], "level": level.strip().upper()},
        "loggers": dict(loggers or {}),
    }
