"""manage.py replay_demo_traffic: serve real recommendation lists to the demo customers over the last days of the
demo data and score them against what the customers ordered, so the quality dashboard has figures
(storefront/demo/replay.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from events import partitions
from storefront.demo import replay
from storefront.demo.guard import refuse_without_demo


class Command(BaseCommand):
    help = (
        "Replay the last DAYS days of the demo purchases as recommendation traffic: real lists from the serving "
        "pipeline for a sample of that day's customers (their history as it was that morning), logged as "
        "impressions dated on the last DAYS calendar days, with their orders of recommended items as attributed "
        "clicks and purchases; then the daily quality figures. The dashboard labels them as replayed. Does nothing "
        "when a replay is already stored (use --force to replace it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=14)
        parser.add_argument("--customers-per-day", type=int, default=100)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="replace an earlier replay")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        refuse_without_demo("replay_demo_traffic")
        if replay.demo_traffic_exists() and not options["force"]:
            self.stdout.write("Replayed demo traffic is already stored: not replayed again (use --force).")
            return
        days, per_day = max(1, options["days"]), max(1, options["customers_per_day"])
        bar = tqdm(
            total=replay.planned_lists(days=days, customers_per_day=per_day), unit="list", desc="replaying",
            file=self.stderr._out, disable=options["quiet"], mininterval=0.5,
        )  # fmt: skip
        try:
            summary = replay.demo_traffic_replay(
                days=days, customers_per_day=per_day, seed=options["seed"], on_list=lambda: bar.update(1)
            )
        finally:
            bar.close()
        # Replayed lists and their orders are dated in past months no partition was made for yet (as load_demo).
        partitions.partitions_split_default()
        if summary.cleared:
            self.stdout.write(f"Replaced an earlier replay ({summary.cleared:,} lists).")
        for day in summary.days:
            latency = f"{day.latency_p95_ms:.1f} ms" if day.latency_p95_ms is not None else "-"
            self.stdout.write(
                f"  {day.demo_day} -> {day.day}: {day.lists:>5,} lists, {day.clicked:>4,} led to an order, "
                f"p95 {latency}"
            )
        self.stdout.write(
            f"{summary.lists:,} lists replayed over {len(summary.days)} days; {summary.clicked:,} led to an order of a "
            "recommended item. See the quality dashboard in the admin."
        )
