"""import_items: valid rows upserted, bad rows reported by line with a reason, nothing stored twice."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from catalog.models import Category, Item

pytestmark = pytest.mark.django_db

HEADER = "item_id,title,description,category,brand,price,in_stock,created_at,tags\n"


def _run(path: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_items", str(path), "--quiet", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _summary(out: str) -> dict[str, int]:
    rows = [line.rsplit(None, 1) for line in out.splitlines() if line and not line.startswith("rows/s")]
    return {name.strip(): int(count.replace(",", "")) for name, count in rows}


def test_imports_items_with_categories_brands_and_tags(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        HEADER
        + "A1,Red Mug,A red mug,kitchen,acme,7.50,true,2024-01-02T03:04:05Z,red|mug\n"
        + 'A2,"Lamp, tall",,lighting,,,no,,\n'
    )
    out, _ = _run(path)
    assert _summary(out)["stored"] == 2
    mug = Item.objects.get(external_id="A1")
    assert (mug.title, str(mug.price), mug.in_stock, mug.tags) == ("Red Mug", "7.50", True, ["red", "mug"])
    assert (mug.category.external_id, mug.brand.external_id) == ("kitchen", "acme")
    lamp = Item.objects.get(external_id="A2")
    assert (lamp.title, lamp.price, lamp.in_stock, lamp.brand) == ("Lamp, tall", None, False, None)
    assert Category.objects.filter(external_id__in=["kitchen", "lighting"]).count() == 2


def test_reimport_stores_nothing_and_changed_rows_update(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "A1,Red Mug,,kitchen,,7.50,,,\nA2,Bowl,,kitchen,,3.00,,,\n")
    _run(path)
    again, _ = _run(path)
    assert (_summary(again)["stored"], _summary(again)["updated"], _summary(again)["duplicates"]) == (0, 0, 2)
    path.write_text(HEADER + "A1,Red Mug,,kitchen,,8.00,,,\nA2,Bowl,,kitchen,,3.00,,,\n")
    changed, _ = _run(path)
    assert (_summary(changed)["stored"], _summary(changed)["updated"]) == (0, 1)
    assert str(Item.objects.get(external_id="A1").price) == "8.00"


def test_bad_rows_are_reported_by_line_and_good_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        HEADER
        + "G1,Good,,,,1.00,,,\n"  # line 2
        + ",No id,,,,,,,\n"  # line 3
        + "B2,,,,,,,,\n"  # line 4
        + "B3,Bad price,,,,abc,,,\n"  # line 5
        + "B4,Bad stock,,,,,perhaps,,\n"  # line 6
        + "B5,Bad date,,,,,,last tuesday,\n"  # line 7
        + "B6,Too few columns\n"  # line 8
        + "G2,Also good,,,,2.00,,,\n"  # line 9
    )
    out, err = _run(path)
    assert _summary(out)["stored"] == 2
    assert _summary(out)["rejected"] == 6
    for line, reason in [
        (3, "item_id: is required"),
        (4, "title: is required"),
        (5, "price: 'abc' is not a number"),
        (6, "in_stock: 'perhaps' is not a boolean"),
        (7, "created_at: 'last tuesday' is not an ISO 8601"),
        (8, "expected 9 columns, found 2"),
    ]:
        assert f"items.csv:{line}: {reason}" in err
    assert set(Item.objects.values_list("external_id", flat=True)) == {"G1", "G2"}


def test_max_errors_stops_the_import(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "".join(f",bad {n},,,,,,,\n" for n in range(10)))
    with pytest.raises(CommandError, match=r"stopped after 3 bad rows \(--max-errors 3\)"):
        _run(path, "--max-errors", "3")


def test_missing_required_column_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,description\nA,b\n")
    with pytest.raises(CommandError, match=r"items.csv, line 1: missing required column\(s\) title"):
        _run(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such file"):
        _run(tmp_path / "nope.csv")
