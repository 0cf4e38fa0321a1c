"""Model versions on object storage (ranking/artifact_store.py) against a REAL S3-compatible server (moto's
standalone server, started by the ``s3_server`` session fixture): training uploads a version (manifest last),
"hosts" with their own cache directories download, verify and serve it, and a corrupt, partial or unreachable
version keeps the previous one serving and is reported. Plus the default: the local file system, nothing copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from django.conf import settings
from django.db import connection
from django.test import override_settings
from prometheus_client import REGISTRY

from ranking import ann, artifact_store, artifacts, selectors, services
from ranking.models import ModelVersion
from ranking.training import TrainParams
from tests.worlds import SMALL_PARAMS, cluster_world, world_clear

pytestmark = pytest.mark.objectstorage

REGION = "us-east-1"
KEY_ID = "testing"  # moto accepts any credentials; real ones come from the environment in production
SECRET = "testing"


@pytest.fixture(scope="module")
def s3_client(s3_server: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_server, region_name=REGION, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )


class Bucket:
    """One test's bucket and prefix on the S3 server, and the settings that make it the ``artifacts`` storage."""

    def __init__(self, client: Any, endpoint: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.name = f"artifacts-{uuid.uuid4().hex[:12]}"
        self.prefix = "models"
        client.create_bucket(Bucket=self.name)

    def storage_settings(self, *, endpoint: str | None = None) -> dict[str, Any]:
        options = {
            "bucket_name": self.name,
            "location": self.prefix,
            "endpoint_url": endpoint or self.endpoint,
            "region_name": REGION,
            "access_key": KEY_ID,
            "secret_key": SECRET,
            "file_overwrite": True,
            "default_acl": None,
            "max_memory_size": 1024 * 1024,
            "client_config": Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
        }
        return {**settings.STORAGES, "artifacts": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}}

    def host_environment(self, cache: Path) -> dict[str, str]:
        """The environment of another host: this bucket through the documented variables, its own cache."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_")}
        return {
            **env,
            "DJANGO_SETTINGS_MODULE": "recsys.settings.test",
            "ARTIFACT_S3_BUCKET": self.name,
            "ARTIFACT_S3_PREFIX": self.prefix,
            "ARTIFACT_S3_ENDPOINT_URL": self.endpoint,
            "ARTIFACT_S3_REGION": REGION,
            "ARTIFACT_S3_ACCESS_KEY_ID": KEY_ID,
            "ARTIFACT_S3_SECRET_ACCESS_KEY": SECRET,
            "ARTIFACT_CACHE_DIR": str(cache),
            "HOST_DB_NAME": connection.settings_dict["NAME"],
        }

    def keys(self, directory: str) -> set[str]:
        listing = self.client.list_objects_v2(Bucket=self.name, Prefix=f"{self.prefix}/{directory}/")
        return {obj["Key"].rsplit("/", 1)[1] for obj in listing.get("Contents", [])}

    def get(self, directory: str, filename: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=f"{self.prefix}/{directory}/{filename}")["Body"].read()

    def put(self, directory: str, filename: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=f"{self.prefix}/{directory}/{filename}", Body=body)

    def delete(self, directory: str, filename: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=f"{self.prefix}/{directory}/{filename}")


@pytest.fixture
def bucket(s3_client: Any, s3_server: str) -> Bucket:
    return Bucket(s3_client, s3_server)


@pytest.fixture
def on_s3(bucket: Bucket, tmp_path: Path) -> Iterator[Path]:
    """This process is the training host: artifacts go to the bucket, its own cache is ``tmp_path/trainer``."""
    trainer = tmp_path / "trainer"
    with override_settings(STORAGES=bucket.storage_settings(), ARTIFACT_ROOT=trainer, ARTIFACT_CACHE_DIR=""):
        yield trainer


def _arrays(n_items: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_items, 4)).astype(np.float32)
    return {
        "item_ids": np.arange(1, n_items + 1, dtype=np.int64) * 10,
        "user_ids": np.array([5, 9], dtype=np.int64),
        "als_item_factors": factors,
        "als_yty": factors.astype(np.float64).T @ factors.astype(np.float64),
        "popularity": rng.random(n_items).astype(np.float32),
        "trending": np.ones(n_items, dtype=np.float32),
    }


def _version(name: str, seed: int) -> ModelVersion:
    """A registered candidate written the way training writes one (into the configured storage)."""
    arrays = _arrays(6, seed)
    index = ann.build_index(arrays["als_item_factors"], "flat")
    meta = {"params": TrainParams(als_regularization=0.1).to_dict(), "ann": {"kind": "flat", "params": {}}}
    path, checksum = artifacts.version_write(artifacts.local_root(), name, arrays, index=index, meta=meta)
    return ModelVersion.objects.create(name=name, checksum=checksum, artifact_path=str(path), ann_kind="flat")


def _failures(reason: str) -> float:
    return REGISTRY.get_sample_value("recsys_model_load_failures_total", {"reason": reason}) or 0.0


@pytest.fixture
def activate(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[[int], None]:
    def run(version_id: int) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            services.model_version_activate(version_id=version_id)

    return run


# --- Writing ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_version_is_uploaded_file_by_file_with_a_manifest_of_their_sha256(bucket: Bucket, on_s3: Path) -> None:
    version = _version("v1", seed=1)
    manifest = json.loads(bucket.get("v1", "meta.json"))
    assert bucket.keys("v1") == {*manifest["files"], "meta.json"}
    assert {"item_ids.npy", "als_item_factors.npy", artifacts.ANN_FILE} <= set(manifest["files"])
    for filename, sha in manifest["files"].items():
        assert hashlib.sha256(bucket.get("v1", filename)).hexdigest() == sha
    assert manifest["checksum"] == version.checksum == artifacts.combined_checksum(manifest["files"])
    # The training host keeps its copy in its cache (nothing to download there), and the registry points at it.
    assert Path(version.artifact_path) == on_s3 / "v1"
    assert artifacts.version_verify(on_s3 / "v1", version.checksum)["checksum"] == version.checksum
    assert not [p for p in on_s3.iterdir() if p.name.startswith(artifacts.TMP_PREFIX)]


@pytest.mark.django_db
def test_a_version_in_the_storage_is_never_overwritten(bucket: Bucket, on_s3: Path) -> None:
    _version("v1", seed=1)
    original = bucket.get("v1", "meta.json")
    artifact_store.discard(on_s3 / "v1")  # not in this host's cache any more: only the storage knows it
    with pytest.raises(artifacts.ArtifactError, match="never overwritten"):
        _version("v1", seed=2)
    assert bucket.get("v1", "meta.json") == original
    assert not (on_s3 / "v1").exists()


@pytest.mark.django_db
def test_a_removed_version_is_gone_from_the_storage_manifest_first(
    bucket: Bucket, on_s3: Path, tmp_path: Path, activate: Callable[[int], None]
) -> None:
    version = _version("v1", seed=1)
    kept = _version("v2", seed=2)
    activate(version.id)
    artifact_store.remove("v1")
    assert bucket.keys("v1") == set()
    assert "meta.json" in bucket.keys("v2")
    with override_settings(ARTIFACT_CACHE_DIR=str(tmp_path / "host")):
        with pytest.raises(artifacts.ArtifactError, match="not in the artifact storage") as gone:
            artifacts.version_verify(artifact_store.local_path("v1"), version.checksum)
        assert gone.value.reason == "missing"
        assert artifacts.version_verify(artifact_store.local_path("v2"), kept.checksum)["checksum"] == kept.checksum
    artifact_store.remove("v1")  # twice: nothing left to delete, no error


@pytest.mark.django_db
def test_an_unreachable_storage_fails_the_write_and_leaves_nothing(bucket: Bucket, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with override_settings(STORAGES=bucket.storage_settings(endpoint=dead), ARTIFACT_ROOT=tmp_path / "trainer"):
        with pytest.raises(artifacts.ArtifactError) as failed:
            _version("v1", seed=1)
    assert failed.value.reason == "upload"
    assert not [p for p in (tmp_path / "trainer").iterdir()]  # no version, no temporary directory
    assert bucket.keys("v1") == set()


# --- Loading on other hosts -----------------------------------------------------------------------------------


def _host_loader() -> artifacts.ModelLoader:
    """A fresh process's loader (use it inside ``override_settings(ARTIFACT_CACHE_DIR=<that host's cache>)``),
    retrying a failed version at once instead of after 30 s."""
    return artifacts.ModelLoader(retry_failed_after=0.0)


@pytest.mark.django_db
def test_a_host_downloads_verifies_and_serves_a_version_from_its_own_cache(
    bucket: Bucket, on_s3: Path, tmp_path: Path, activate: Callable[[int], None]
) -> None:
    version = _version("v1", seed=1)
    activate(version.id)
    host_cache = tmp_path / "host"
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        location = selectors.version_location(version_id=version.id)
        assert location is not None
        assert location.path == host_cache / "v1"
        model = _host_loader().refresh()
    assert model is not None
    assert model.version_id == version.id
    assert model.path == host_cache / "v1"
    np.testing.assert_array_equal(model.array("als_item_factors"), _arrays(6, 1)["als_item_factors"])
    assert isinstance(model.array("als_item_factors").base, np.memmap)  # memory-mapped from the cache, as locally
    assert sorted(p.name for p in (host_cache / "v1").iterdir()) == sorted(bucket.keys("v1"))


@pytest.mark.django_db
def test_a_partial_upload_is_not_a_version_and_the_previous_one_keeps_serving(
    bucket: Bucket, on_s3: Path, tmp_path: Path, activate: Callable[[int], None], caplog: pytest.LogCaptureFixture
) -> None:
    good = _version("good", seed=1)
    partial = _version("partial", seed=2)
    bucket.delete("partial", "meta.json")  # the upload stopped before its manifest
    activate(good.id)
    host_cache = tmp_path / "host"
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        loader = _host_loader()
        assert loader.refresh().version_id == good.id
        # Activating on a host without a copy checks the storage, which has no such version.
        with pytest.raises(ValueError, match="not in the artifact storage"):
            activate(partial.id)
    activate(partial.id)  # the training host, which has its own copy, can (say, before the manifest was lost)
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        before = _failures("missing")
        with caplog.at_level(logging.ERROR, logger="ranking.artifacts"):
            assert loader.refresh().version_id == good.id
    assert _failures("missing") == before + 1
    failed = [r for r in caplog.records if r.getMessage() == "model_version_load_failed"]
    assert failed
    assert (failed[-1].reason, failed[-1].serving_version_id) == ("missing", good.id)
    assert sorted(p.name for p in host_cache.iterdir() if p.is_dir()) == ["good"]  # nothing partial in the cache


@pytest.mark.django_db
def test_an_unreachable_storage_keeps_the_previous_version_serving(
    bucket: Bucket, on_s3: Path, tmp_path: Path, activate: Callable[[int], None]
) -> None:
    first = _version("v1", seed=1)
    second = _version("v2", seed=2)
    activate(first.id)
    host_cache = tmp_path / "host"
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        loader = _host_loader()
        assert loader.refresh().version_id == first.id
    activate(second.id)  # on the training host
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        dead = f"http://127.0.0.1:{_free_port()}"
        before = _failures("download")
        with override_settings(STORAGES=bucket.storage_settings(endpoint=dead)):
            assert loader.refresh().version_id == first.id
        assert _failures("download") == before + 1
        assert loader.refresh().version_id == second.id  # the storage is back: the next check swaps


@pytest.mark.django_db
def test_a_cached_copy_that_no_longer_verifies_is_downloaded_again(
    bucket: Bucket, on_s3: Path, tmp_path: Path, activate: Callable[[int], None]
) -> None:
    version = _version("v1", seed=1)
    activate(version.id)
    host_cache = tmp_path / "host"
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)):
        artifact_store.fetch("v1", version.checksum)
        (host_cache / "v1" / "popularity.npy").write_bytes(b"bit rot")
        loader = _host_loader()
        before = _failures("checksum")
        assert loader.refresh() is None  # refused, and the bad copy is gone ...
        assert _failures("checksum") == before + 1
        assert not (host_cache / "v1").exists()
        model = loader.refresh()  # ... so the retry downloads a good one
    assert model is not None
    assert model.version_id == version.id
    np.testing.assert_array_equal(model.array("popularity"), _arrays(6, 1)["popularity"])


@pytest.mark.django_db
def test_processes_of_one_host_share_one_download(
    bucket: Bucket, on_s3: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = _version("v1", seed=1)
    host_cache = tmp_path / "host"
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def fetch() -> None:
        try:
            start.wait()
            results.append(artifact_store.fetch("v1", version.checksum))
        except BaseException as exc:
            errors.append(exc)

    # The lock is a file lock (flock on a file of its own per caller), so threads contend exactly as processes do.
    with override_settings(ARTIFACT_CACHE_DIR=str(host_cache)), caplog.at_level(logging.INFO, "ranking"):
        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert sorted(results) == [False, False, False, True]  # one downloaded, three found it there
    assert (host_cache / "v1").is_dir()
    assert len([r for r in caplog.records if r.getMessage() == "model_artifacts_downloaded"]) == 1
    assert artifacts.version_verify(host_cache / "v1", version.checksum)["checksum"] == version.checksum


@pytest.mark.django_db
def test_reindex_and_the_trending_refresh_run_on_any_host(bucket: Bucket, on_s3: Path, tmp_path: Path) -> None:
    """Jobs that read a version (re-index, hourly trending) on a worker that did not train it download it first;
    the re-indexed copy goes to the storage like a trained version."""
    cluster_world(clusters=(("linen", "towel"), ("brass", "lamp")), per_cluster=8, seed=4)
    trained = services.model_train(params=SMALL_PARAMS, force=True).version
    with override_settings(ARTIFACT_CACHE_DIR=str(tmp_path / "worker")):
        reindexed, report = services.model_reindex(kind="hnsw")
        assert report.kind == "hnsw"
        summary = services.trending_refresh()
    assert summary is not None
    directory = Path(reindexed.artifact_path).name
    assert directory != trained.name
    assert Path(reindexed.artifact_path).parent == tmp_path / "worker"
    manifest = json.loads(bucket.get(directory, "meta.json"))
    assert manifest["checksum"] == reindexed.checksum
    assert manifest["ann"]["kind"] == "hnsw"
    with override_settings(ARTIFACT_CACHE_DIR=str(tmp_path / "web")):
        model = _host_loader().refresh()
    assert model is not None
    assert (model.version_id, model.checksum, model.path) == (
        trained.id,
        reindexed.checksum,
        tmp_path / "web" / directory,
    )
    assert model.index is not None


# --- Two hosts: separate processes, separate caches, no shared disk path --------------------------------------

# A "host": its own process and cache directory; the artifacts reach it only through the S3 endpoint. Each line on
# stdin makes it check the registry now (as its loader does once a second) and print what it serves.
HOST_SCRIPT = r"""
import json, os, sys
import django
django.setup()
from django.db import connections
connections["default"].settings_dict["NAME"] = os.environ["HOST_DB_NAME"]  # the test database
import numpy as np
from prometheus_client import REGISTRY
from ranking import artifact_store, artifacts
assert not artifact_store.colocated()
loader = artifacts.ModelLoader(retry_failed_after=0.0)
for _ in sys.stdin:
    model = loader.refresh()
    state = {"failures": {
        reason: REGISTRY.get_sample_value("recsys_model_load_failures_total", {"reason": reason}) or 0.0
        for reason in ("missing", "checksum", "download")
    }}
    if model is not None:
        factors = model.array("als_item_factors")
        top, _ = model.search(factors[0], 5)
        state.update(
            version_id=model.version_id, checksum=model.checksum, path=str(model.path), top=top.tolist(),
            factor_sum=float(np.asarray(factors, dtype=np.float64).sum()),
        )
    print("HOST " + json.dumps(state), flush=True)
