"""manage.py rebuild_online_state: rebuild histories, affinities and item counters in Redis from Postgres."""

from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from events import online
from events.online import HISTORY_LENGTH
from events.services import RebuildAborted, RebuildInProgress, RebuildStage, online_state_rebuild
from kernel.management.stopping import sigterm_as_exit, stopped_status


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
        reached: list[RebuildStage] = []  # how far the rebuild got, for the line an interruption prints

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
            with sigterm_as_exit():
                summary = online_state_rebuild(
                    history_length=options["history_length"], on_progress=progress, on_stage=reached.append
                )
        except RebuildInProgress as exc:
            raise CommandError(f"{exc}; wait for it to finish") from exc
        except RebuildAborted as exc:
            raise CommandError(f"{exc}; run it again") from exc
        except redis.RedisError as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        except (KeyboardInterrupt, SystemExit) as exc:
            # The rebuild released its request on the way out; say what that leaves, in one line, not a traceback.
            status = stopped_status(exc)
            raise CommandError(_interrupted(reached[-1] if reached else None), returncode=status) from exc
        finally:
            for bar in bars.values():
                bar.close()
        self.stdout.write(summary.table())


_DEGRADED = (
    "serving reads histories from Postgres (lists marked degraded) until a rebuild completes, and asks a worker for "
    "one at its next personal request; run rebuild_online_state again to rebuild now"
)


def _interrupted(reached: RebuildStage | None) -> str:
    """What an interrupted rebuild left, by how far it got (``reached``: the last stage it reported) and by the
    marker in Redis (unreadable: taken as absent). It said "had not started clearing it" whenever the marker was
    there, also once the rebuild had completed (a reviewer, 6 December)."""
    try:
        complete = online.read_complete()
    except redis.RedisError:
        complete = False
    if complete:
        if reached is None:
            return "interrupted before the rebuild began: the online state is complete and untouched; nothing to do"
        return "interrupted after the rebuild completed: the online state is complete; nothing to do"
    if reached == "clearing":
        return f"interrupted while clearing: the online state is marked incomplete and (partly) cleared; {_DEGRADED}"
    if reached == "rebuilding":
        return f"interrupted while rebuilding: the online state is marked incomplete and partly rebuilt; {_DEGRADED}"
    # Before it cleared anything: the marker taken away by this rebuild (or already missing), nothing deleted.
    return f"interrupted before clearing anything: the online state is marked incomplete; {_DEGRADED}"
