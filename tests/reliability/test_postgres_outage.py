"""Postgres unreachable or too slow, for real but without stopping the shared server: this process's connection is
pointed at a socket directory where no server listens, or a statement waits on a lock held by another connection
until ``statement_timeout`` cancels it. Event ingestion then answers 503 with Retry-After, never 202 for an event it
did not store, and a retry after the outage stores it once."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from rest_framework.test import APIClient

from events.models import Interaction
from recsys import auth
from tests.factories import ItemFactory

# Transactional: ingestion commits before it answers, and the outage swaps this process's connection.
pytestmark = pytest.mark.django_db(transaction=True)

EVENT = {"event_id": "e-1", "customer_id": "c1", "item_id": "sku-1", "type": "purchase", "value": 1}


@pytest.fixture
def postgres_unreachable(tmp_path: Path) -> Callable[[], AbstractContextManager[None]]:
    """``with postgres_unreachable():`` points this process's connection at an empty directory (no server socket)."""

    @contextmanager
    def outage() -> Iterator[None]:
        saved = (connection.settings_dict["HOST"], copy.deepcopy(connection.settings_dict["OPTIONS"]))
        connection.close()
        connection.settings_dict["HOST"] = connection.settings_dict["OPTIONS"]["host"] = str(tmp_path)
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict["HOST"], connection.settings_dict["OPTIONS"] = saved

    return outage


@pytest.fixture
def item() -> None:
    ItemFactory(external_id="sku-1")


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "5"
    assert response.json() == {"detail": "The service is temporarily unavailable; retry shortly."}


def test_ingestion_answers_503_when_postgres_is_unreachable_and_a_retry_stores_once(
    api: APIClient, item: None, postgres_unreachable: Callable[[], AbstractContextManager[None]]
) -> None:
    assert api.post("/v1/events", {**EVENT, "event_id": "before"}, format="json").status_code == 202  # key cached

    with postgres_unreachable():
        _assert_unavailable(api.post("/v1/events", EVENT, format="json"))
        auth.clear_cache()  # a key not cached yet: authentication itself needs the database
        _assert_unavailable(api.post("/v1/events", EVENT, format="json"))

    assert not Interaction.objects.filter(event_id="e-1").exists()  # the 503s stored nothing
    assert api.post("/v1/events", EVENT, format="json").json() == {"accepted": 1, "duplicates": 0, "rejected": []}


def test_a_statement_cancelled_by_the_timeout_answers_503(
    api: APIClient, item: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert api.post("/v1/events", {**EVENT, "event_id": "before"}, format="json").status_code == 202
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 300")  # the deployment's DB_STATEMENT_TIMEOUT_MS, made short
    blocker = psycopg.connect(**connection.get_connection_params())
    try:
        # A long migration or a stuck transaction: the insert into events_interaction has to wait for it.
        blocker.execute("LOCK TABLE events_interaction IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = api.post("/v1/events", EVENT, format="json")
        assert time.monotonic() - started < 5
        _assert_unavailable(response)
        (logged,) = [record for record in caplog.records if record.msg == "api_database_error"]
        assert isinstance(logged.exc_info[1].__cause__, psycopg.errors.QueryCanceled)  # type: ignore[index]
    finally:
        blocker.rollback()
        blocker.close()
        connection.close()  # the next connection has the configured timeout again
    assert not Interaction.objects.filter(event_id="e-1").exists()
    assert api.post("/v1/events", EVENT, format="json").json()["accepted"] == 1
