"""A log line keeps the ``extra={...}`` fields of its call: appended as ``key=value`` to the readable line, or as keys
of one JSON object per line (``LOG_FORMAT=json``); a traceback still follows."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from kernel.logformat import JsonFormatter, TextFormatter, logging_config

Log = Callable[[logging.Logger], None]
Emit = Callable[[logging.Formatter, Log], str]


@pytest.fixture
def emit() -> Iterator[Emit]:
    """``emit(formatter, log)``: what ``log(logger)`` wrote through a handler with ``formatter``."""
    logger = logging.getLogger("tests.logformat")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def run(formatter: logging.Formatter, log: Log) -> str:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        try:
            log(logger)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    yield run
    logger.propagate = True


def _failure(logger: logging.Logger) -> None:
    logger.error(
        "model_version_load_failed",
        extra={"version_id": 12, "reason": "download", "error": "bucket unreachable: timed out",
               "previous_version_id": None, "sentinels": ["node-0", "node-2"], "rows": np.int64(3)},
    )  # fmt: skip


def _exception(logger: logging.Logger) -> None:
    try:
        raise ValueError("bad preference")
    except ValueError:
        logger.exception("dry_run_failed", extra={"run_id": 7, "detail": 'line one\nline "two"'})


def test_text_appends_the_extra_fields_as_key_value(emit: Emit) -> None:
    out = emit(TextFormatter(), _failure)
    assert out.count("\n") == 1
    assert out.rstrip("\n").endswith(
        " ERROR tests.logformat model_version_load_failed version_id=12 reason=download"
        ' error="bucket unreachable: timed out" previous_version_id=None sentinels=["node-0","node-2"] rows=3'
    )


def test_text_keeps_a_value_on_the_line_and_the_traceback_after_it(emit: Emit) -> None:
    first, *rest = emit(TextFormatter(), _exception).splitlines()
    assert first.endswith(r'ERROR tests.logformat dry_run_failed run_id=7 detail="line one\nline \"two\""')
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad preference"


def test_text_without_extra_fields_is_the_plain_line(emit: Emit) -> None:
    out = emit(TextFormatter(), lambda logger: logger.info("plain %s", "arg"))
    assert out.rstrip("\n").endswith(" INFO tests.logformat plain arg")


def test_json_is_one_object_per_line_with_the_extra_fields(emit: Emit) -> None:
    out = emit(JsonFormatter(), _failure)
    assert out.count("\n") == 1
    record = json.loads(out)
    assert record["level"] == "ERROR"
    assert record["logger"] == "tests.logformat"
    assert record["message"] == "model_version_load_failed"
    assert record["time"].endswith("+00:00")
    fields = ("version_id", "reason", "error", "previous_version_id", "sentinels", "rows")
    assert {key: record[key] for key in fields} == {
        "version_id": 12, "reason": "download", "error": "bucket unreachable: timed out",
        "previous_version_id": None, "sentinels": ["node-0", "node-2"], "rows": 3,
    }  # fmt: skip


def test_json_carries_the_traceback(emit: Emit) -> None:
    out = emit(JsonFormatter(), _exception)
    assert out.count("\n") == 1
    record = json.loads(out)
    assert record["run_id"] == 7
    assert record["detail"] == 'line one\nline "two"'
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert record["exc_info"].endswith("ValueError: bad preference")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_arguments_given_again_as_an_extra_field_are_not_repeated(emit: Emit, formatter: logging.Formatter) -> None:
    """Celery logs a task failure with its context both as the message's arguments and as ``extra={"data": ...}``
    (traceback included): the message already says it."""
    context = {"name": "events.tasks.rebuild_online_state", "id": "abc"}
    out = emit(formatter, lambda logger: logger.error("Task %(name)s[%(id)s] raised", context, extra={"data": context}))
    assert "Task events.tasks.rebuild_online_state[abc] raised" in out
    assert "data" not in out


def test_the_settings_log_through_the_text_formatter_by_default() -> None:
    assert settings.LOGGING["formatters"]["default"]["()"] == "kernel.logformat.TextFormatter"
    assert settings.LOGGING["root"]["handlers"] == ["console"]


def test_log_format_json_and_a_wrong_value() -> None:
    assert logging_config(log_format="json")["formatters"]["default"]["()"] == "kernel.logformat.JsonFormatter"
    with pytest.raises(ImproperlyConfigured, match="LOG_FORMAT='xml'"):
        logging_config(log_format="xml")


def test_the_configuration_applies(capsys: pytest.CaptureFixture[str]) -> None:
    """What dictConfig makes of it: the root logger's handler writes the extra fields (to stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logging.config.dictConfig(logging_config(level="INFO", log_format="json"))
        logging.getLogger("tests.logformat.applied").info("online_state_rebuilt", extra={"owners": 5})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert json.loads(line)["owners"] == 5
