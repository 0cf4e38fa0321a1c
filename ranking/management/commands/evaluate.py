"""manage.py evaluate: offline metrics of every source and of the served pipeline (the same stage code serving
runs) under a protocol (temporal, per-user random, test file), over every test user."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from experiments import services as experiments
from experiments.validation import SLUG
from ranking.evaluation import format_table, to_json
from ranking.services import TrainingError, active_version_params, model_evaluate
from ranking.training import SOURCE_NAMES, StageTimer, TrainParams

# Settings the offline rows cannot follow: evaluate trains its own version and applies no business rules.
_NOT_OFFLINE = ("model_version", "rules_enabled")


class Command(BaseCommand):
    help = (
        "Train every source on a protocol's training part and report precision/recall/NDCG/MAP/hit-rate@K, "
        "coverage, max category share and novelty per source and for the served pipeline (blend; LambdaMART fitted "
        "on part of the test users, whose unseen users form the extra segment ranker_unseen), for all test users "
        "with history and for cold users. "
        "Protocols: --holdout-days N (default 30), --per-user-fraction F --seed S, --test-file events.csv."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        protocol = parser.add_mutually_exclusive_group()
        protocol.add_argument("--holdout-days", type=float, help="global temporal split: the last N days are the test")
        protocol.add_argument("--per-user-fraction", type=float, help="per-user random split: hold out this share")
        protocol.add_argument("--test-file", help="train on the database, test on this CSV (generic import format)")
        parser.add_argument("--seed", type=int, default=42, help="seed of the per-user split")
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument("--json", help="write every figure to this JSON file")
        parser.add_argument("--source", action="append", choices=SOURCE_NAMES, help="only these sources; repeatable")
        parser.add_argument(
            "--no-pipeline", action="store_true",
            help="sources only: skip the served pipeline rows (blend, and LambdaMART fitted on part of the test "
            "users, with and without the diversity cap); --source implies it",
        )  # fmt: skip
        parser.add_argument(
            "--surface", default="home",
            help="the surface whose stored default (experiments: surface default) the served row re-ranks with, as "
            "serving does outside experiments (default: home; a surface without one: the platform defaults)",
        )  # fmt: skip
        parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="training parameter")
        parser.add_argument("--quiet", action="store_true", help="no progress output")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["k"] < 1:
            raise CommandError("--k must be at least 1")
        fraction = options["per_user_fraction"]
        if fraction is not None and not 0 < fraction < 1:
            raise CommandError("--per-user-fraction must be between 0 and 1 (e.g. 0.25)")
        holdout = options["holdout_days"]
        if holdout is not None and not (math.isfinite(holdout) and 0 < holdout <= 36_500):
            raise CommandError("--holdout-days must be a positive number of days (at most 36,500)")
        if options["json"] and not Path(options["json"]).parent.is_dir():
            # checked first: the figures of a whole evaluation were lost to a missing folder
            raise CommandError(f"--json {options['json']}: no such folder")
        if options["test_file"] and not Path(options["test_file"]).is_file():
            raise CommandError(f"--test-file {options['test_file']}: no such file")
        surface = options["surface"]
        if not SLUG.fullmatch(surface):
            raise CommandError(f"--surface {surface[:60]!r}: a surface is a slug of 1 to 50 letters, digits, - or _")
        try:
            surface_config, stored = experiments.surface_default_get(surface=surface)
        except experiments.ExperimentError as exc:
            raise CommandError(f"--surface {surface}: {exc}") from exc
        protocol = "per_user" if fraction is not None else "test_file" if options["test_file"] else "temporal"
        try:
            # The active version's values (tuned by train, with its serve mode) unless there is none.
            base = active_version_params() or TrainParams()
            params = base.with_overrides(options["param"])
        except (TypeError, ValueError) as exc:
            raise CommandError(f"--param: {exc}") from exc
        timer = StageTimer(("load", "split", "train", "evaluate"), desc="evaluate", file=self.stderr._out,
                           enabled=not options["quiet"])  # fmt: skip
        try:
            result = model_evaluate(
                protocol=protocol,
                params=params,
                k=options["k"],
                holdout_days=options["holdout_days"],
                fraction=fraction,
                seed=options["seed"],
                test_file=options["test_file"],
                include=options["source"] or SOURCE_NAMES,
                timer=timer,
                pipeline=not (options["no_pipeline"] or options["source"]),
                surface=surface,
                surface_config=surface_config,
            )
        except TrainingError as exc:
            raise CommandError(f"cannot evaluate: {exc}") from exc
        finally:
            timer.close()
        info = ", ".join(f"{key}={value}" for key, value in result["info"].items())
        self.stdout.write(f"protocol {protocol} ({info}), K={options['k']}")
        self.stdout.write(_served_config_line(result.get("served"), surface, stored) + "\n")
        self.stdout.write(format_table(result))
        self.stdout.write("\ntimings")
        self.stdout.write(timer.table())
        if options["json"]:
            Path(options["json"]).write_text(to_json(result))
            self.stdout.write(f"\nall figures written to {options['json']}")


def _served_config_line(served: dict[str, Any] | None, surface: str, stored: dict[str, Any]) -> str:
    """Which config the served row re-ranked with (the surface's stored default, or the platform defaults)."""
    if stored:
        used = f"surface {surface}'s stored default {json.dumps(stored, sort_keys=True)} over the platform defaults"
        ignored = [name for name in _NOT_OFFLINE if name in stored]
        if ignored:
            used += f" ({', '.join(ignored)} not applied offline: evaluate trains its own version, applies no rules)"
    else:
        used = f"surface {surface} has no stored default: the platform defaults"
    if served is None:  # sources only
        return f"served row: none (sources only); {used}"
    if served["row"] is None:
        return (
            f"served row: none (the version serves the pipeline; its shipped ranker is scored on --test-file only; "
            f"the pipeline rows use the platform defaults); {used}"
        )
    return f"served row {served['row']!r}: {used}"
