"""recsys/gunicorn_logging.py: gunicorn builds a request's access record only when something writes it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from kernel.logformat import logging_config
from recsys.gunicorn_logging import Logger

ENVIRON = {
    "REQUEST_METHOD": "GET", "RAW_URI": "/v1/recommendations?customer_id=7", "SERVER_PROTOCOL": "HTTP/1.1",
    "PATH_INFO": "/v1/recommendations", "QUERY_STRING": "customer_id=7", "REMOTE_ADDR": "127.0.0.1",
}  # fmt: skip
RESPONSE = SimpleNamespace(status="200 OK", sent=42, headers=[("Content-Type", "application/json")])
REQUEST = SimpleNamespace(headers=[("User-Agent", "storefront")])


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """gunicorn's setup runs logging's dictConfig: the process's logging is put back as it was after each test."""
    names = ("", "gunicorn.error", "gunicorn.access")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}  # fmt: skip
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            if handler not in handlers:
                handler.close()
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def _config(**settings: object) -> Config:
    cfg = Config()
    # As gunicorn.conf.py sets it: gunicorn's own lines in the application's format.
    cfg.set("logconfig_dict", logging_config(loggers={"gunicorn.error": {"handlers": [], "propagate": True}}))
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_without_an_access_log_no_record_is_built() -> None:
    logger = Logger(_config())
    # An environ that building the record would fail on (no REQUEST_METHOD): nothing may read it.
    logger.access(RESPONSE, REQUEST, {}, timedelta(milliseconds=3))


def test_an_access_log_file_gets_its_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = Logger(_config(accesslog=str(path), access_log_format="%(m)s %(U)s %(s)s %(D)s"))
    logger.access(RESPONSE, REQUEST, ENVIRON, timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()
    assert path.read_text() == "GET /v1/recommendations 200 3000\n"


def test_a_logging_configuration_that_handles_gunicorn_access_gets_its_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    config = logging_config(loggers={"gunicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}})
    config["handlers"]["file"] = {"class": "logging.FileHandler", "filename": str(path)}
    cfg = Config()
    cfg.set("logconfig_dict", config)
    cfg.set("access_log_format", "%(r)s %(s)s")
    logger = Logger(cfg)
    logger.access(RESPONSE, REQUEST, ENVIRON, timedelta(milliseconds=3))
    for handler in logging.getLogger("gunicorn.access").handlers:
        handler.flush()
    assert path.read_text() == "GET /v1/recommendations?customer_id=7 HTTP/1.1 200\n"
