"""manage.py load_demo: the Online Retail demo catalog and purchases, shipped inside the project."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from catalog.importing import items_import
from catalog.services import category_get_or_create
from events import partitions
from events.models import Interaction
from events.services import interactions_import
from kernel.management.importing import run_import
from storefront.demo.build import DATA_FILE, build_items_csv
from storefront.demo.categories import CATEGORY_NAMES
from storefront.demo.guard import refuse_without_demo


class Command(BaseCommand):
    help = (
        "Load the UCI Online Retail demo data (CC BY 4.0, see storefront/demo/README.md): about 3,900 items with "
        "derived categories, 4,300 customers and 390,000 purchases. Does nothing if interactions already exist. "
        "`make run` then trains a model and runs replay_demo_traffic, which serves real lists over the data's last "
        "days so the quality dashboard has (labelled) figures."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="import even if data exists (stores nothing twice)")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        refuse_without_demo("load_demo")
        if Interaction.objects.exists() and not options["force"]:
            self.stdout.write("Interactions already exist: the demo data is not loaded again (use --force).")
            return
        for key, name in CATEGORY_NAMES.items():
            category_get_or_create(external_id=key, name=name)
        items_csv = settings.BASE_DIR / "var" / "demo" / "items.csv"
        self.stderr.write(f"Building the demo catalog from {DATA_FILE.name} …")
        count = build_items_csv(items_csv)
        self.stderr.write(f"{count:,} items; importing")
        run_import(self, items_import, str(items_csv), quiet=options["quiet"])
        self.stderr.write("Importing purchases")
        run_import(self, interactions_import, str(DATA_FILE), fmt="online-retail", quiet=options["quiet"])
        # 2010-2011 purchases landed in the default partition: each month gets its own, as import_events does (else
        # retention deletes them row by row; docs/operations.md, "Postgres at volume").
        partitions.partitions_split_default(tables=(partitions.INTERACTIONS,))
