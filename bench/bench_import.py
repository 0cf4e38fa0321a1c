"""Import throughput: the full UCI Online Retail file (541,909 rows) through `manage.py import_events`.

Runs in a scratch database (recsys_bench) on the same Postgres: each round empties the tables, imports the items,
then times the events import (first run, `--no-rebuild`), the online-state rebuild `import_events` runs by default
after it, and a second run of the same file (which must store nothing, so it rebuilds nothing).
Target: >= 50,000 rows/s on the 2-core machine. Usage: python bench/bench_import.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re

from common import ROOT, bench_env, manage, median, print_environment, print_table

DATA = ROOT / "storefront" / "demo" / "online_retail.csv.gz"
ROWS = 541_909


def _count(out: str, name: str) -> int:
    match = re.search(rf"^{name}\s+([\d,]+)$", out, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_environment()
    env = bench_env()
    manage(env, "migrate", "--verbosity", "0")
    first, second, stored, again, rebuild = [], [], [], [], []
    for _ in range(args.rounds):
        manage(env, "shell", "-c", "from django.db import connection; connection.cursor().execute("
               "'TRUNCATE events_interaction, catalog_customer, catalog_item, catalog_category, catalog_brand "
               "RESTART IDENTITY CASCADE')")  # fmt: skip
        manage(env, "load_demo", "--quiet")  # items + events; we time the events import on its own below
        manage(env, "shell", "-c", "from django.db import connection; connection.cursor().execute("
               "'TRUNCATE events_interaction, catalog_customer RESTART IDENTITY CASCADE')")  # fmt: skip
        # The rows alone (the target's figure), then the online-state rebuild `import_events` runs by default.
        seconds, out = manage(env, "import_events", str(DATA), "--format", "online-retail", "--quiet", "--no-rebuild")
        first.append(seconds)
        stored.append(_count(out, "stored"))
        seconds, _ = manage(env, "rebuild_online_state", "--quiet")
        rebuild.append(seconds)
        seconds, out = manage(env, "import_events", str(DATA), "--format", "online-retail", "--quiet")
        second.append(seconds)
        again.append(_count(out, "stored"))
    print_table(
        f"import_events, UCI Online Retail ({ROWS:,} rows), median of {args.rounds} rounds (process wall time)",
        ["run", "seconds", "rows/s", "stored", "target rows/s", "ratio to target"],
        [
            ["first import", median(first), ROWS / median(first), median(stored), 50_000,
             f"{ROWS / median(first) / 50_000:.2f}x"],
            ["re-run (no-op)", median(second), ROWS / median(second), median(again), 50_000,
             f"{ROWS / median(second) / 50_000:.2f}x"],
            ["first import + the online-state rebuild (import_events' default)", median(first) + median(rebuild),
             ROWS / (median(first) + median(rebuild)), median(stored), "-", "-"],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
