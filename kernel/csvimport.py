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


# A number with a decimal comma, its thousands (if any) grouped by dots: ``4,5``, ``1.234,50``, ``-12``.
_DECIMAL_COMMA = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?")
DECIMAL_COMMA_HINT = " (a decimal comma? import with --decimal-comma)"


def decimal_comma_read(raw: str) -> str:
    """``raw`` as Python reads numbers, when it is written with a decimal comma (``1.234,50`` is ``1234.50``), as a
    spreadsheet saves them where the comma is the decimal mark; anything else as it is, for the parser to judge."""
    text = raw.strip()
    if _DECIMAL_COMMA.fullmatch(text):
        return text.replace(".", "").replace(",", ".")
    return raw


def number_hint(raw: str) -> str:
    """What to add to "is not a number" for ``raw``: the option, when it holds a comma."""
    return DECIMAL_COMMA_HINT if "," in raw else ""


_SURROGATE = re.compile("[\udc80-\udcff]")


def _not_utf8(cells: list[str]) -> bool:
    """Whether the cells hold bytes that were not UTF-8 (decoded as lone surrogates)."""
    text = "".join(cells)
    return not text.isascii() and _SURROGATE.search(text) is not None


# What a file's first bytes say it is, when that is not CSV text: named, not read as text ("not UTF-8").
_NOT_CSV = {
    b"PK\x03\x04": "a zip archive (an Excel .xlsx workbook is one)",
    b"\xd0\xcf\x11\xe0": "an Excel .xls workbook",
}
_GZIP = b"\x1f\x8b"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# The separators a spreadsheet writes into a "CSV" (semicolons where the comma is the decimal mark, tabs for
# "Unicode text"): the header line decides, commas on a tie.
_DELIMITERS = (",", ";", "\t")


class CsvSource:
    """Line-numbered rows of a CSV file (plain or gzip-compressed, whatever its name) with a progress position in
    bytes. Read as a spreadsheet writes it: UTF-8 with or without a byte-order mark, or UTF-16 with one; separated by
    commas, semicolons or tabs (the header line says which); column names in any case, surrounded by spaces; a
    column without a name (a trailing separator) and rows of empty cells ignored."""

    def __init__(
        self, path: str | Path, *, required: set[str], optional: set[str], encoding: str | None = None
    ) -> None:
        """``encoding``: the file's, when it is not UTF-8 or UTF-16 with a byte-order mark (which are recognised),
        e.g. ``cp1252``, what Excel on Windows saves as "CSV"; a codec name Python knows."""
        self.path = Path(path)
        self.encoding = encoding
        if not self.path.exists():
            raise ImportAborted(f"{self.path}: no such file")
        if not self.path.is_file():
            raise ImportAborted(f"{self.path}: not a file")
        self.size = os.path.getsize(self.path)
        try:
            self._raw: io.BufferedReader = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:  # not readable by this user
            raise ImportAborted(f"{self.path}: cannot be opened ({exc.strerror})") from exc
        self._text: io.TextIOWrapper | None = None
        try:
            self._read_header(required, optional)
        except BaseException:
            self.close()
            raise

    def _read_header(self, required: set[str], optional: set[str]) -> None:
        try:
            self._text = self._open_text()
            first = self._text.readline()
            # The header line alone decides the separator; the rows are read with it, from the next line on.
            delimiter = max(_DELIMITERS, key=lambda d: len(next(csv.reader([first], delimiter=d), [])))
            header = next(csv.reader([first], delimiter=delimiter), [])
        except (UnicodeDecodeError, OSError, EOFError, zlib.error, csv.Error) as exc:
            raise ImportAborted(f"{self.path}, line 1: cannot read the header: {exc}") from exc
        if not first:
            raise ImportAborted(f"{self.path}: the file is empty (a header line is required)")
        if _not_utf8(header):
            raise ImportAborted(f"{self.path}, line 1: the header is not {self._encoding_name} text{self._hint}")
        self._reader = csv.reader(self._text, delimiter=delimiter)
        self._width = len(header)
        # A name is matched in any case (``Item_ID``); the canonical spelling is the one the importer asks for.
        canonical = {name.lower(): name for name in required | optional}
        named = [(position, canonical.get(name.strip().lower(), name.strip())) for position, name in enumerate(header)]
        named = [(position, name) for position, name in named if name]
        self.columns = [name for _, name in named]
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
        self.index = {name: position for position, name in named}

    def _open_text(self) -> io.TextIOWrapper:
        magic = self._raw.peek(4)[:4]
        for start, kind in _NOT_CSV.items():
            if magic.startswith(start):
                raise ImportAborted(f"{self.path}: {kind}, not CSV text: save or export it as CSV (UTF-8)")
        # By content, not by name: a ``.CSV.GZ`` or a compressed feed named ``.csv`` was read as text ("the header is
        # not UTF-8") or not at all.
        stream = gzip.GzipFile(fileobj=self._raw) if magic.startswith(_GZIP) else self._raw
        opening = stream.peek(2)[:2]
        encoding = self.encoding or ("utf-16" if opening in _UTF16_BOMS else "utf-8-sig")
        # Bytes that are not UTF-8 decode to lone surrogates (never an exception mid-chunk, which lost the rows of
        # the whole 8 KB chunk around one bad byte): the row holding them is reported (rows) and the rest read.
        return io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")

    def rows(self, errors: ErrorLog) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, cells); rows with the wrong cell count or bad encoding go to ``errors``."""
        width = self._width
        line = 1
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                errors.add(self._reader.line_num + 1, f"unreadable row: {exc}")
                continue
            # A truncated or corrupt gzip, a read error; a UTF-16 file cut within a character (its bytes cannot be
            # escaped as UTF-8's can: the row is not reportable on its own).
            except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                raise ImportAborted(
                    f"{self.path}, after line {line}: the file cannot be read further ({exc}); the rows before it "
                    "were read"
                ) from exc
            line = self._reader.line_num + 1  # the header line was read before this reader's first
            if _not_utf8(row):
                errors.add(line, f"not {self._encoding_name} text{self._hint}")
                continue
            if not any(cell.strip() for cell in row):  # a blank line, or a spreadsheet's row of empty cells
                continue
            if len(row) != width:
                errors.add(line, f"expected {width} columns, found {len(row)}")
                continue
            yield line, row

    @property
    def _encoding_name(self) -> str:
        return self.encoding or "UTF-8"

    @property
    def _hint(self) -> str:
        # A file from Excel on Windows is cp1252: every row with an accent was refused, and nothing said how to read it.
        if self.encoding is None:
            return " (save the file as UTF-8, or name its encoding: --encoding cp1252)"
        return ""

    def position(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        self._raw.close()

    def __enter__(self) -> CsvSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
