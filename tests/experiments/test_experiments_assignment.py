"""experiments.services.assign: GrowthBook-compatible, close to the weights, query-free, refreshed on a version bump."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import redis
from django.contrib.auth.models import AbstractUser

from experiments import services
from experiments.config import VariantConfig
from experiments.hashing import bucket, bucket_ranges, choose_variant, in_namespace
from experiments.models import Experiment, SurfaceDefault, Variant
from experiments.stats import srm_p_value
from experiments.validation import VariantSpec

pytestmark = pytest.mark.django_db

Namespace = tuple[str, float, float]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The snapshot's once-a-second check runs on this clock, so tests move time instead of sleeping."""
    fake = FakeClock()
    monkeypatch.setattr(services.assignment, "_clock", fake)
    services.assignment_cache_clear()
    return fake


@pytest.fixture
def user(django_user_model: type[AbstractUser]) -> AbstractUser:
    return django_user_model.objects.create_user("merchandiser")


@pytest.fixture
def start(user: AbstractUser, django_capture_on_commit_callbacks) -> Callable[..., Experiment]:
    def start(
        key: str, variants: list[VariantSpec], *, surface: str = "home", namespace: Namespace | None = None
    ) -> Experiment:
        experiment = services.experiment_create(
            key=key, name=key, surface=surface, namespace=namespace, variants=variants
        )
        with django_capture_on_commit_callbacks(execute=True):
            services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
        return experiment

    return start


def test_assignment_matches_growthbook_and_the_weights_over_100k_ids(start: Callable[..., Experiment]) -> None:
    weights = [0.2, 0.3, 0.5]
    start(
        "split",
        [VariantSpec("control", 0.2, True), VariantSpec("b", 0.3, False, {"ranker": False}), VariantSpec("c", 0.5)],
    )
    ids = [f"customer-{i}" for i in range(100_000)]

    assigned = [services.assign(surface="home", unit_id=unit).variant for unit in ids]

    counts = Counter(assigned)
    shares = [counts[name] / len(ids) for name in ("control", "b", "c")]
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share - weight) < 0.01
    assert srm_p_value([counts["control"], counts["b"], counts["c"]], weights) > 0.001
    # Stable, and what any GrowthBook SDK computes from the seed (the key) and the same ranges.
    ranges = bucket_ranges(weights)
    names = ["control", "b", "c"]
    for unit in ids[:500]:
        assert services.assign(surface="home", unit_id=unit).variant == assigned[int(unit.split("-")[1])]
        assert names[choose_variant(bucket("split", unit), ranges)] == assigned[int(unit.split("-")[1])]


def test_assignment_carries_the_variant_config_over_the_surface_default(start: Callable[..., Experiment]) -> None:
    SurfaceDefault.objects.create(surface="home", config={"diversity_cap": 0.4})
    start("cfg", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"ranker": False})])

    by_variant = {}
    for i in range(200):
        assignment = services.assign(surface="home", unit_id=f"u{i}")
        by_variant[assignment.variant] = assignment

    assert by_variant["control"].config == VariantConfig(diversity_cap=0.4)
    assert by_variant["b"].config == VariantConfig(diversity_cap=0.4, ranker=False)
    assert by_variant["b"].experiment_key == "cfg"


def test_no_running_experiment_serves_the_surface_default() -> None:
    SurfaceDefault.objects.create(surface="item", config={"exploration_share": 0.1})

    assert services.assign(surface="item", unit_id="c1") == services.Assignment(
        None, None, VariantConfig(exploration_share=0.1)
    )
    assert services.assign(surface="cart", unit_id="c1") == services.Assignment(None, None, VariantConfig())


def test_hot_path_runs_no_query_after_warm_up(start: Callable[..., Experiment], django_assert_num_queries) -> None:
    start("hot", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)])
    services.assign(surface="home", unit_id="warm-up")

    with django_assert_num_queries(0):
        for i in range(1_000):
            services.assign(surface="home", unit_id=f"u{i}")


def test_snapshot_reloads_after_a_version_bump_not_before(
    start: Callable[..., Experiment], clock: FakeClock, user: AbstractUser, django_capture_on_commit_callbacks
) -> None:
    experiment = start("refresh", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)])
    assert services.assign(surface="home", unit_id="c1").experiment_key == "refresh"

    # A change behind the services' back (no version bump): processes keep their snapshot, with no query.
    Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.STOPPED)
    clock.now += 5
    assert services.assign(surface="home", unit_id="c1").experiment_key == "refresh"

    Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        services.experiment_stop(experiment_id=experiment.pk, user_id=user.pk)
    # Within the second since the last check nothing is re-read...
    assert services.assign(surface="home", unit_id="c1").experiment_key == "refresh"
    # ...after it, the new token triggers a reload.
    clock.now += 1.5
    assert services.assign(surface="home", unit_id="c1") == services.Assignment(None, None, VariantConfig())


def test_bandit_weight_change_is_picked_up(
    start: Callable[..., Experiment], clock: FakeClock, django_capture_on_commit_callbacks
) -> None:
    experiment = start("weights", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)])
    units = [f"u{i}" for i in range(2_000)]
    before = Counter(services.assign(surface="home", unit_id=u).variant for u in units)

    with django_capture_on_commit_callbacks(execute=True):
        Variant.objects.filter(experiment=experiment, name="control").update(weight=0.1)
        Variant.objects.filter(experiment=experiment, name="b").update(weight=0.9)
        services.version_bump_on_commit()
    clock.now += 2
    after = Counter(services.assign(surface="home", unit_id=u).variant for u in units)

    assert abs(before["b"] / len(units) - 0.5) < 0.05
    assert abs(after["b"] / len(units) - 0.9) < 0.05


