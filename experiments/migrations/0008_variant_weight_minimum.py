"""A variant's weight is 0 or at least 0.01 (1% of the experiment's traffic): ``variant_weight_minimum``.

An eleventh tester (6 December) started an A/B experiment whose arm weighed 5e-324: it ran, was served and compared
on next to no units. The services and the admin refuse such a weight now (experiments.validation.MIN_WEIGHT); the
database holds the same bound for every row written from here on.

Rows stored before the rule with 0 < weight < 0.01 are kept as they are: the constraint is added ``NOT VALID``, so
Postgres checks every row inserted or updated from now on and does not scan the existing ones (nor fail the
migration on them). Rewriting those weights would be wrong in every state an experiment can be in: a running or
stopped experiment's weights are its hash ranges (moving them moves units between arms mid-experiment, and the
deferred trigger needs them to keep summing to 1); a concluded one's are the record the results' sample-ratio check
is computed against. A draft holding such a weight cannot be started (``experiment_start`` applies the rule) and
its admin form asks for a valid weight before it saves. Django's state records an ordinary check constraint, so
model validation applies it too. Once no such row remains (``SELECT id FROM experiments_variant WHERE weight > 0
AND weight < 0.01``), ``ALTER TABLE experiments_variant VALIDATE CONSTRAINT variant_weight_minimum`` makes it a
constraint Postgres trusts for every row.
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE experiments_variant
    ADD CONSTRAINT variant_weight_minimum CHECK (weight = 0 OR weight >= 0.01) NOT VALID;
"""
REVERSE = "ALTER TABLE experiments_variant DROP CONSTRAINT variant_weight_minimum;"


class Migration(migrations.Migration):

    dependencies = [
        ("experiments", "0007_impression_anonymous_session"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, reverse_sql=REVERSE)],
            state_operations=[
                migrations.AddConstraint(
                    model_name="variant",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("weight", 0), ("weight__gte", 0.01), _connector="OR"),
                        name="variant_weight_minimum",
                        violation_error_message="A variant's weight must be 0 or at least 0.01.",
                    ),
                ),
            ],
        ),
    ]
