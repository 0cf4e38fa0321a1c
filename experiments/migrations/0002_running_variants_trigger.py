"""Database guarantee: at every commit, a running experiment's variant weights sum to 1 and it has one control.

Why a deferred constraint trigger: a CHECK constraint sees one row, and the rule spans all rows of an experiment.
Changing weights takes several UPDATEs (0.5/0.5 -> 0.7/0.3 passes through 0.7/0.5), so the check must run at
COMMIT, not per statement: ``DEFERRABLE INITIALLY DEFERRED``. It fires on any change to experiments_variant
and on experiments_experiment when a row is inserted or its status changes (starting an experiment whose weights
are off is refused too).

Why the row lock: under READ COMMITTED two transactions changing different variants of one experiment could each
see a sum of 1 in their own snapshot and both commit (write skew). The function first locks the experiment row
(FOR NO KEY UPDATE, which does not block foreign-key checks of impressions or variant inserts); the second
transaction waits for the first to commit, and since each statement of a plpgsql function takes a fresh snapshot
under READ COMMITTED, its SUM then sees the committed rows. Services lock the same row first (select_for_update),
so the trigger's lock is already theirs and adds no deadlock.

SQLSTATE 23514 (check_violation) surfaces in Django as IntegrityError. The tolerance, 1e-6, is
``experiments.models.WEIGHT_SUM_TOLERANCE``.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION experiments_check_running_variants(exp_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    exp_status text;
    total double precision;
    controls integer;
BEGIN
    SELECT status INTO exp_status FROM experiments_experiment WHERE id = exp_id FOR NO KEY UPDATE;
    IF exp_status IS DISTINCT FROM 'running' THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(weight), 0), count(*) FILTER (WHERE is_control)
      INTO total, controls
      FROM experiments_variant WHERE experiment_id = exp_id;
    IF abs(total - 1) > 1e-6 THEN
        RAISE EXCEPTION 'variant weights of running experiment % sum to %, not 1', exp_id, round(total::numeric, 6)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'variant_weights_sum_to_one';
    END IF;
    IF controls <> 1 THEN
        RAISE EXCEPTION 'running experiment % has % control variants, not 1', exp_id, controls
            USING ERRCODE = 'check_violation', CONSTRAINT = 'variant_one_control_when_running';
    END IF;
END;
$$;

CREATE FUNCTION experiments_variant_check_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM experiments_check_running_variants(OLD.experiment_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (TG_OP = 'INSERT' OR NEW.experiment_id <> OLD.experiment_id) THEN
        PERFORM experiments_check_running_variants(NEW.experiment_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION experiments_experiment_check_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM experiments_check_running_variants(NEW.id);
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER variant_weights_sum_to_one
    AFTER INSERT OR UPDATE OR DELETE ON experiments_variant
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION experiments_variant_check_trigger();

CREATE CONSTRAINT TRIGGER experiment_running_variants_valid
    AFTER INSERT OR UPDATE OF status ON experiments_experiment
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION experiments_experiment_check_trigger();
"""

REVERSE = """
DROP TRIGGER IF EXISTS experiment_running_variants_valid ON experiments_experiment;
DROP TRIGGER IF EXISTS variant_weights_sum_to_one ON experiments_variant;
DROP FUNCTION IF EXISTS experiments_experiment_check_trigger();
DROP FUNCTION IF EXISTS experiments_variant_check_trigger();
DROP FUNCTION IF EXISTS experiments_check_running_variants(bigint);
"""


class Migration(migrations.Migration):
    dependencies = [("experiments", "0001_initial")]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=REVERSE)]
