"""manage.py rebuild_online_state: rebuild histories, affinities and item counters in Redis from Postgres."""

from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from events.online import HISTORY_LENGTH
from events.services import RebuildAborted, RebuildInProgress, online_state_rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the events online state in Redis from Postgres: every customer's and session's latest events, "
        "category affinities, hourly item counters of the last 8 days, cache versions bumped, item features "
        "folded. Run it after Redis lost data or when recsys_online_state_errors_total rose. Idempotent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--history-length", type=int, default=HISTORY_LENGTH, help="events kept per owner")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def handle(self, *args: Any, **options: Any) -> None:
        bars: dict[str, tqdm] = {}

        def progress(stage: str, rows: int) -> None:
            if stage not in bars:
                for bar in bars.values():
                    bar.close()
                bars[stage] = tqdm(
                    desc=stage, unit=" rows", unit_scale=True, file=self.stderr._out,
                    disable=options["quiet"], mininterval=0.5,
                )  # fmt: skip
            bars[stage].update(rows)

        try:
            summary = online_state_rebuild(history_length=options["history_length"], on_progress=progress)
        except RebuildInProgress as exc:
            raise CommandError(f"{exc}; wait for it to finish") from exc
        except RebuildAborted as exc:
            raise CommandError(f"{exc}; run it again") from exc
        except redis.RedisError as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        finally:
            for bar in bars.values():
                bar.close()
        self.stdout.write(summary.table())
