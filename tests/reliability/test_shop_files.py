"""A shop's own export files through import_items and import_events: spreadsheet quirks, other encodings, two
feeds at once, an interrupted import. A bad row is named (file, line, reason) and the command says so in its exit
status; what a file cannot hold is never a traceback, and nothing already stored is lost."""

from __future__ import annotations

import gzip
import os
import signal
import threading
import zipfile
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from catalog.importing import items_import
from catalog.models import Item
from catalog.services import CATALOG_VERSION_KEY
from events import keys, online
from events.models import Interaction
from events.services import imports
from kernel import redis_client
from kernel.csvimport import ImportAborted, ImportSummary
from tests.factories import ItemFactory


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


def _run_failing(command: str, path: Path, *args: str, match: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match=match):
        call_command(command, str(path), "--quiet", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_an_import_that_rejected_rows_exits_non_zero_after_storing_the_rest(tmp_path: Path) -> None:
    """Both commands exited 0 whatever they refused: ``import_items feed.csv && train`` never learned that rows were
    left out. Now the summary comes first, then a non-zero exit naming how many; the good rows are stored."""
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,price\nsku-1,Mug,7.50\nsku-2,Plate,\u20ac3\nsku-3,Bowl,4\n")
    out, err = _run_failing("import_items", items, match=r"items.csv: 1 row was rejected")
    assert "items.csv:3: price: '\u20ac3' is not a number" in err
    assert (_summary(out)["stored"], _summary(out)["rejected"]) == (2, 1)
    assert set(Item.objects.values_list("external_id", flat=True)) == {"sku-1", "sku-3"}
    # A clean file still exits 0.
    items.write_text("item_id,title,price\nsku-2,Plate,3\n")
    out, _ = _run("import_items", items)
    assert _summary(out)["stored"] == 1


@pytest.mark.django_db
def test_import_events_that_rejected_rows_brings_serving_up_to_date_then_exits_non_zero(tmp_path: Path) -> None:
    sku = ItemFactory(external_id="sku-1")
    events = tmp_path / "events.csv"
    events.write_text(
        "customer_id,item_id,type,occurred_at\n"
        "c1,sku-1,purchase,2026-11-01T10:00:00Z\n"
        "c1,sku-404,view,2026-11-01T10:01:00Z\n"
        "c2,sku-1,bought,2026-11-01T10:02:00Z\n"
    )
    out, err = _run_failing("import_events", events, match=r"events.csv: 2 rows were rejected")
    assert "events.csv:3: item_id: unknown item 'sku-404'" in err
    assert "events.csv:4: type: 'bought' is not one of" in err
    assert (_summary(out)["stored"], _summary(out)["rejected"]) == (1, 2)
    assert Interaction.objects.count() == 1
    # The stored row reached the online state before the exit, and no rebuild is left pending.
    history = online.read_history(keys.owner_for(customer_id="c1", session_id=""), limit=10)
    assert [row.item_pk for row in history] == [sku.pk]
    assert not redis_client.get().exists(keys.IMPORT_REBUILD_PENDING)


@pytest.mark.django_db
def test_a_spreadsheets_own_export_is_read_as_it_was_written(tmp_path: Path) -> None:
    """Excel's "Unicode Text" (UTF-16 with a byte-order mark, tabs, CRLF), header names in the spreadsheet's own
    case and spacing, a trailing separator (a column without a name), a row of empty cells, compressed under a
    plain name: each refused the whole file ("the header is not UTF-8 text", "missing required column(s) item_id,
    title", "unknown column(s) " naming nothing) or a row ("item_id: is required")."""
    text = (
        "Item_ID\tTitle \t PRICE\tIn_Stock\t\r\nsku-1\tCafé crème\t4.50\tno\t\r\n\t\t\t\t\r\nsku-2\tTee\t3\tyes\t\r\n"
    )
    unicode_text = tmp_path / "export.txt"
    unicode_text.write_bytes(text.encode("utf-16"))
    out, _ = _run("import_items", unicode_text)
    assert (_summary(out)["stored"], _summary(out)["rejected"]) == (2, 0)
    cafe = Item.objects.get(external_id="sku-1")
    assert (cafe.title, str(cafe.price), cafe.in_stock) == ("Café crème", "4.50", False)
    # Semicolons (a spreadsheet where the comma is the decimal mark), UTF-8 with a BOM, gzip named .csv.
    semicolons = tmp_path / "feed.csv"
    semicolons.write_bytes(gzip.compress("\ufeffitem_id;title;tags\nsku-3;Bowl, large;a|b\n".encode()))
    out, _ = _run("import_items", semicolons)
    assert _summary(out)["stored"] == 1
    assert Item.objects.get(external_id="sku-3").tags == ["a", "b"]


@pytest.mark.django_db
def test_a_workbook_or_a_utf16_file_cut_short_is_a_clear_stop(tmp_path: Path) -> None:
    workbook = tmp_path / "items.xlsx"
    with zipfile.ZipFile(workbook, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    _run_failing("import_items", workbook, match=r"items.xlsx: a zip archive \(an Excel .xlsx workbook is one\)")
    cut = tmp_path / "items.csv"
    cut.write_bytes("item_id,title\nsku-1,Mug\n".encode("utf-16") + b"\x00\xd8")  # half a surrogate pair
    _run_failing("import_items", cut, match=r"items.csv, after line 2: the file cannot be read further")


@pytest.mark.django_db
def test_an_online_retail_row_with_a_bad_number_names_its_column(tmp_path: Path) -> None:
    """The messages said ``value: …`` for a bad Quantity or UnitPrice: a column the file does not have."""
    ItemFactory(external_id="85123A")
    path = tmp_path / "retail.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,MUG,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
        "536366,85123A,MUG,6,12/1/2010 8:28,£2.55,17850,United Kingdom\n"
        "536367,85123A,MUG,six,12/1/2010 8:29,2.55,17850,United Kingdom\n"
        "536368,85123A,MUG,2e9,12/1/2010 8:30,2.55,17850,United Kingdom\n"
    )
    out, err = _run_failing("import_events", path, "--format", "online-retail", match="3 rows were rejected")
    assert "retail.csv:3: UnitPrice: '£2.55' is not a number" in err
    assert "retail.csv:4: Quantity: 'six' is not a number" in err
    assert "retail.csv:5: Quantity: must be between -1e+09 and 1e+09" in err
    assert "value:" not in err
    assert _summary(out)["stored"] == 1


def _signal_once_stored(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """Send ``signum`` to this process once the import has stored events of its own (the real writer's batch, a
    re-run's first batches being duplicates): a watcher polling the table raced the import, which in one whole-suite
    run had stored all of it before the watcher saw a row."""
    store = imports._store_batch
    sent = threading.Event()

    def store_then_signal(batch: list[tuple], summary: ImportSummary, *args: Any) -> None:
        store(batch, summary, *args)
        if summary.stored and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(imports, "_store_batch", store_then_signal)


@pytest.mark.django_db(transaction=True)
def test_an_import_stopped_by_ctrl_c_or_sigterm_says_so_and_its_rerun_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C was a KeyboardInterrupt traceback, SIGTERM (a deploy, a container stopping) a silent death: the rows
    were safe, but nothing said so or what to do. Now one line names what was stored and asks for the re-run, the
    exit status is the shell's (130, 143), and the re-run stores the rest once and brings serving up to date."""
    for n in range(50):
        ItemFactory(external_id=f"sku-{n}")
    rows = 100_000
    path = tmp_path / "events.csv"
    path.write_text(
        "customer_id,item_id,type,occurred_at\n"
        + "".join(f"c{n % 5_000},sku-{n % 50},view,2026-11-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z\n"
                  for n in range(rows))
    )  # fmt: skip
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        _signal_once_stored(monkeypatch, signum)
        out, err = StringIO(), StringIO()
        # As a shell starts the command: Ctrl-C raises KeyboardInterrupt, whatever SIGINT's handler in this process.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(CommandError, match=r"events.csv: interrupted after reading [\d,]+ rows") as stopped:
                call_command("import_events", str(path), "--quiet", "--batch-size", "2000", stdout=out, stderr=err)
        finally:
            signal.signal(signal.SIGINT, previous)
        monkeypatch.undo()
        assert stopped.value.returncode == status
        assert "run the same command again to import the rest" in str(stopped.value)
        assert "the online state was not brought up to date: the re-run does it" in err.getvalue()
        assert 0 < Interaction.objects.count() < rows
    out, _ = _run("import_events", path, "--batch-size", "2000")
    assert Interaction.objects.count() == rows
    assert _summary(out)["stored"] + _summary(out)["duplicates"] == rows
    assert online.read_history(keys.owner_for(customer_id="c0", session_id=""), limit=100)
    assert not redis_client.get().exists(keys.IMPORT_REBUILD_PENDING)


@pytest.mark.django_db(transaction=True)
def test_items_changed_before_an_import_stopped_are_news_to_serving(tmp_path: Path) -> None:
    """The catalog version (which tells every serving process to drop its item rows) moved only when an import ran
    to its end: one stopped by --max-errors after a batch took items out of stock left them in stock for serving."""
    ItemFactory(external_id="sku-1", in_stock=True)
    path = tmp_path / "stock.csv"
    path.write_text("item_id,title,in_stock\nsku-1,Mug,no\nsku-2,,no\n")
    before = redis_client.get().get(CATALOG_VERSION_KEY)
    with pytest.raises(ImportAborted, match="stopped after 1 bad rows"):
        items_import(path=path, batch_size=1, max_errors=1)
    assert Item.objects.get(external_id="sku-1").in_stock is False
    assert redis_client.get().get(CATALOG_VERSION_KEY) != before


@pytest.mark.django_db
def test_an_imported_description_is_one_the_api_takes_back(tmp_path: Path, api: APIClient) -> None:
    """import_items stored descriptions up to the CSV reader's 131,072 characters, the API takes 20,000: a PUT of
    what GET gave for such an item was a 400."""
    path = tmp_path / "items.csv"
    path.write_text(f"item_id,title,description\nsku-1,Mug,{'d' * 20_000}\nsku-2,Bowl,{'d' * 20_001}\n")
    _, err = _run_failing("import_items", path, match="1 row was rejected")
    assert "items.csv:3: description: longer than 20,000 characters" in err
    body = api.get("/v1/items/sku-1").json()
    sent = {name: body[name] for name in ("title", "description", "category", "brand", "price", "tags")}
    assert api.put("/v1/items/sku-1", sent, format="json").status_code == 200


@pytest.mark.django_db
def test_a_windows_excel_csv_is_read_with_its_encoding_named(tmp_path: Path) -> None:
    """Excel on Windows saves "CSV" as cp1252: every row with an accent was refused ("not UTF-8 text"), and nothing
    said how to read it. The refusal now names ``--encoding``, which reads the file as it was written."""
    ItemFactory(external_id="sku-1")
    items = tmp_path / "items.csv"
    items.write_bytes("item_id,title,price\nsku-2,Café crème,4.50\nsku-3,Plain,1\n".encode("cp1252"))
    _, err = _run_failing("import_items", items, match="1 row was rejected")
    assert "items.csv:2: not UTF-8 text (save the file as UTF-8, or name its encoding: --encoding cp1252)" in err
    out, _ = _run("import_items", items, "--encoding", "cp1252")
    assert Item.objects.get(external_id="sku-2").title == "Café crème"
    events = tmp_path / "events.csv"
    events.write_bytes("customer_id,item_id,type,occurred_at\nJosé,sku-1,view,2026-11-01T10:00:00Z\n".encode("cp1252"))
    out, _ = _run("import_events", events, "--encoding", "windows-1252")
    assert Interaction.objects.get().customer.external_id == "José"
    # UTF-8 named: its byte-order mark is still no part of the first column's name.
    items.write_bytes("\ufeffitem_id,title\nsku-4,Tee\n".encode())
    out, _ = _run("import_items", items, "--encoding", "utf-8")
    assert _summary(out)["stored"] == 1
    for name in ("bogus", "rot13"):
        with pytest.raises(CommandError, match=f"--encoding '{name}': not a text encoding Python knows"):
            call_command("import_events", str(events), "--encoding", name, stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
def test_decimal_commas_are_read_with_the_option_and_named_without_it(tmp_path: Path) -> None:
    """A spreadsheet where the comma is the decimal mark saves ``1.234,50`` (separated by semicolons): every price
    was refused as "not a number", naming nothing to do about it."""
    ItemFactory(external_id="85123A")
    items = tmp_path / "items.csv"
    items.write_text("item_id;title;price\nsku-1;Mug;1.234,50\nsku-2;Bowl;4,5\nsku-3;Cup;7\n")
    _, err = _run_failing("import_items", items, match="2 rows were rejected")
    assert "items.csv:2: price: '1.234,50' is not a number (a decimal comma? import with --decimal-comma)" in err
    _run("import_items", items, "--decimal-comma")
    prices = dict(Item.objects.filter(external_id__startswith="sku-").values_list("external_id", "price"))
    assert {item: str(price) for item, price in prices.items()} == {
        "sku-1": "1234.50",
        "sku-2": "4.50",
        "sku-3": "7.00",
    }
    events = tmp_path / "events.csv"
    events.write_text("customer_id;item_id;type;value;occurred_at\nc1;85123A;rating;7,5;2026-11-01T10:00:00Z\n")
    _, err = _run_failing("import_events", events, match="1 row was rejected")
    assert "events.csv:2: value: '7,5' is not a number (a decimal comma? import with --decimal-comma)" in err
    _run("import_events", events, "--decimal-comma")
    assert Interaction.objects.get().value == 7.5
    retail = tmp_path / "retail.csv"
    retail.write_text(
        "InvoiceNo;StockCode;Description;Quantity;InvoiceDate;UnitPrice;CustomerID;Country\n"
        "536365;85123A;MUG;6;12/1/2010 8:26;2,55;17850;United Kingdom\n"
    )
    out, _ = _run("import_events", retail, "--format", "online-retail", "--decimal-comma")
    assert _summary(out)["stored"] == 1