"""


class Host:
    def __init__(self, bucket: Bucket, cache: Path) -> None:
        self.cache = cache
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT],
            cwd=settings.BASE_DIR,
            env=bucket.host_environment(cache),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def check(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("check\n")
        self.process.stdin.flush()
        while line := self.process.stdout.readline():
            if line.startswith("HOST "):
                return json.loads(line[len("HOST ") :])
        raise AssertionError(f"host exited with {self.process.wait(timeout=10)}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _expected(version: ModelVersion, path: Path) -> dict[str, Any]:
    """What a host serving ``version`` must print, computed from the training host's own copy."""
    model = artifacts.model_load(version_id=version.id, name=version.name, checksum=version.checksum, path=path)
    factors = model.array("als_item_factors")
    top, _ = model.search(factors[0], 5)
    return {
        "version_id": version.id,
        "checksum": version.checksum,
        "top": top.tolist(),
        "factor_sum": float(np.asarray(factors, dtype=np.float64).sum()),
    }


@pytest.mark.django_db(transaction=True)
def test_two_hosts_serve_a_trained_version_from_object_storage_and_survive_a_corrupt_one(
    bucket: Bucket, on_s3: Path, tmp_path: Path
) -> None:
    hosts: list[Host] = []
    try:
        cluster_world(clusters=(("linen", "towel"), ("brass", "lamp")), per_cluster=8, seed=3)
        first = services.model_train(params=SMALL_PARAMS, force=True).version
        assert first.status == ModelVersion.Status.ACTIVE
        assert "meta.json" in bucket.keys(first.name)
        hosts = [Host(bucket, tmp_path / "host-a" / "cache"), Host(bucket, tmp_path / "host-b" / "cache")]
        expected = _expected(first, on_s3 / first.name)
        for host in hosts:
            served = host.check()
            assert {k: served[k] for k in expected} == expected
            assert Path(served["path"]) == host.cache / first.name  # its own download, not the trainer's files
            assert served["failures"] == {"missing": 0.0, "checksum": 0.0, "download": 0.0}

        # A new version whose factors object is corrupted in the storage after training uploaded it.
        second = services.model_train(params=SMALL_PARAMS, force=True).version
        assert second.status == ModelVersion.Status.ACTIVE
        good_bytes = bucket.get(second.name, "als_item_factors.npy")
        bucket.put(second.name, "als_item_factors.npy", good_bytes[:-4] + b"\0\0\0\1")
        for host in hosts:
            served = host.check()
            assert (served["version_id"], served["top"]) == (first.id, expected["top"])  # the previous one serves
            assert served["failures"]["checksum"] == 1.0  # ... and the failure is reported
            assert not (host.cache / second.name).exists()

        # Repaired: the next check downloads and swaps.
        bucket.put(second.name, "als_item_factors.npy", good_bytes)
        expected_second = _expected(second, on_s3 / second.name)
        for host in hosts:
            served = host.check()
            assert {k: served[k] for k in expected_second} == expected_second
            assert Path(served["path"]) == host.cache / second.name
    finally:
        for host in hosts:
            host.close()
        world_clear()


