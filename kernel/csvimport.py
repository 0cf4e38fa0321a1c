"""What every CSV importer shares: opening (plain or gzip), header checks, line-numbered rows, bad-row bookkeeping
with ``--max-errors``, progress by bytes read, and the final summary table."""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import io
import os
import re
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class ImportAborted(Exception):
    """Raised when the file cannot be imported at all, or when --max-errors is exceeded."""

    # What the importer had stored when it stopped (batches commit on their own), when it says so.
    summary: ImportSummary | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str


@dataclass
class ImportSummary:
    path: str
    read: int = 0
    stored: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[RowError] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("read", self.read),
            ("stored", self.stored),
            ("updated", self.updated),
            ("duplicates", self.duplicates),
            ("rejected", self.rejected),
        ]
        rows += [(f"skipped: {reason}", count) for reason, count in sorted(self.skipped.items())]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {count:>10,}" for name, count in rows]
        if self.seconds:
            lines.append(f"{'rows/s':<{width}}  {self.read / self.seconds:>10,.0f}")
        return "\n".join(lines)


class ErrorLog:
    """Collects bad rows; raises ImportAborted once more than ``max_errors`` are seen (None: no limit)."""

    def __init__(
        self, summary: ImportSummary, max_errors: int | None, report: Callable[[RowError], None] | None = None
    ) -> None:
        self.summary = summary
        self.max_errors = max_errors
        self.report = report
        # The events importer reports from its parser and its writer thread.
        self._lock = threading.Lock()

    def add(self, line: int, reason: str) -> None:
        with self._lock:
            self._add(line, reason)

    def _add(self, line: int, reason: str) -> None:
        error = RowError(line, reason)
        self.summary.rejected += 1
        if len(self.summary.errors) < 10_000:
            self.summary.errors.append(error)
        if self.report:
            self.report(error)
        if self.max_errors is not None and self.summary.rejected >= self.max_errors:
            raise ImportAborted(
                f"{self.summary.path}: stopped after {self.summary.rejected} bad rows (--max-errors "
                f"{self.max_errors}); rows stored before this point are kept and a re-run skips them."
            )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a bulk import allocates millions of small, acyclic rows.

    Each generation-2 pass walks every live row of the batches in flight; on the 541,909-line demo file that cost
    more than reading the CSV itself. Reference counting still frees everything; the collector resumes after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_SURROGATE = re.compile("[\udc80-\udcff]")


def _not_utf8(cells: list[str]) -> bool:
    """Whether the cells hold bytes that were not UTF-8 (decoded as lone surrogates)."""
    text = "".join(cells)
    return not text.isascii() and _SURROGATE.search(text) is not None


class CsvSource:
    """Line-numbered rows of a CSV file (``.csv`` or ``.csv.gz``) with a progress position in bytes."""

    def __init__(self, path: str | Path, *, required: set[str], optional: set[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ImportAborted(f"{self.path}: no such file")
        if not self.path.is_file():
            raise ImportAborted(f"{self.path}: not a file")
        self.size = os.path.getsize(self.path)
        self._raw: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        stream: IO[bytes] = gzip.GzipFile(fileobj=self._raw) if self.path.suffix == ".gz" else self._raw
        # Bytes that are not UTF-8 decode to lone surrogates (never an exception mid-chunk, which lost the rows of
        # the whole 8 KB chunk around one bad byte): the row holding them is reported (rows) and the rest read.
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._reader = csv.reader(self._text)
        try:
            header = next(self._reader)
        except StopIteration as exc:
            raise ImportAborted(f"{self.path}: the file is empty (a header line is required)") from exc
        except (UnicodeDecodeError, OSError, EOFError, zlib.error, csv.Error) as exc:
            raise ImportAborted(f"{self.path}, line 1: cannot read the header: {exc}") from exc
        if _not_utf8(header):
            raise ImportAborted(f"{self.path}, line 1: the header is not UTF-8 text")
        self.columns = [name.strip() for name in header]
        repeated = sorted(name for name, count in Counter(self.columns).items() if count > 1)
        if repeated:
            raise ImportAborted(f"{self.path}, line 1: column(s) named twice: {', '.join(repeated)}")
        missing = required - set(self.columns)
        if missing:
            raise ImportAborted(
                f"{self.path}, line 1: missing required column(s) {', '.join(sorted(missing))}; "
                f"expected {', '.join(sorted(required | optional))}"
            )
        unknown = set(self.columns) - required - optional
        if unknown:
            raise ImportAborted(f"{self.path}, line 1: unknown column(s) {', '.join(sorted(unknown))}")
        self.index = {name: position for position, name in enumerate(self.columns)}

    def rows(self, errors: ErrorLog) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, cells); rows with the wrong cell count or bad encoding go to ``errors``."""
        width = len(self.columns)
        line = 1
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                errors.add(self._reader.line_num, f"unreadable row: {exc}")
                continue
            except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt gzip, a read error
                raise ImportAborted(
                    f"{self.path}, after line {line}: the file cannot be read further ({exc}); the rows before it "
                    "were read"
                ) from exc
            line = self._reader.line_num
            if _not_utf8(row):
                errors.add(line, "not UTF-8 text (save the file as UTF-8)")
                continue
            if len(row) != width:
                if not row:
                    continue
                errors.add(line, f"expected {width} columns, found {len(row)}")
                continue
            yield line, row

    def position(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._text.close()
        self._raw.close()

    def __enter__(self) -> CsvSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
