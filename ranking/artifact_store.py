"""Where model versions live: Django's storage API (``STORAGES["artifacts"]``) and this host's local cache.

A version is a directory of files plus its manifest, ``meta.json`` (the sha256 of every file and one checksum over
them). Training writes it to the ``artifacts`` storage; every web process and worker memory-maps it from a LOCAL
directory, ``ARTIFACT_CACHE_DIR`` (default: ``ARTIFACT_ROOT``).

- Default: :class:`LocalArtifactStorage`, the file system at ``ARTIFACT_ROOT``. The storage and the cache are
  the same directory ("colocated"): nothing is uploaded, downloaded or copied (the one-host behaviour).
- Any other storage (S3-compatible object storage through django-storages' ``S3Storage``, or a file system
  elsewhere): training uploads the files and then the manifest LAST, so a partial upload is never a version;
  a host downloads a version into its cache before it activates it: into a temporary directory, every file's
  sha256 checked against the manifest as it lands, renamed into place when complete. Processes on one host
  share one download (an exclusive file lock per version). A version in the cache is never modified; one that
  fails its checksums later is discarded so the next attempt downloads it again.

Failures raise :class:`ArtifactError` with ``reason`` ``missing`` (no manifest / file), ``checksum`` (a file or the
manifest does not match) or ``download``/``upload`` (the storage failed); the loader counts and logs them and keeps
serving the version it has.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages

logger = logging.getLogger(__name__)

STORAGE_ALIAS = "artifacts"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
LOCK_PREFIX = ".lock-"
_CHUNK = 4 * 1024 * 1024


class ArtifactError(Exception):
    """A version that cannot be used; ``reason`` is the ``recsys_model_load_failures_total`` label."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class LocalArtifactStorage(FileSystemStorage):
    """The default ``artifacts`` storage: the file system at ``ARTIFACT_ROOT`` (read when used, not when the storage
    is built, so the directory follows the setting, as FileSystemStorage's default follows MEDIA_ROOT)."""

    @property  # type: ignore[override]
    def base_location(self) -> str:
        return str(self._value_or_setting(self._location, settings.ARTIFACT_ROOT))

    @property  # type: ignore[override]
    def location(self) -> str:
        return os.path.abspath(self.base_location)


# --- Checksums ------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def combined_checksum(file_checksums: Mapping[str, str]) -> str:
    """One sha256 over the files' sha256 (sorted by name): the version's identity for the registry and marker."""
    digest = hashlib.sha256()
    for name in sorted(file_checksums):
        digest.update(f"{name}\0{file_checksums[name]}\n".encode())
    return digest.hexdigest()


# --- Where things are -----------------------------------------------------------------------------------------


def storage() -> Storage:
    return storages[STORAGE_ALIAS]


def cache_root() -> Path:
    """This host's directory of versions it can memory-map."""
    return Path(settings.ARTIFACT_CACHE_DIR or settings.ARTIFACT_ROOT)


def colocated() -> bool:
    """True when the storage IS the local cache (the default): versions are used where they were written."""
    store = storage()
    return isinstance(store, FileSystemStorage) and Path(store.location).resolve() == cache_root().resolve()


def local_path(directory: str) -> Path:
    return cache_root() / directory


def in_cache(path: Path) -> bool:
    """Whether ``path`` is a version directory of the cache of a remote storage (one this module may fetch)."""
    return not colocated() and path.parent.resolve() == cache_root().resolve()


def _key(directory: str, filename: str) -> str:
    return f"{directory}/{filename}"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe_filename(filename: object) -> str:
    """A manifest names plain files of its own directory; anything else is a corrupt (or hostile) manifest."""
    if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename or filename[0] == ".":
        raise ArtifactError(f"manifest names an invalid file {filename!r}", "checksum")
    return filename


# --- Upload (training) ----------------------------------------------------------------------------------------


def publish(local_dir: Path, directory: str, files: Mapping[str, str]) -> None:
    """Upload a complete local version (``files`` and its ``meta.json``) as ``directory`` in the storage: every
    file first, the manifest last. A version already in the storage is never overwritten."""
    store = storage()
    manifest_key = _key(directory, META_FILE)
    started = time.monotonic()
    try:
        if store.exists(manifest_key):
            raise ArtifactError(f"{directory} already exists in the artifact storage; a version is never overwritten")
        size = 0
        for filename in [*sorted(files), META_FILE]:
            key = _key(directory, filename)
            if store.exists(key):  # a leftover of an upload that crashed before its manifest
                store.delete(key)
            with open(local_dir / filename, "rb") as handle:
                saved = store.save(key, File(handle, name=filename))
            if saved != key:
                raise ArtifactError(f"the artifact storage saved {key} as {saved}", "upload")
            size += (local_dir / filename).stat().st_size
    except ArtifactError:
        raise
    except Exception as exc:  # any backend's error (botocore, OSError, ...) is an upload failure
        raise ArtifactError(f"uploading {directory} to the artifact storage failed: {exc}", "upload") from exc
    logger.info(
        "model_artifacts_uploaded",
        extra={"version": directory, "bytes": size, "seconds": round(time.monotonic() - started, 3)},
    )


