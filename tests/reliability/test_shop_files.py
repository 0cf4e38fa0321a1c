"""A shop's own export files through import_items and import_events: spreadsheet quirks, other encodings, two
feeds at once, an interrupted import. A bad row is named (file, line, reason) and the command says so in its exit
status; what a file cannot hold is never a traceback, and nothing already stored is lost."""

from __future__ import annotations

import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from catalog.importing import items_import
from catalog.models import Item
from kernel.csvimport import ImportSummary


def _summary(out: str) -> dict[str, int]:
    rows = [line.rsplit(None, 1) for line in out.splitlines() if line and not line.startswith("rows/s")]
    return {name.strip(): int(count.replace(",", "")) for name, count in rows}


def _run(command: str, path: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(command, str(path), "--quiet", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_two_item_feeds_listing_the_same_items_in_other_orders_do_not_deadlock(tmp_path: Path) -> None:
    """A full feed and a stock feed at once, each listing the same items in its own order: each batch upserted in
    file order, so the two transactions locked rows in opposite orders and Postgres killed one (a traceback, its
    batch lost). In key order they take turns."""
    ids = [f"sku-{n:05d}" for n in range(6_000)]
    forward, backward = tmp_path / "full.csv", tmp_path / "stock.csv"
    forward.write_text("item_id,title,category\n" + "".join(f"{i},Full {i},cat-{i[-2:]}\n" for i in ids))
    backward.write_text("item_id,title,in_stock\n" + "".join(f"{i},Stock {i},no\n" for i in reversed(ids)))
    results: dict[str, ImportSummary | BaseException] = {}

    def run(path: Path) -> None:
        try:
            results[path.name] = items_import(path=path, batch_size=2_000)
        except BaseException as exc:  # the test reports it
            results[path.name] = exc
        finally:
            connection.close()

    for _ in range(3):  # new rows the first time, updates of both kinds after
        results.clear()
        threads = [threading.Thread(target=run, args=(path,)) for path in (forward, backward)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(isinstance(result, ImportSummary) for result in results.values()), results
    assert Item.objects.filter(external_id__in=ids).count() == len(ids)
    assert not Item.objects.filter(external_id__in=ids, in_stock=True).exists()