@pytest.mark.django_db
def test_any_django_storage_works_as_the_remote_one(tmp_path: Path, activate: Callable[[int], None]) -> None:
    """Nothing S3-specific: a file system elsewhere (a shared mount, say) is uploaded to and downloaded from too."""
    shared = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "nfs")}}
    with override_settings(STORAGES={**settings.STORAGES, "artifacts": shared}, ARTIFACT_ROOT=tmp_path / "trainer"):
        assert not artifact_store.colocated()
        version = _version("v1", seed=1)
        activate(version.id)
        with override_settings(ARTIFACT_CACHE_DIR=str(tmp_path / "host")):
            model = _host_loader().refresh()
    assert model is not None
    assert model.path == tmp_path / "host" / "v1"
    assert sorted(p.name for p in (tmp_path / "nfs" / "v1").iterdir()) == sorted(p.name for p in model.path.iterdir())
    np.testing.assert_array_equal(model.array("popularity"), _arrays(6, 1)["popularity"])


# --- The default: the local file system, used in place -------------------------------------------------------


def test_by_default_the_storage_is_artifact_root_and_nothing_is_copied(tmp_path: Path) -> None:
    assert settings.STORAGES["artifacts"]["BACKEND"] == "ranking.artifact_store.LocalArtifactStorage"
    with override_settings(ARTIFACT_ROOT=tmp_path):
        assert artifact_store.colocated()
        assert Path(artifact_store.storage().location) == tmp_path
        path, checksum = artifacts.version_write(artifacts.local_root(), "v1", _arrays(3, 0), index=None, meta={})
        assert path == tmp_path / "v1"
        assert not artifact_store.in_cache(path)
        assert artifacts.version_verify(path, checksum)["checksum"] == checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no lock file, no second copy


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
