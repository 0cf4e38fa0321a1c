"""ranking.services on the real database and Redis: training a version end to end, the registry (one active
version, promotion with tolerance and --force), re-indexing, the hourly trending refresh, tasks and commands."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import override_settings

from catalog.models import Category, Customer, Item
from events.models import Interaction
from kernel import redis_client
from ranking import ann, artifact_store, artifacts, services, tasks
from ranking.models import ModelVersion
from ranking.training import TrainParams

CLUSTERS = (("wool", "scarf", "knit"), ("ceramic", "mug", "tea"), ("garden", "seed", "plant"))
ITEMS_PER_CLUSTER = 10
USERS_PER_CLUSTER = 12
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# Small and time-independent (no decay): the clusters are the only structure, so the assertions are about it. The
# ALS regularization is sized for 36 users (the product default is sized for thousands).
SMALL = TrainParams(
    als_factors=8, als_iterations=10, als_regularization=1.0, neighbours_k=10, fbt_k=5, content_dims=8,
    content_k=5, half_life_days=None, history_half_life_days=None, validation_days=30, tune_budget_seconds=0,
)  # fmt: skip
SMALL_ARGS = [
    "--param", "als_factors=8", "--param", "als_iterations=10", "--param", "als_regularization=1.0",
    "--param", "neighbours_k=10",
    "--param", "content_dims=8", "--param", "content_k=5", "--param", "half_life_days=null",
    "--param", "history_half_life_days=null", "--param", "tune_budget_seconds=0",
]  # fmt: skip


@pytest.fixture
def artifact_root(tmp_path: Path) -> Iterator[Path]:
    with override_settings(ARTIFACT_ROOT=tmp_path / "artifacts"):
        yield tmp_path / "artifacts"


@pytest.fixture
def commit_hooks(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[[], Any]:
    """Run after-commit hooks (the Redis marker) inside the test transaction, as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _world(seed: int = 0) -> dict[str, Any]:
    """Three clusters of ten items (with matching titles and categories); twelve customers per cluster buy
    and view only their cluster's items over 120 days, two items per order. One opted-out customer buys across
    clusters: if their events leaked into training, the clusters would be linked."""
    rng = np.random.default_rng(seed)
    categories = [Category.objects.create(external_id=f"cat{c}", name=words[1]) for c, words in enumerate(CLUSTERS)]
    items = Item.objects.bulk_create(
        Item(external_id=f"c{c}-{i}", title=f"{words[0]} {words[1]} {i}", description=f"a {words[2]} thing",
             category=categories[c])
        for c, words in enumerate(CLUSTERS)
        for i in range(ITEMS_PER_CLUSTER)
    )  # fmt: skip
    customers = Customer.objects.bulk_create(
        Customer(external_id=f"u{c}-{u}") for c in range(len(CLUSTERS)) for u in range(USERS_PER_CLUSTER)
    )
    opted_out = Customer.objects.create(external_id="private", personalisation_opt_out=True)
    events = []
    for n, customer in enumerate(customers):
        cluster = n // USERS_PER_CLUSTER
        chosen = rng.choice(ITEMS_PER_CLUSTER, 6, replace=False)
        for k, item in enumerate(chosen):
            day = float(rng.uniform(0, 120))
            kind = Interaction.Type.PURCHASE if k < 4 else Interaction.Type.VIEW
            events.append((customer, items[cluster * ITEMS_PER_CLUSTER + item], kind, day, f"o{n}-{k // 2}"))
    for k in range(12):
        events.append((opted_out, items[(k * 7) % len(items)], Interaction.Type.PURCHASE, 119.0, "private-order"))
    Interaction.objects.bulk_create(
        Interaction(event_id=f"e{i}", customer=customer, item=item, type=kind, session_id=session,
                    occurred_at=START + dt.timedelta(days=day))
        for i, (customer, item, kind, day, session) in enumerate(events)
    )  # fmt: skip
    return {"items": items, "customers": customers, "opted_out": opted_out}


def _cluster_of(item_pk: int, items: list[Item]) -> int:
    return [item.pk for item in items].index(item_pk) // ITEMS_PER_CLUSTER


