"""manage.py rule_dry_run RULE_ID --days N: a (draft) business rule tried on the last N days of served requests,
in the foreground, printing the dry run's tables (ranking/dry_run.py)."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.parsers import json_text_loads
from ranking import dry_run


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_result(result: dict[str, Any]) -> str:
    """The dry run's tables as text."""
    out = [
        f"Dry run of rule {result['rule_id']} ({result['rule']}) on the last {result['days']:g} days"
        + (f", settings {result['config']}" if result["config"] else ""),
        f"Lists changed: {result['lists_changed']} of {result['lists']} ({result['share_changed']:.1%}); "
        f"items affected: {result['items_affected']}",
        *(f"Note: {note}" for note in result.get("notes", ())),
        "",
        "Affected items",
        _table(
            ["item", "title", "lists entered", "lists left", "lists moved", "positions gained"],
            [
                [
                    r["item_id"],
                    r["title"][:40],
                    r["lists_entered"],
                    r["lists_left"],
                    r["lists_moved"],
                    f"{r['positions_gained']:+d}",
                ]
                for r in result["items"]
            ],
        ),  # fmt: skip
        "",
        "Pushed out most often",
        _table(
            ["item", "title", "lists left"],
            [[r["item_id"], r["title"][:40], r["lists_left"]] for r in result["pushed_out"]],
        ),  # fmt: skip
        "",
        "Category mix (share of slots)",
        _table(
            ["category", "before", "after"],
            [[r["name"], f"{r['before']:.1%}", f"{r['after']:.1%}"] for r in result["categories"]],
        ),  # fmt: skip
        "",
        "Estimate (not a measurement): observed attributed rates, position-based model, 95% bootstrap interval",
    ]
    rows = []
    for name, e in result["estimate"].items():
        if not e.get("lists"):
            continue
        low, high = e["interval"]
        rows.append(
            [name, e["before_per_1000"], e["after_per_1000"], f"{e['change']:+.1%}", f"{low:+.1%} .. {high:+.1%}"]
        )
    out.append(_table(["per 1,000 lists", "before", "after", "change", "95% interval"], rows))
    out.append(f"\n({result['seconds']} s)")
    return "\n".join(out)


class Command(BaseCommand):
    help = (
        "Try a business rule (usually a draft) on recent traffic: re-serve a sample of the last N days' served "
        "requests with and without it and print how many lists change, positions gained/lost, the items pushed "
        "out most often, the category mix before/after and an estimate of the click/purchase change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("rule_id", type=int)
        parser.add_argument("--days", type=float, default=dry_run.DEFAULT_DAYS)
        parser.add_argument("--sample", type=int, default=dry_run.DEFAULT_SAMPLE, help="requests to re-serve")
        parser.add_argument(
            "--config", default="", metavar="JSON",
            help='serving settings to change on the draft side, e.g. \'{"diversity_cap": 0.5}\'',
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = json_text_loads(options["config"]) if options["config"] else {}
        except ValueError as exc:  # the API body's rules: nesting, finite numbers (a traceback each before)
            raise CommandError(f"--config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise CommandError("--config must be a JSON object")

        def progress(done: int, total: int) -> None:
            if options["verbosity"] > 1:
                sys.stderr.write(f"\r{done}/{total} requests re-served")

        try:
            result = dry_run.rule_dry_run(
                rule_id=options["rule_id"], days=options["days"], sample=options["sample"], config_changes=config,
                progress=progress,
            )  # fmt: skip
        except dry_run.DryRunError as exc:
            raise CommandError(f"{exc.field}: {exc}") from None
        self.stdout.write(json.dumps(result, indent=2) if options["json"] else format_result(result))
