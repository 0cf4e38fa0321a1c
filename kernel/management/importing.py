"""The part of the import commands that is the same for items and events: progress bar, bad-row lines, summary."""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kernel.csvimport import ImportAborted, ImportSummary, RowError
from kernel.management.stopping import sigterm_as_exit, stopped_status

MAX_PRINTED_ERRORS = 50


class ImportStopped(CommandError):
    """The import stopped part-way (or could not start); ``summary`` says what was stored before, when known;
    ``interrupted``: by Ctrl-C or SIGTERM (the operator wants it to stop now, not to rebuild anything first)."""

    def __init__(
        self, message: str, summary: ImportSummary | None, *, interrupted: bool = False, returncode: int = 1
    ) -> None:
        super().__init__(message, returncode=returncode)
        self.summary = summary
        self.interrupted = interrupted


ENCODING_HELP = (
    "the file's encoding when it is neither UTF-8 nor UTF-16 with a byte-order mark (both recognised), e.g. cp1252 "
    "(Excel on Windows), latin-1, mac_roman"
)


DECIMAL_COMMA_HELP = (
    "numbers are written with a decimal comma, thousands grouped by dots (1.234,50), as a spreadsheet saves them "
    "where the comma is the decimal mark"
)


def encoding_checked(name: str | None) -> str | None:
    """``--encoding`` as a codec Python reads with; UTF-8 as ``utf-8-sig``, so a byte-order mark is not read as text."""
    if name is None:
        return None
    try:
        "x".encode(name)  # refuses codecs that are no text encodings (rot13, base64) as unknown ones
    except LookupError:
        raise CommandError(
            f"--encoding {name!r}: not a text encoding Python knows (utf-8, cp1252, latin-1, ...)"
        ) from None
    codec = codecs.lookup(name).name
    return "utf-8-sig" if codec == "utf-8" else codec


def rejected_rows_fail(summary: ImportSummary) -> None:
    """Exit non-zero when rows were rejected, after the summary (the rest of the file is stored): a scheduled
    ``import_items feed.csv && ...`` otherwise never learned that rows were left out, since the command exited 0
    whatever it refused (found by a fourteenth tester, 6 December)."""
    if summary.rejected:
        rows = "row was" if summary.rejected == 1 else "rows were"
        raise CommandError(
            f"{summary.path}: {summary.rejected:,} {rows} rejected (named above by line and reason); the "
            "rest of the file was imported, and a re-run after fixing them stores only what changed"
        )


def run_import(command: BaseCommand, importer: Callable[..., ImportSummary], path: str, **kwargs: Any) -> ImportSummary:
    """Run ``importer`` with a byte-based progress bar on stderr and print each bad row as ``FILE:LINE: reason``."""
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    printed = 0

    def report(error: RowError) -> None:
        nonlocal printed
        printed += 1
        if printed <= MAX_PRINTED_ERRORS:
            bar.write(f"{path}:{error.line}: {error.reason}", file=command.stderr._out)
        elif printed == MAX_PRINTED_ERRORS + 1:
            bar.write(f"{path}: more bad rows follow; only the first {MAX_PRINTED_ERRORS} are printed")

    bar = tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, desc=os.path.basename(path),
        file=command.stderr._out, disable=kwargs.pop("quiet", False), mininterval=0.5,
    )  # fmt: skip

    def progress(position: int) -> None:
        bar.update(position - bar.n)

    summary = ImportSummary(path=path)
    try:
        with sigterm_as_exit():
            summary = importer(path=path, on_progress=progress, on_error=report, summary=summary, **kwargs)
    except ImportAborted as exc:
        bar.close()
        raise ImportStopped(str(exc), exc.summary) from exc
    except (KeyboardInterrupt, SystemExit) as exc:
        # Batches commit on their own and a re-run skips what they stored: say so in one line, not a traceback.
        bar.close()
        status = stopped_status(exc)
        raise ImportStopped(
            f"{path}: interrupted after reading {summary.read:,} rows, {summary.stored + summary.updated:,} of them "
            "stored; run the "
            "same command again to import the rest (what was stored is skipped, not stored twice)",
            summary, interrupted=True, returncode=status,
        ) from exc  # fmt: skip
    bar.close()
    command.stdout.write(summary.table())
    return summary
