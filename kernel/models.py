"""API keys: hashed at rest, scoped, revocable, with a last-used time."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        RECOMMEND = "recommend", "recommend: read recommendations"
        EVENTS = "events", "events: send interaction events"
        CATALOG = "catalog", "catalog: read and write items and customers"
        ADMIN = "admin", "admin: everything, plus debug traces and forced variants"

    name = models.CharField(max_length=100, help_text="Who uses this key, e.g. 'storefront production'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Identifies the key in logs.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = ArrayField(models.CharField(max_length=16, choices=Scope.choices), default=list)
    rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Requests per minute (at least 1); empty uses the server default.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "recsys_apikey"  # kept from before the move out of recsys/
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scopes__contained_by=["recommend", "events", "catalog", "admin"]),
                name="apikey_scopes_known",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