def test_redis_down_falls_back_to_the_database_at_most_once_a_second(
    start: Callable[..., Experiment], clock: FakeClock, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries
) -> None:
    start("fallback", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)])

    class DownRedis:
        def get(self, key: str) -> None:
            raise redis.ConnectionError("down")

    monkeypatch.setattr(services.redis_client, "get", lambda: DownRedis())
    with django_assert_num_queries(2):  # one reload (variants + surface defaults) for many calls
        for i in range(100):
            assert services.assign(surface="home", unit_id=f"u{i}").experiment_key == "fallback"
    clock.now += 1.5
    with django_assert_num_queries(2):
        services.assign(surface="home", unit_id="u1")
        services.assign(surface="home", unit_id="u2")


def test_forced_variant_overrides_the_hash(start: Callable[..., Experiment]) -> None:
    start("forced", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"ranker": False})])
    unit = next(f"u{i}" for i in range(100) if services.assign(surface="home", unit_id=f"u{i}").variant == "control")

    forced = services.assign(surface="home", unit_id=unit, forced_variant="b")
    assert (forced.variant, forced.forced, forced.config.ranker) == ("b", True, False)
    assert services.assign(surface="home", unit_id=unit, forced_variant="forced:b").variant == "b"
    # An unknown name (or another experiment's key) leaves the hash in charge.
    assert services.assign(surface="home", unit_id=unit, forced_variant="nope").variant == "control"
    assert services.assign(surface="home", unit_id=unit, forced_variant="other:b").variant == "control"
    assert services.assign(surface="home", unit_id=unit).forced is False


def test_a_forced_variant_is_known_exactly_when_assign_serves_it(start: Callable[..., Experiment]) -> None:
    start("forced", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)])

    for value in ("b", "forced:b", "control", "forced:control"):
        assert services.forced_variant_known(surface="home", forced_variant=value), value
        assert services.assign(surface="home", unit_id="qa", forced_variant=value).forced, value
    for value in ("nope", "nope:nope", "other:b", "forced:", ":b", "forced:B", " b"):
        assert not services.forced_variant_known(surface="home", forced_variant=value), value
        assert not services.assign(surface="home", unit_id="qa", forced_variant=value).forced, value
    # Running on "home" only: the same variant names nothing running on another surface.
    assert not services.forced_variant_known(surface="cart", forced_variant="forced:b")


def test_experiments_in_disjoint_namespace_ranges_never_share_a_unit_over_100k_ids(
    start: Callable[..., Experiment],
) -> None:
    # Three mutually exclusive experiments on one surface; [0.8, 1) of the namespace is left to the default.
    start("ranking", [VariantSpec("control", 0.5, True), VariantSpec("off", 0.5, False, {"ranker": False})],
          namespace=("home-tests", 0.0, 0.3))  # fmt: skip
    start("diversity", [VariantSpec("control", 0.5, True), VariantSpec("wide", 0.5, False, {"diversity_cap": 0.6})],
          namespace=("home-tests", 0.3, 0.6))  # fmt: skip
    start("explore", [VariantSpec("control", 0.5, True), VariantSpec("more", 0.5, False, {"exploration_share": 0.2})],
          namespace=("home-tests", 0.6, 0.8))  # fmt: skip
    ranges = {"ranking": (0.0, 0.3), "diversity": (0.3, 0.6), "explore": (0.6, 0.8)}
    ids = [f"customer-{i}" for i in range(100_000)]

    seen: Counter[str | None] = Counter()
    for unit in ids:
        a = services.assign(surface="home", unit_id=unit)
        seen[a.experiment_key] += 1
        # Exactly the experiment whose range holds the unit's namespace hash (what a GrowthBook SDK computes), and
        # that experiment's settings only: nothing of another experiment leaks into the config.
        holders = [key for key, (lo, hi) in ranges.items() if in_namespace(unit, ("home-tests", lo, hi))]
        assert len(holders) <= 1
        assert a.experiment_key == (holders[0] if holders else None)
        changed = {f for f in ("ranker", "diversity_cap", "exploration_share") if getattr(a.config, f) != getattr(
            VariantConfig(), f)}  # fmt: skip
        assert len(changed) <= 1
        if a.experiment_key is None:
            assert a.config == VariantConfig()

    for key, (lo, hi) in ranges.items():
        assert abs(seen[key] / len(ids) - (hi - lo)) < 0.01
    assert abs(seen[None] / len(ids) - 0.2) < 0.01


def test_forced_variant_reaches_an_experiment_outside_the_units_namespace_range(
    start: Callable[..., Experiment],
) -> None:
    start("narrow", [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"ranker": False})],
          namespace=("qa", 0.0, 0.1))  # fmt: skip
    outside = next(f"u{i}" for i in range(1000) if not in_namespace(f"u{i}", ("qa", 0.0, 0.1)))
    assert services.assign(surface="home", unit_id=outside).experiment_key is None

    forced = services.assign(surface="home", unit_id=outside, forced_variant="narrow:b")

    assert (forced.experiment_key, forced.variant, forced.forced, forced.config.ranker) == ("narrow", "b", True, False)
