"""The part of the import commands that is the same for items and events: progress bar, bad-row lines, summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kernel.csvimport import ImportAborted, ImportSummary, RowError

MAX_PRINTED_ERRORS = 50


class ImportStopped(CommandError):
    """The import stopped part-way (or could not start); ``summary`` says what was stored before, when known."""

    def __init__(self, message: str, summary: ImportSummary | None) -> None:
        super().__init__(message)
        self.summary = summary


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

    try:
        summary = importer(path=path, on_progress=progress, on_error=report, **kwargs)
    except ImportAborted as exc:
        bar.close()
        raise ImportStopped(str(exc), exc.summary) from exc
    bar.close()
    command.stdout.write(summary.table())
    return summary
