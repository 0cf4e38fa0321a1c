"""Experiment lifecycle and the database's guarantees: running experiments of a surface never share a unit (one at a
time, or disjoint ranges of one namespace), weights summing to 1 at commit (deferred constraint trigger), audited
start/stop/conclude, the winner becoming the default."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import AbstractUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from experiments import services
from experiments.models import Experiment, SurfaceDefault, Variant
from experiments.validation import VariantSpec


@pytest.fixture
def user(django_user_model: type[AbstractUser]) -> AbstractUser:
    return django_user_model.objects.create_user("merchandiser")


def _draft(
    key: str,
    *,
    surface: str = "home",
    namespace: tuple[str, float, float] | None = None,
    weights=(0.5, 0.5),
    config: dict | None = None,
) -> Experiment:
    return services.experiment_create(
        key=key,
        name=key,
        surface=surface,
        namespace=namespace,
        variants=[
            VariantSpec("control", weights[0], True),
            VariantSpec("b", weights[1], False, {"ranker": False} if config is None else config),
        ],
    )


def _check_deferred_constraints_now() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _in_savepoint(*changes: Callable[[], object]) -> None:
    """Apply the changes in a savepoint and run the deferred checks before it ends, as COMMIT would."""
    with transaction.atomic():
        for change in changes:
            change()
        _check_deferred_constraints_now()


def _run_behind_the_services_back(experiment: Experiment) -> None:
    with transaction.atomic():
        Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.RUNNING, start_at=timezone.now())


@pytest.mark.django_db
def test_one_running_experiment_per_surface_without_namespaces_is_a_database_constraint(user: AbstractUser) -> None:
    first, second = _draft("first"), _draft("second")
    services.experiment_start(experiment_id=first.pk, user_id=user.pk)

    with pytest.raises(IntegrityError, match="experiment_running_namespace_ranges_disjoint"):
        _run_behind_the_services_back(second)
    with pytest.raises(services.ExperimentError, match="first is already running on home"):
        services.experiment_start(experiment_id=second.pk, user_id=user.pk)
    # Nor may a namespaced experiment join an experiment that takes the whole surface.
    with pytest.raises(IntegrityError, match="experiment_running_one_namespace_per_surface"):
        _run_behind_the_services_back(_draft("namespaced", namespace=("home", 0.0, 0.5)))

    # Another surface may run alongside.
    services.experiment_start(experiment_id=_draft("other-surface", surface="cart").pk, user_id=user.pk)
    assert Experiment.objects.filter(status=Experiment.Status.RUNNING).count() == 2


@pytest.mark.django_db
def test_only_disjoint_ranges_of_one_namespace_run_together(user: AbstractUser) -> None:
    services.experiment_start(experiment_id=_draft("low", namespace=("home", 0.0, 0.5)).pk, user_id=user.pk)
    services.experiment_start(experiment_id=_draft("high", namespace=("home", 0.5, 1.0)).pk, user_id=user.pk)

    overlapping = _draft("middle", namespace=("home", 0.4, 0.6))
    with pytest.raises(services.ExperimentError, match="could share customers"):
        services.experiment_start(experiment_id=overlapping.pk, user_id=user.pk)
    with pytest.raises(IntegrityError, match="experiment_running_namespace_ranges_disjoint"):
        _run_behind_the_services_back(overlapping)
    # Another namespace hashes units independently, so it would overlap every range of this one.
    other_namespace = _draft("elsewhere", namespace=("other", 0.0, 0.1))
    with pytest.raises(services.ExperimentError, match="could share customers"):
        services.experiment_start(experiment_id=other_namespace.pk, user_id=user.pk)
    with pytest.raises(IntegrityError, match="experiment_running_one_namespace_per_surface"):
        _run_behind_the_services_back(other_namespace)
    with pytest.raises(IntegrityError, match="experiment_running_one_namespace_per_surface"):
        _run_behind_the_services_back(_draft("whole"))

    # Once "low" stops, its range is free again: [0.4, 0.6) still touches "high", [0, 0.5) does not.
    services.experiment_stop(experiment_id=Experiment.objects.get(key="low").pk, user_id=user.pk)
    with pytest.raises(services.ExperimentError, match="high is already running"):
        services.experiment_start(experiment_id=overlapping.pk, user_id=user.pk)
    services.experiment_start(experiment_id=_draft("low-2", namespace=("home", 0.0, 0.5)).pk, user_id=user.pk)
    assert set(Experiment.objects.filter(status=Experiment.Status.RUNNING).values_list("key", flat=True)) == {
        "high",
        "low-2",
    }


@pytest.mark.django_db
def test_a_namespace_needs_a_valid_range(user: AbstractUser) -> None:
    with pytest.raises(services.ExperimentError, match="0 <= start < end <= 1"):
        _draft("empty-range", namespace=("home", 0.5, 0.5))
    with pytest.raises(services.ExperimentError, match="slug"):
        _draft("bad-id", namespace=("", 0.0, 0.5))
    experiment = _draft("ok", namespace=("home", 0.0, 0.5))
    for change in ({"namespace_end": 1.5}, {"namespace_start": None}, {"namespace": ""}, {"namespace": None}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Experiment.objects.filter(pk=experiment.pk).update(**change)


@pytest.mark.django_db
def test_trigger_rejects_weights_not_summing_to_one_at_commit(user: AbstractUser) -> None:
    experiment = _draft("weights")
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    control = Variant.objects.get(experiment=experiment, is_control=True)

    with pytest.raises(IntegrityError, match="sum to 0.7"):
        _in_savepoint(lambda: Variant.objects.filter(pk=control.pk).update(weight=0.2))

    # Deferred, not per statement: a change passing through an invalid sum is fine if it ends valid.
    _in_savepoint(
        lambda: Variant.objects.filter(pk=control.pk).update(weight=0.7),
        lambda: Variant.objects.filter(experiment=experiment, name="b").update(weight=0.3),
    )
    assert sorted(Variant.objects.filter(experiment=experiment).values_list("weight", flat=True)) == [0.3, 0.7]


@pytest.mark.django_db
def test_trigger_rejects_a_second_control_and_starting_behind_the_service(user: AbstractUser) -> None:
    experiment = _draft("controls", weights=(0.6, 0.4))
    Variant.objects.filter(experiment=experiment, name="b").update(weight=0.3)  # a draft edited badly...
    with pytest.raises(services.ExperimentError, match="sum to 1"):  # ...is refused by the service...
        services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    # ...and by the database when the service is bypassed.
    with pytest.raises(IntegrityError, match="sum to 0.9"):
        _in_savepoint(
            lambda: Experiment.objects.filter(pk=experiment.pk).update(
                status=Experiment.Status.RUNNING, start_at=timezone.now()
            )
        )

    Variant.objects.filter(experiment=experiment, name="b").update(weight=0.4)
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    with pytest.raises(IntegrityError, match="0 control variants"):
        _in_savepoint(lambda: Variant.objects.filter(experiment=experiment).update(is_control=False))


@pytest.mark.django_db(transaction=True)
def test_trigger_fires_at_a_real_commit(user: AbstractUser) -> None:
    experiment = _draft("commit")
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)

    def change_and_commit() -> None:
        with transaction.atomic():
            Variant.objects.filter(experiment=experiment, name="b").update(weight=0.9)
            # The statement itself succeeds; the COMMIT at the end of the block is refused.
            assert Variant.objects.get(experiment=experiment, name="b").weight == 0.9

    with pytest.raises(IntegrityError, match="not 1"):
        change_and_commit()

    assert Variant.objects.get(experiment=experiment, name="b").weight == 0.5


@pytest.mark.django_db
def test_start_stop_conclude_are_audited_and_the_winner_becomes_the_default(user: AbstractUser) -> None:
    SurfaceDefault.objects.create(surface="home", config={"diversity_cap": 0.4})
    experiment = _draft("lifecycle")

    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    with pytest.raises(services.ExperimentError, match="Only a draft"):
        services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    services.experiment_stop(experiment_id=experiment.pk, user_id=user.pk)
    with pytest.raises(services.ExperimentError, match="no variant named"):
        services.experiment_conclude(experiment_id=experiment.pk, winner="zzz", user_id=user.pk)
    services.experiment_conclude(experiment_id=experiment.pk, winner="b", user_id=user.pk)

    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.CONCLUDED
    assert experiment.winner.name == "b"
    assert experiment.end_at >= experiment.start_at
    assert SurfaceDefault.objects.get(surface="home").config == {"diversity_cap": 0.4, "ranker": False}
    messages = list(
        LogEntry.objects.filter(object_id=str(experiment.pk), user=user)
        .order_by("id")
        .values_list("change_message", flat=True)
    )
    assert messages[0].startswith("Started")
    assert messages[1] == "Stopped."
    assert "winner b" in messages[2]
    assert LogEntry.objects.filter(object_repr="home", user=user).exists()  # the default's change too


@pytest.mark.django_db
def test_conclude_without_winner_keeps_the_default(user: AbstractUser) -> None:
    experiment = _draft("rollback")
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)

    services.experiment_conclude(experiment_id=experiment.pk, winner=None, user_id=user.pk)

    assert not SurfaceDefault.objects.filter(surface="home").exists()
    assert Experiment.objects.get(pk=experiment.pk).winner is None


@pytest.mark.django_db
def test_create_validates_like_the_admin() -> None:
    with pytest.raises(services.ExperimentError, match="sum to 1"):
        _draft("bad", weights=(0.5, 0.6))
    with pytest.raises(services.ExperimentError, match="diversity_cap"):
        services.experiment_create(
            key="bad-config",
            name="x",
            surface="home",
            variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"diversity_cap": 3})],
        )
    assert not Experiment.objects.exists()


# --- A variant's least weight (an eleventh tester, 6 December: an A/B arm of 5e-324 ran) -------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("tiny", [5e-324, 1e-6, 0.005, 0.00999])
def test_a_weight_between_0_and_1_percent_is_refused_naming_the_variant(tiny: float) -> None:
    with pytest.raises(services.ExperimentError, match=r"The weight of b must be 0 or at least 0\.01 \(1% of"):
        _draft("tiny", weights=(1.0 - tiny, tiny))
    assert not Experiment.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("weights", [(0.99, 0.01), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_a_weight_of_0_or_at_least_1_percent_is_taken(user: AbstractUser, weights: tuple[float, float]) -> None:
    experiment = _draft("fine", weights=weights)
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    assert sorted(Variant.objects.filter(experiment=experiment).values_list("weight", flat=True)) == sorted(weights)


@pytest.mark.django_db
def test_the_database_refuses_a_weight_between_0_and_1_percent() -> None:
    experiment = _draft("db", weights=(0.9, 0.1))
    b = Variant.objects.get(experiment=experiment, name="b")
    with pytest.raises(IntegrityError, match="variant_weight_minimum"), transaction.atomic():
        Variant.objects.filter(pk=b.pk).update(weight=0.005)
    with pytest.raises(IntegrityError, match="variant_weight_minimum"), transaction.atomic():
        Variant.objects.create(experiment=experiment, name="c", weight=5e-324)
    Variant.objects.filter(pk=b.pk).update(weight=0.0)  # 0 stays possible
    assert Variant.objects.get(pk=b.pk).weight == 0.0


@pytest.mark.django_db
def test_a_draft_stored_before_the_rule_keeps_its_row_and_cannot_start(user: AbstractUser) -> None:
    """Migration 0008 adds the constraint NOT VALID: replayed here on a table holding a weight of 5e-324 (stored
    before the rule: the constraint dropped for the insert), it succeeds and keeps the row; starting that draft is
    refused naming the variant; a valid weight then saves and starts."""
    migration = importlib.import_module("experiments.migrations.0008_variant_weight_minimum")
    experiment = _draft("old", weights=(0.5, 0.5))
    b = Variant.objects.get(experiment=experiment, name="b")
    control = Variant.objects.get(experiment=experiment, is_control=True)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred trigger event may be pending at ALTER TABLE
        cursor.execute(migration.REVERSE)
        Variant.objects.filter(pk=b.pk).update(weight=5e-324)
        Variant.objects.filter(pk=control.pk).update(weight=1.0)
        cursor.execute(migration.FORWARD)  # the migration, on a table holding such a row

    assert Variant.objects.get(pk=b.pk).weight == 5e-324
    with pytest.raises(services.ExperimentError, match="The weight of b must be 0 or at least 0.01"):
        services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.DRAFT
    with pytest.raises(IntegrityError, match="variant_weight_minimum"), transaction.atomic():
        Variant.objects.filter(pk=b.pk).update(weight=0.004)  # a row written from now on is checked

    Variant.objects.filter(pk=b.pk).update(weight=0.01)
    Variant.objects.filter(pk=control.pk).update(weight=0.99)
    assert services.experiment_start(experiment_id=experiment.pk, user_id=user.pk).status == Experiment.Status.RUNNING


@pytest.mark.django_db
def test_a_bandit_never_reweights_an_arm_below_a_variants_least_weight() -> None:
    with pytest.raises(ValueError, match="min_share must be at least 0.01"):
        services.bandit_reweight(experiment_id=1, min_share=0.001)
