"""Shared bench helpers: a separate database on the same server, subprocess timing, table printing."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bench_env(database: str = "recsys_bench") -> dict[str, str]:
    """Environment for manage.py pointing at a scratch database ``database`` on the configured (or local) server.

    Benchmarks never touch the demo's database.
    """
    from recsys.localservices import ensure_local_services

    ensure_local_services()
    import psycopg

    url = os.environ["DATABASE_URL"]
    parts = urlsplit(url)
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    env = dict(os.environ)
    env["DATABASE_URL"] = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))
    env.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")
    return env


def manage(env: dict[str, str], *args: str, capture: bool = True) -> tuple[float, str]:
    """Run ``manage.py args`` and return (seconds, stdout); raises on failure."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, text=True,
        capture_output=capture, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return seconds, result.stdout or ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