@pytest.mark.django_db
def test_train_command_builds_a_complete_active_version(
    artifact_root: Path, commit_hooks: Callable[[], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world()
    with commit_hooks():
        call_command("train", "--quiet", *SMALL_ARGS)

    out = capsys.readouterr().out
    assert "status       active (first)" in out
    # 36 customers: the last 30 days hold too few of them, so each customer's own tail validates.
    assert "validation protocol: user_tail (the last 30 days hold only" in out
    assert "\nserves: " in out
    version = ModelVersion.objects.get()
    assert version.parameters["serve"] == version.metrics["validation"]["serve"]["choice"]
    assert version.parameters["serve"] == "pipeline" or version.parameters["serve"].startswith("source:")
    assert version.status == ModelVersion.Status.ACTIVE
    assert version.decision == ModelVersion.Decision.FIRST
    assert version.sizes["n_users"] == 36  # the opted-out customer is not there
    assert version.sizes["n_items"] == 30
    assert version.validation_ndcg is not None
    assert "promotion" in version.metrics
    assert version.ann_kind == "flat"
    assert version.ann_recall == 1.0
    path = Path(version.artifact_path)
    assert path.parent == artifact_root
    meta = artifacts.version_verify(path, version.checksum)
    expected = {
        "item_ids", "item_category", "user_ids", "item_user_count", "als_item_factors", "als_user_factors",
        "als_yty", "knn_idx", "knn_score", "ease_idx", "ease_score", "ease_b", "fbt_idx", "fbt_score", "fbt_lift",
        "content_vectors", "content_idx", "content_score", "popularity", "trending",
    }  # fmt: skip
    assert {name.removesuffix(".npy") for name in meta["files"]} == expected | {artifacts.ANN_FILE}
    model = artifacts.model_load(version_id=version.id, name=version.name, checksum=version.checksum, path=path)
    assert model.item_ids.tolist() == sorted(item.pk for item in world["items"])
    assert world["opted_out"].pk not in model.array("user_ids").tolist()
    assert model.array("als_item_factors").shape == (30, 8)
    assert model.array("knn_idx").dtype == np.int32
    assert model.array("knn_idx").shape == (30, 10)
    assert redis_client.get().get(artifacts.ACTIVE_KEY) == str(version.id).encode()


@pytest.mark.django_db
def test_trained_sources_stay_inside_the_users_cluster(artifact_root: Path) -> None:
    world = _world(seed=1)
    result = services.model_train(params=SMALL)
    version = result.version
    model = artifacts.model_load(
        version_id=version.id, name=version.name, checksum=version.checksum, path=Path(version.artifact_path)
    )
    items = world["items"]
    for cluster in range(len(CLUSTERS)):
        history = [item.pk for item in items[cluster * ITEMS_PER_CLUSTER : cluster * ITEMS_PER_CLUSTER + 3]]
        idx = model.item_index(history)
        item_idx, conf = model.history_confidences(idx, [4, 4, 4], [np.nan] * 3, [0.0, 1.0, 2.0])
        found, _ = model.search(model.fold_in(item_idx, conf), 8)
        recommended = [int(i) for i in found if i not in item_idx][:5]
        assert {_cluster_of(int(model.item_ids[i]), items) for i in recommended} == {cluster}
        # Item-item neighbours of a history item come from its cluster too.
        neighbours = model.array("knn_idx")[idx[0]]
        assert {_cluster_of(int(model.item_ids[i]), items) for i in neighbours if i >= 0} == {cluster}


def _candidate(root: Path, name: str, ndcg: float | None) -> ModelVersion:
    """A registered version with (tiny) real artifacts and a given validation figure."""
    factors = np.eye(3, dtype=np.float32)
    path, checksum = artifacts.version_write(
        root, name, {"item_ids": np.arange(3), "als_item_factors": factors}, index=None, meta={}
    )
    metrics = {} if ndcg is None else {"validation_ndcg": ndcg, "validation_source": "als"}
    return ModelVersion.objects.create(name=name, checksum=checksum, artifact_path=str(path), metrics=metrics)


@pytest.mark.parametrize(
    ("candidate", "active", "has_active", "force", "expected"),
    [
        (0.10, None, False, False, "first"),
        (0.296, 0.300, True, False, "promoted"),  # within the tolerance
        (0.310, 0.300, True, False, "promoted"),
        (0.294, 0.300, True, False, "rejected"),  # worse by more than 0.005
        (0.200, 0.300, True, True, "forced"),
        (None, 0.300, True, False, "rejected"),  # no validation figure: nothing to compare
        (0.100, None, True, False, "promoted"),  # the active one has no figure
    ],
)
def test_promotion_rule(
    candidate: float | None, active: float | None, has_active: bool, force: bool, expected: str
) -> None:
    decision = services.promotion_decision(
        candidate_ndcg=candidate, active_ndcg=active, has_active=has_active, tolerance=0.005, force=force
    )
    assert decision == expected


@pytest.mark.django_db
def test_promotion_records_both_figures_and_respects_force(artifact_root: Path) -> None:
    active = _candidate(artifact_root, "a", 0.300)
    services.model_version_activate(version_id=active.id)
    close = services.model_version_promote(version_id=_candidate(artifact_root, "b", 0.296).id, tolerance=0.005)
    assert close.status == ModelVersion.Status.ACTIVE
    assert close.decision == "promoted"
    assert close.metrics["promotion"]["active_ndcg"] == 0.300
    assert close.metrics["promotion"]["candidate_ndcg"] == 0.296

    worse = services.model_version_promote(version_id=_candidate(artifact_root, "c", 0.250).id, tolerance=0.005)
    assert worse.status == ModelVersion.Status.CANDIDATE
    assert worse.decision == "rejected"
    assert "0.2500" in worse.notes
    assert "0.2960" in worse.notes
    assert ModelVersion.objects.get(status="active").name == "b"

    forced = services.model_version_promote(version_id=worse.id, force=True)
    assert forced.status == ModelVersion.Status.ACTIVE
    assert forced.decision == "forced"
    assert list(ModelVersion.objects.filter(status="active").values_list("name", flat=True)) == ["c"]
    assert set(ModelVersion.objects.filter(status="retired").values_list("name", flat=True)) == {"a", "b"}


@pytest.mark.django_db
def test_the_database_refuses_two_active_versions(artifact_root: Path) -> None:
    first = _candidate(artifact_root, "a", 0.1)
    second = _candidate(artifact_root, "b", 0.1)
    services.model_version_activate(version_id=first.id)
    services.model_version_activate(version_id=second.id)
    assert ModelVersion.objects.filter(status="active").count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(id=first.id).update(status="active")


@pytest.mark.django_db(transaction=True)
def test_two_activations_at_once_take_turns(artifact_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second activation waiting on the active row found it retired once the first committed and saved a second
    active row: the unique index's IntegrityError, an admin 500 (found by a sixth tester, 5 December)."""
    import threading

    from django.db import connection

    first, second, third = (_candidate(artifact_root, name, 0.1) for name in "abc")
    services.model_version_activate(version_id=first.id)
    verify = artifacts.version_verify
    entered = threading.Event()

    def slow_verify(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():  # the first activation holds its turn a while
            entered.set()
            time.sleep(0.5)
        return verify(*args, **kwargs)

    monkeypatch.setattr(artifacts, "version_verify", slow_verify)
    errors: list[BaseException] = []

    def activate(version_id: int) -> None:
        try:
            services.model_version_activate(version_id=version_id)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=activate, args=(second.id,))]
    threads[0].start()
    assert entered.wait(5)
    threads.append(threading.Thread(target=activate, args=(third.id,)))
    threads[1].start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(ModelVersion.objects.filter(status="active").values_list("name", flat=True)) == ["c"]
    assert set(ModelVersion.objects.filter(status="retired").values_list("name", flat=True)) == {"a", "b"}


@pytest.mark.django_db(transaction=True)
def test_a_promotion_and_an_admin_activation_of_one_candidate_take_turns(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The promotion locked the candidate's row and then waited for the activations' turn, which an admin activating
    the same candidate held while it waited for that row: Postgres' "deadlock detected", an admin 500 or a failed
    promotion (found by a reviewer, 6 December). Both now take the turn first."""
    import threading

    from django.db import connection

    first, candidate = _candidate(artifact_root, "a", 0.1), _candidate(artifact_root, "b", 0.2)
    services.model_version_activate(version_id=first.id)
    decide = services.promotion_decision
    deciding = threading.Event()

    def slow_decision(**kwargs: Any) -> str:
        deciding.set()
        time.sleep(0.5)  # the admin's activation arrives while the promotion holds what it has taken
        return decide(**kwargs)

    monkeypatch.setattr(services.registry, "promotion_decision", slow_decision)
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    promote = threading.Thread(target=run, args=(lambda: services.model_version_promote(version_id=candidate.id),))
    promote.start()
    assert deciding.wait(5)
    admin = threading.Thread(target=run, args=(lambda: services.model_version_activate(version_id=candidate.id),))
    admin.start()
    promote.join()
    admin.join()
    assert errors == []
    assert list(ModelVersion.objects.filter(status="active").values_list("name", flat=True)) == ["b"]
    # The other order: activated by the admin first, the promotion then leaves it (and the admin's decision) alone.
    third = _candidate(artifact_root, "c", 0.3)
    monkeypatch.setattr(services.registry, "promotion_decision", decide)
    services.model_version_activate(version_id=third.id, decision=ModelVersion.Decision.MANUAL)
    promoted = services.model_version_promote(version_id=third.id)
    assert (promoted.status, promoted.decision) == ("active", ModelVersion.Decision.MANUAL)


@pytest.mark.django_db
def test_activation_refuses_a_version_without_usable_artifacts(artifact_root: Path) -> None:
    version = _candidate(artifact_root, "a", 0.1)
    (Path(version.artifact_path) / "item_ids.npy").unlink()
    with pytest.raises(ValueError, match="cannot be activated"):
        services.model_version_activate(version_id=version.id)
    assert not ModelVersion.objects.filter(status="active").exists()


@pytest.mark.django_db
def test_reindex_picks_flat_for_small_catalogs_and_hnsw_when_forced(
    artifact_root: Path, commit_hooks: Callable[[], Any]
) -> None:
    _world(seed=2)
    with commit_hooks():
        version = services.model_train(params=SMALL).version
    old_path, old_checksum = version.artifact_path, version.checksum

    flat, report = services.model_reindex()
    assert report.kind == "flat"
    assert flat.ann_kind == "flat"
    assert flat.ann_recall == 1.0

    with commit_hooks():
        hnsw, report = services.model_reindex(kind="hnsw")
    assert report.kind == "hnsw"
    assert "efSearch" in report.params
    assert hnsw.ann_kind == "hnsw"
    assert hnsw.ann_recall is not None
    assert hnsw.ann_recall >= 0.95
    assert hnsw.checksum != old_checksum
    assert hnsw.artifact_path != old_path
    assert Path(old_path).is_dir()  # processes still reading the old directory keep working
    meta = artifacts.version_verify(Path(hnsw.artifact_path), hnsw.checksum)
    assert meta["ann"]["kind"] == "hnsw"
    assert meta["ann"]["recall"] == hnsw.ann_recall
    assert redis_client.get().get(artifacts.ACTIVE_CHECKSUM_KEY) == hnsw.checksum.encode()
    model = artifacts.ModelLoader().get()
    assert model is not None
    assert ann.index_kind(model.index) == "hnsw"
    with pytest.raises(CommandError, match="no such model version"):
        call_command("reindex", "--version-id", "999999")


@pytest.mark.django_db
def test_trending_refresh_feeds_the_loader(artifact_root: Path, commit_hooks: Callable[[], Any]) -> None:
    _world(seed=3)
    with commit_hooks():
        version = services.model_train(params=SMALL).version

    summary = tasks.refresh_trending()

    assert summary["version_id"] == version.id
    assert summary["events"] > 0
    # The data ends in 2024: the refresh uses the version's last event as "now", not the wall clock.
    assert summary["reference"].startswith("2024-04")
    blob = redis_client.get().hgetall(artifacts.TRENDING_KEY.format(version_id=version.id))
    assert set(blob) == {b"popularity", b"trending", b"computed_at"}
    model = artifacts.ModelLoader().get()
    assert model is not None
    assert model.trending_computed_at is not None
    assert model.popularity.shape == (30,)


@pytest.mark.django_db
def test_a_failing_training_records_a_failed_version(artifact_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _world()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(services.training, "train_sources", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        services.model_train(params=SMALL)
    failed = ModelVersion.objects.get()
    assert failed.status == ModelVersion.Status.FAILED
    assert "out of memory" in failed.notes
    assert not artifact_root.exists() or not any(artifact_root.iterdir())


@pytest.mark.django_db
def test_train_task_is_a_no_op_while_another_training_runs(artifact_root: Path) -> None:
    _world()
    lock = redis_client.get().lock(services.TRAIN_LOCK_KEY, timeout=60)
    assert lock.acquire(blocking=False)
    try:
        result = tasks.train_model.apply().get()
    finally:
        lock.release()
    # How long a holder that died (a killed worker or command) can keep refusing trainings, so an operator refused
    # while nothing runs knows what to wait for (a ninth tester, 6 December).
    assert result["skipped"] == (
        "another training is running (Redis lock lock:ranking:train; one that died frees it within 10 minutes); "
        "try again when it finishes"
    )
    assert not ModelVersion.objects.exists()


def test_training_lock_is_renewed_while_held_and_freed_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.training, "TRAIN_LOCK_SECONDS", 1)
    monkeypatch.setattr(services.training, "TRAIN_LOCK_HEARTBEAT_SECONDS", 0.1)
    client = redis_client.get()
    with services._training_lock():
        time.sleep(1.5)  # longer than the lock's life: only the heartbeat keeps it
        assert client.exists(services.TRAIN_LOCK_KEY)
        with pytest.raises(services.TrainingBusy), services._training_lock():
            pass
    assert not client.exists(services.TRAIN_LOCK_KEY)


@pytest.mark.django_db
def test_train_command_errors_name_the_problem() -> None:
    with pytest.raises(CommandError, match="no interactions to train on"):
        call_command("train", "--quiet")
    with pytest.raises(CommandError, match="unknown parameter 'als_factor'"):
        call_command("train", "--param", "als_factor=3")
    # A value of the wrong type fails here, naming the parameter, not as a TypeError deep inside training.
    with pytest.raises(CommandError, match="half_life_days takes a number or null, not 'none'"):
        call_command("train", "--param", "half_life_days=none")
    with pytest.raises(CommandError, match="als_factors takes an integer"):
        call_command("train", "--param", "als_factors=3.5")
    with pytest.raises(CommandError, match="not an ISO 8601"):
        call_command("train", "--since", "yesterday")
    # Values training cannot use, named before it starts (found 5 December: neighbours_k=-1 crashed the process in a
    # native library, als_factors=0 trained a version of empty vectors, a NaN window was a traceback).
    for param, message in (
        ("neighbours_k=-1", "neighbours_k must be at least 1"),
        ("als_factors=0", "als_factors must be at least 1"),
        ("k=0", "k must be at least 1"),
        ("half_life_days=-1", "half_life_days must be above 0"),
        ("knn_bm25_b=2", "knn_bm25_b must be between 0 and 1"),
        (f"als_factors={10**400}", "als_factors must be a finite number"),
        ("als_factors=" + "[" * 5000, "als_factors takes an integer"),  # was a RecursionError (an eleventh tester)
    ):
        with pytest.raises(CommandError, match=message):
            call_command("train", "--param", param)
    for args, message in (
        (("--days", "nan"), "--days must be a positive number"),
        # an offset Postgres cannot hold (+20:00) is read in UTC: the window is fine, the data is what is missing
        (("--since", "2011-01-01T00:00:00+20:00"), "no interactions to train on"),
        (("--until", "0001-01-01"), "not between 1900 and 3000"),
    ):
        with pytest.raises(CommandError, match=message):
            call_command("train", "--quiet", *args)


@pytest.mark.django_db
def test_evaluate_per_user_protocol_on_the_world(tmp_path: Path) -> None:
    _world(seed=4)
    out = tmp_path / "eval.json"
    call_command(
        "evaluate", "--per-user-fraction", "0.3", "--seed", "1", "--json", str(out), "--quiet", "--no-pipeline",
        *SMALL_ARGS,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["protocol"] == "per_user"
    assert result["info"]["fraction"] == 0.3
    main = result["segments"]["main"]
    assert main["n_users"] == 36
    # With clean clusters, EASE and item-kNN find held-out items far better than popularity does.
    ndcg = {name: values["ndcg@10"] for name, values in main["sources"].items()}
    assert ndcg["ease"] > ndcg["popularity"]
    assert ndcg["item_knn"] > ndcg["popularity"]


@pytest.mark.django_db
def test_prune_keeps_recent_retired_versions_and_removes_stale_leftovers(artifact_root: Path) -> None:
    versions = [_candidate(artifact_root, f"v{n}", 0.1) for n in range(5)]
    for version in versions:
        services.model_version_activate(version_id=version.id)  # each retires the one before
    leftover = artifact_root / ".tmp-crashed-run"
    leftover.mkdir()
    fresh_leftover = artifact_root / ".tmp-still-writing"
    fresh_leftover.mkdir()
    day_old = time.time() - 2 * services.STALE_DIRECTORY_SECONDS
    os.utime(leftover, (day_old, day_old))

    deleted = services.model_version_prune(keep_retired=2)

    # Newest first: v4 active, v3 and v2 kept for a rollback, v1 and v0 deleted; the fresh temp dir may be a
    # training in progress and stays.
    assert sorted(Path(p).name for p in deleted) == [".tmp-crashed-run", "v0", "v1"]
    assert sorted(p.name for p in artifact_root.iterdir()) == [".tmp-still-writing", "v2", "v3", "v4"]


@pytest.mark.django_db
def test_prune_keeps_what_an_experiment_names_and_the_compiled_rankers(artifact_root: Path) -> None:
    """Prune left the versions running experiments' arms name to the retired count, and deleted the compiled
    rankers' directory once a day old, racing a compile starting (found by a sixth tester, 5 December)."""
    from django.contrib.auth import get_user_model

    from experiments import services as experiment_services
    from experiments.validation import VariantSpec

    versions = [_candidate(artifact_root, f"v{n}", 0.1) for n in range(5)]
    for version in versions:
        services.model_version_activate(version_id=version.id)
    experiment = experiment_services.experiment_create(
        key="old-model", name="old model", surface="home",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("v0", 0.5, False, {"model_version": versions[0].id})],
    )  # fmt: skip
    user = get_user_model().objects.create_user("pruner")
    experiment_services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    compiled = artifact_root / ".compiled"
    compiled.mkdir()
    day_old = time.time() - 2 * services.STALE_DIRECTORY_SECONDS
    os.utime(compiled, (day_old, day_old))

    with override_settings(COMPILED_RANKER_DIR=str(compiled)):
        deleted = services.model_version_prune(keep_retired=2)

    assert [Path(p).name for p in deleted] == ["v1"]
    assert sorted(p.name for p in artifact_root.iterdir()) == [".compiled", "v0", "v2", "v3", "v4"]


@pytest.mark.django_db
def test_prune_keeps_what_a_draft_experiment_names(artifact_root: Path) -> None:
    """Only running and stopped experiments kept their versions: a draft naming an old one lost it, and once started
    its arm served the active version instead, silently (found by a reviewer, 6 December)."""
    from experiments import services as experiment_services
    from experiments.validation import VariantSpec

    versions = [_candidate(artifact_root, f"v{n}", 0.1) for n in range(4)]
    for version in versions:
        services.model_version_activate(version_id=version.id)
    experiment_services.experiment_create(
        key="draft-model", name="draft model", surface="home",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("v0", 0.5, False, {"model_version": versions[0].id})],
    )  # fmt: skip

    assert services.model_version_prune(keep_retired=1) == [str(artifact_root / "v1")]
    assert sorted(p.name for p in artifact_root.iterdir()) == ["v0", "v2", "v3"]


@pytest.mark.django_db
def test_prune_with_a_shared_storage_and_a_local_cache_keeps_the_active_version(
    artifact_root: Path, tmp_path: Path
) -> None:
    """With a mounted directory as the storage and a local cache, prune looked in ARTIFACT_ROOT for paths that
    point into the cache: every version there looked unreferenced, the active one included, and a fresh host then
    had no model (found by a sixth tester, 5 December). Now it prunes the cache by name, and the storage only of
    retired versions beyond those kept."""
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    mount = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(shared)}}
    with override_settings(
        STORAGES={**settings.STORAGES, "artifacts": mount}, ARTIFACT_ROOT=shared, ARTIFACT_CACHE_DIR=str(cache)
    ):
        assert not artifact_store.colocated()
        for n in range(4):  # written to the cache, published to the mount (artifacts.version_write)
            services.model_version_activate(version_id=_candidate(artifacts.local_root(), f"w{n}", 0.1).id)
        day_old = time.time() - 2 * services.STALE_DIRECTORY_SECONDS
        for directory in [*shared.iterdir(), *cache.iterdir()]:
            os.utime(directory, (day_old, day_old))

        deleted = services.model_version_prune(keep_retired=1)

    assert sorted(Path(p).name for p in deleted) == ["w0", "w1"]
    assert sorted(p.name for p in cache.iterdir()) == ["w2", "w3"]
    # In the storage: the versions kept whole (w3 is the active one), the others without a file (a file system
    # storage leaves their empty directories, which hold no version).
    assert sorted(p.parent.name for p in shared.glob("*/meta.json")) == ["w2", "w3"]
    assert not any((shared / "w0").iterdir())


