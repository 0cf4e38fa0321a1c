"""Turn the shipped Online Retail file into an items CSV in the generic import format (one pass, no database)."""

from __future__ import annotations

import csv
import gzip
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from storefront.demo.categories import categorize

DATA_FILE = Path(__file__).with_name("online_retail.csv.gz")


def _is_product(stock_code: str) -> bool:
    return any(ch.isdigit() for ch in stock_code)


def build_items_csv(out_path: Path, source: Path = DATA_FILE) -> int:
    """Write one row per product: the most used description as title, the median positive price, the first sale
    as ``created_at`` and a derived category. Returns the number of items written."""
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    first_seen: dict[str, str] = {}
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            code = row["StockCode"].strip().upper()
            if not _is_product(code):
                continue
            description = row["Description"].strip()
            if description and not description.islower():  # lower-case ones are stock notes ("damaged", "?")
                descriptions[code][description] += 1
            try:
                price = float(row["UnitPrice"])
            except ValueError:
                price = 0.0
            if price > 0 and not row["InvoiceNo"].startswith("C"):
                prices[code].append(price)
            when = row["InvoiceDate"].strip()
            if when and (code not in first_seen or when < first_seen[code]):
                first_seen[code] = when
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "description", "category", "brand", "price", "in_stock", "created_at"])
        for code in sorted(set(descriptions) | set(prices)):
            raw = descriptions[code].most_common(1)[0][0] if descriptions[code] else code
            price = f"{statistics.median(prices[code]):.2f}" if prices[code] else ""
            writer.writerow([code, raw.title(), raw, categorize(raw), "", price, "true", first_seen.get(code, "")])
            written += 1
    return written
