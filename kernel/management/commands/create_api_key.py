"""manage.py create_api_key NAME --scope recommend --scope events: prints the new key once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.api_keys import api_key_create
from kernel.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key with the given scopes and print it (it is stored hashed and never shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who uses the key, e.g. 'storefront production'")
        parser.add_argument(
            "--scope", action="append", dest="scopes", choices=ApiKey.Scope.values,
            help="repeat for several scopes (default: recommend and events)",
        )  # fmt: skip
        parser.add_argument("--rate-per-minute", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = options["scopes"] or [ApiKey.Scope.RECOMMEND, ApiKey.Scope.EVENTS]
        try:
            key, plaintext = api_key_create(
                name=options["name"], scopes=scopes, rate_per_minute=options["rate_per_minute"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"Created API key {key.prefix}… for {key.name!r} with scopes {', '.join(key.scopes)}.")
        self.stdout.write(plaintext)