def test_train_with_a_budget_tunes_records_the_trials_and_shows_them_in_the_registry(
    artifact_root: Path, commit_hooks: Callable[[], Any], capsys: pytest.CaptureFixture[str], admin_client: Any
) -> None:
    _world()
    budget = 4.0
    started = time.perf_counter()
    with commit_hooks():
        call_command("train", *SMALL_ARGS, "--param", "tune_budget_seconds=99", "--budget", str(budget))
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    version = ModelVersion.objects.get()
    search = version.metrics["validation"]["tuning"]
    assert search["budget_seconds"] == budget  # --budget wins over --param
    assert search["n_trials"] == len(search["trials"]) >= 2
    slowest = max(trial["seconds"] for trial in search["trials"])
    assert search["seconds"] <= budget + 2 * slowest + 0.5
    assert elapsed < budget + 60  # the rest of training on 36 users takes seconds
    # The chosen values are the version's parameters, and the best trial's.
    best = next(trial for trial in search["trials"] if trial["trial"] == search["best_trial"])
    for name, value in best["params"].items():
        assert search["chosen"][name] == value == version.parameters[name]
    assert f"tuning: {search['n_trials']} trials" in out
    assert "chosen: half_life_days=" in out
    # The users' tails and a random share: two questions, each recorded per trial, the figures their balance.
    assert all(set(trial["by_question"]["pipeline"]) == {"next", "other"} for trial in search["trials"])
    assert "balanced NDCG@10 served" in out

    page = admin_client.get(f"/admin/ranking/modelversion/{version.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Validation protocol: user_tail" in html
    assert "pipeline per question" in html
    assert f"Serves: {version.parameters['serve']}" in html
    phases = ("decay", "retrieval", "blend", "sources")
    assert sum(html.count(f"<td>{phase}</td>") for phase in phases) == search["n_trials"]
    listing = admin_client.get("/admin/ranking/modelversion/")
    assert version.parameters["serve"] in listing.content.decode()
    # A phase's choice that was not its best trial is printed and recorded (tuning.hedged_choice) ...
    assert isinstance(search["hedges"], list)
    for hedge in search["hedges"]:
        assert f"tie on the balanced figure: {hedge}" in out
    # ... and listed on the version's page, escaped as any recorded text.
    version.metrics["validation"]["tuning"]["hedges"] = ["trial 7 over trial 6: <b>tied</b>"]
    version.save(update_fields=["metrics"])
    html = admin_client.get(f"/admin/ranking/modelversion/{version.pk}/change/").content.decode()
    assert "Tie on the balanced figure: trial 7 over trial 6: &lt;b&gt;tied&lt;/b&gt;" in html
    assert "chosen trial" in html
