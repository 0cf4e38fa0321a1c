"""A log line keeps the ``extra={...}`` fields of its call: appended as ``key=value`` to the readable line, or as keys
of one JSON object per line (``LOG_FORMAT=json``); a traceback still follows."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

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
    assert "repr_fields" not in record


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


def _strict_json(line: str) -> dict[str, Any]:
    """``line`` parsed as JSON parsers outside Python do: ``NaN`` and ``Infinity`` are no JSON."""

    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON: {line}")

    record = json.loads(line, parse_constant=refuse)
    assert isinstance(record, dict)
    return record


Lines = Callable[[Log], list[dict[str, Any]]]


@pytest.fixture
def configured_json(capsys: pytest.CaptureFixture[str]) -> Iterator[Lines]:
    """``lines(log)``: every line ``log(logger)`` wrote to stderr through the configuration ``LOG_FORMAT=json`` gives
    (dictConfig of ``logging_config``, as every process applies it), each parsed as strict JSON."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(log: Log) -> list[dict[str, Any]]:
        # Configured here, in the test's call: the handler binds the sys.stderr that capsys captures then.
        logging.config.dictConfig(logging_config(level="INFO", log_format="json"))
        capsys.readouterr()
        log(logging.getLogger("tests.logformat.applied"))
        return [_strict_json(line) for line in capsys.readouterr().err.splitlines()]

    try:
        yield run
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_configuration_applies(configured_json: Lines) -> None:
    """What dictConfig makes of it: the root logger's handler writes the extra fields (to stderr)."""
    lines = configured_json(lambda logger: logger.info("online_state_rebuilt", extra={"owners": 5}))
    assert [line["owners"] for line in lines] == [5]


def _circular() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def test_json_writes_a_value_json_cannot_hold_as_its_repr(configured_json: Lines) -> None:
    """A dict with tuple keys or a circular list cost the whole line (the logging module printed a traceback to
    stderr instead), a NaN went out as a bare ``NaN`` (a reviewer, 6 December): each is now its repr(), named in
    ``repr_fields``, and the other fields keep their JSON values."""
    extra = {
        "pairs": {(1, 2): "a"}, "loop": _circular(), "ratio": float("nan"), "peak": float("inf"),
        "floor": float("-inf"), "score": np.float32("nan"), "scores": [0.5, float("nan")], "count": 3, "tags": ["a"],
    }  # fmt: skip
    [line] = configured_json(lambda logger: logger.warning("quality_computed", extra=extra))
    assert (line["level"], line["message"]) == ("WARNING", "quality_computed")
    assert {key: line[key] for key in extra} == {
        "pairs": "{(1, 2): 'a'}", "loop": "[1, [...]]", "ratio": "nan", "peak": "inf", "floor": "-inf",
        "score": "nan", "scores": "[0.5, nan]", "count": 3, "tags": ["a"],
    }  # fmt: skip
    assert line["repr_fields"] == ["pairs", "loop", "ratio", "peak", "floor", "score", "scores"]


class _ReadOnce:
    """A number that can be read once (a reading that resets): it encodes alone, then fails in the whole line."""

    def __init__(self) -> None:
        self.reads = 0

    def __int__(self) -> int:
        self.reads += 1
        if self.reads > 1:
            raise RuntimeError("already read")
        return 7

    def __repr__(self) -> str:
        return "_ReadOnce()"


numbers.Integral.register(_ReadOnce)


def test_a_json_line_that_still_fails_keeps_the_event_and_names_what_it_left_out(configured_json: Lines) -> None:
    def log(logger: logging.Logger) -> None:
        try:
            raise ValueError("bad preference")
        except ValueError:
            logger.exception(
                "dry_run_failed", extra={"ratio": float("nan"), "reading": _ReadOnce(), "run_id": 7, "tags": ["a"]}
            )

    [line] = configured_json(log)
    assert line.pop("time").endswith("+00:00")
    assert line.pop("exc_info").endswith("ValueError: bad preference")
    assert line == {
        "level": "ERROR", "logger": "tests.logformat.applied", "process": os.getpid(), "message": "dry_run_failed",
        "run_id": 7, "fields_left_out": ["ratio", "reading", "tags"],
    }  # fmt: skip