def remove(directory: str) -> None:
    """Delete version ``directory`` from a remote storage: the manifest first (it stops being a version at once),
    then its files. A no-op with the default storage, where the local directory is the version (pruned locally)."""
    if colocated():
        return
    store = storage()
    try:
        store.delete(_key(directory, META_FILE))
        _, filenames = store.listdir(directory)
        for filename in filenames:
            store.delete(_key(directory, filename))
    except FileNotFoundError:
        return
    except Exception as exc:  # any backend's error
        raise ArtifactError(f"deleting {directory} from the artifact storage failed: {exc}", "storage") from exc
    logger.info("model_artifacts_removed", extra={"version": directory})


# --- Download (every serving process and worker) --------------------------------------------------------------


@contextmanager
def _host_lock(directory: str) -> Iterator[None]:
    """One download per version per host: an exclusive lock on ``<cache>/.lock-<directory>``."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{LOCK_PREFIX}{directory}", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_manifest(store: Storage, directory: str, expected_checksum: str | None) -> tuple[bytes, dict[str, Any]]:
    key = _key(directory, META_FILE)
    if not store.exists(key):
        # No manifest: no such version, or its upload never finished (the manifest goes last).
        raise ArtifactError(f"{key} is not in the artifact storage", "missing")
    with store.open(key, "rb") as handle:
        raw = handle.read()
    try:
        manifest = json.loads(raw)
        files = {_safe_filename(name): str(sha) for name, sha in manifest["files"].items()}
        checksum = manifest["checksum"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{key} is not a valid manifest: {exc}", "checksum") from exc
    if combined_checksum(files) != checksum:
        raise ArtifactError(f"{key}: the file list does not match the version checksum", "checksum")
    if expected_checksum and checksum != expected_checksum:
        raise ArtifactError(f"{key}: checksum {checksum} is not the registered {expected_checksum}", "checksum")
    return raw, manifest


def _download_file(store: Storage, key: str, target: Path, expected_sha: str) -> int:
    if not store.exists(key):
        raise ArtifactError(f"{key} is not in the artifact storage", "missing")
    with store.open(key, "rb") as source, open(target, "wb") as out:
        s3_object = getattr(source, "obj", None)  # django-storages' S3File: its boto3 Object
        if s3_object is not None and hasattr(s3_object, "download_fileobj"):
            # Straight into the cache with boto3's parallel ranged GETs; reading the S3File would first copy the
            # whole object into a temporary file.
            s3_object.download_fileobj(out, Config=getattr(store, "transfer_config", None))
            out.flush()
            os.fsync(out.fileno())
            digest = file_sha256(target)  # the file is in the page cache now
        else:
            sha = hashlib.sha256()
            while chunk := source.read(_CHUNK):
                sha.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            digest = sha.hexdigest()
    if digest != expected_sha:
        raise ArtifactError(f"{key} does not match its sha256 in the manifest", "checksum")
    return target.stat().st_size


def fetch(directory: str, expected_checksum: str | None = None) -> bool:
    """Make version ``directory`` present in the cache (``local_path(directory)``), downloading it when it is not.

    True when this call downloaded it, every file verified against the manifest (and the manifest against
    ``expected_checksum``) on the way; False when it was already there. Raises :class:`ArtifactError`; nothing
    partial is ever left at the local path.
    """
    final = local_path(directory)
    if final.is_dir():
        return False
    with _host_lock(directory):
        if final.is_dir():  # another process of this host downloaded it while we waited
            return False
        store = storage()
        tmp = cache_root() / f"{TMP_PREFIX}{directory}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        try:
            raw, manifest = _read_manifest(store, directory, expected_checksum)
            tmp.mkdir()
            size = 0
            for filename, sha in manifest["files"].items():
                size += _download_file(store, _key(directory, filename), tmp / filename, sha)
            (tmp / META_FILE).write_bytes(raw)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except ArtifactError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:  # any backend's error (botocore, OSError, ...) is a download failure
            shutil.rmtree(tmp, ignore_errors=True)
            raise ArtifactError(f"downloading {directory} from the artifact storage failed: {exc}", "download") from exc
    logger.info(
        "model_artifacts_downloaded",
        extra={"version": directory, "bytes": size, "seconds": round(time.monotonic() - started, 3)},
    )
    return True


def discard(path: Path) -> None:
    """Remove a cached copy that failed verification, so the next attempt downloads it again. Processes that
    mapped its files keep their mappings (unlinked files live on until unmapped)."""
    aside = path.parent / f"{TMP_PREFIX}discarded-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
    logger.warning("model_artifacts_cache_discarded", extra={"path": str(path)})
