"""manage.py train: a new model version from the interactions in Postgres, validated, registered and (if not
worse than the active one) activated."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ranking import tuning
from ranking.evaluation import format_table
from ranking.services import TrainingBusy, TrainingError, model_train
from ranking.training import StageTimer, TrainParams

TRAIN_STAGES = (
    "load", "content_vectors", "validation_split", "tuning", "validation_train", "validation_eval", "validation_guard",
    "weights",
    "als", "item_knn", "ease", "fbt",
    "content", "popularity_trending", "ann", "write",
)  # fmt: skip


def parse_datetime_option(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{name} {value!r} is not an ISO 8601 date or date-time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:  # in UTC, within the years a database date holds (an offset of +20:00 reached Postgres and failed there)
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise CommandError(f"{name} {value!r} is outside the years a date can hold") from None
    if not 1900 <= parsed.year <= 3000:
        raise CommandError(f"{name} {value!r} is not between 1900 and 3000")
    return parsed


class Command(BaseCommand):
    help = (
        "Train every source (ALS, item-kNN, EASE, co-purchase, content, popularity, trending) on the interactions, "
        "validate on the window's last days, write the artifacts, register a model version and activate it if its "
        "validation NDCG is not worse than the active version's (beyond the tolerance) or with --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, help="train on the last N days of data only (default: all)")
        parser.add_argument("--since", help="window start, ISO 8601 (UTC if no offset)")
        parser.add_argument("--until", help="window end (exclusive), ISO 8601; default: after the latest event")
        parser.add_argument("--force", action="store_true", help="activate even if validation is worse")
        parser.add_argument("--no-activate", action="store_true", help="register as a candidate only")
        parser.add_argument("--ann-kind", choices=["auto", "flat", "hnsw", "ivf"], default=None)
        parser.add_argument(
            "--param", action="append", default=[], metavar="NAME=VALUE",
            help="override a training parameter (JSON value), e.g. --param als_factors=128; repeatable",
        )  # fmt: skip
        parser.add_argument(
            "--budget", type=float, default=None, metavar="SECONDS",
            help=f"seconds the parameter search may take (default {TrainParams().tune_budget_seconds:g}; 0: no "
            "tuning, the parameters as given)",
        )  # fmt: skip
        parser.add_argument("--quiet", action="store_true", help="no progress output")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            params = TrainParams().with_overrides(options["param"])
            if options["ann_kind"]:
                params = params.replace(ann_kind=options["ann_kind"])
        except (TypeError, ValueError) as exc:
            raise CommandError(f"--param: {exc}") from exc
        if options["days"] is not None and not (math.isfinite(options["days"]) and options["days"] > 0):
            raise CommandError("--days must be a positive number")
        if options["budget"] is not None:
            if not math.isfinite(options["budget"]) or options["budget"] < 0:
                raise CommandError("--budget must be zero or positive (seconds)")
            params = params.replace(tune_budget_seconds=options["budget"])
        timer = StageTimer(TRAIN_STAGES, desc="train", file=self.stderr._out, enabled=not options["quiet"])
        try:
            result = model_train(
                params=params,
                since=parse_datetime_option(options["since"], "--since"),
                until=parse_datetime_option(options["until"], "--until"),
                days=options["days"],
                force=options["force"],
                activate=not options["no_activate"],
                timer=timer,
                on_event=None if options["quiet"] else self._progress,
            )
        except TrainingBusy as exc:
            raise CommandError(str(exc)) from exc
        except TrainingError as exc:
            raise CommandError(f"cannot train: {exc}") from exc
        finally:
            timer.close()
        version = result.version
        sizes = version.sizes
        lines = [
            f"version      {version.name} (id {version.id})",
            f"status       {version.status} ({version.decision or 'no decision'})",
            f"data         {version.data_from:%Y-%m-%d %H:%M} .. {version.data_to:%Y-%m-%d %H:%M} UTC",
            f"sizes        {sizes['n_users']:,} users, {sizes['n_items']:,} items, "
            f"{sizes['n_interactions']:,} interactions",
            f"ann          {version.ann_kind}, recall@100 {version.ann_recall:.3f}",
            f"artifacts    {version.artifact_path}",
            f"decision     {version.notes.splitlines()[-1] if version.notes else '-'}",
        ]
        self.stdout.write("\n".join(lines))
        validation = result.validation
        if validation is not None:
            plan = validation["protocol"]
            self.stdout.write(f"\nvalidation protocol: {plan['protocol']} ({plan['reason']})")
            search = validation.get("tuning")
            if search is not None:
                # Two validation questions: the figures are their geometric mean (ranking.metrics.balanced).
                scale = "balanced " if any(trial.get("by_question") for trial in search["trials"]) else ""
                self.stdout.write(
                    f"\ntuning: {search['n_trials']} trials in {search['seconds']:.0f} s (budget "
                    f"{search['budget_seconds']:g} s) on {search['validation_users']:,} validation users; chosen "
                    f"trial {search['best_trial']} ({scale}NDCG@10 served {search['best_served_ndcg']:.4f}); the 10 "
                    "best:"
                )
                self.stdout.write(tuning.trials_table(search["trials"], limit=10))
                for hedge in search.get("hedges", []):
                    self.stdout.write(f"tie on the balanced figure: {hedge}")
                chosen = ", ".join(f"{name}={value}" for name, value in search["chosen"].items())
                self.stdout.write(f"chosen: {chosen}")
            self.stdout.write("\nvalidation (chosen values; users the ranker never saw)")
            self.stdout.write(format_table(validation))
            self.stdout.write(f"\nserves: {validation['serve']['choice']} ({validation['serve']['reason']})")
        else:
            self.stdout.write("\nvalidation: skipped (no user has enough events to hold some out); serves the pipeline")
        self.stdout.write("\ntimings")
        self.stdout.write(timer.table())

    def _progress(self, kind: str, payload: Any) -> None:
        """Train's running commentary on stderr: the protocol, each trial, the serve choice."""
        if kind == "plan":
            self.stderr.write(f"  validation protocol: {payload.protocol} ({payload.reason})")
        elif kind == "trial":
            params = ", ".join(f"{name}={value}" for name, value in payload.params.items())
            questions = payload.by_question.get("pipeline", {})
            per_question = f" ({' · '.join(f'{q} {v:.4f}' for q, v in questions.items())})" if questions else ""
            self.stderr.write(
                f"  trial {payload.number:>3} {payload.phase:<7} pipeline {payload.ndcg:.4f}{per_question}, best "
                f"single source {payload.best_source} {payload.best_source_ndcg:.4f} ({payload.seconds:.1f} s): "
                f"{params}"
            )
        elif kind == "ranker":
            self.stderr.write(f"  {payload}")
        elif kind == "serve":
            self.stderr.write(f"  serves: {payload[0]} ({payload[1]})")
