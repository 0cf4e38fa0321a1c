"""A version directory: writing one atomically (a new version, or a re-indexed copy), reading its manifest
(``meta.json``) and verifying its checksums, downloading it into this host's cache first when the storage is
remote."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ranking import ann, artifact_store
from ranking.artifact_store import ArtifactError, combined_checksum, file_sha256

FORMAT_VERSION = 1
META_FILE = artifact_store.META_FILE
ANN_FILE = "ann_als.faiss"
TMP_PREFIX = artifact_store.TMP_PREFIX


def local_root() -> Path:
    """The directory training writes a version into (this host's cache; the storage itself by default)."""
    return artifact_store.cache_root()


def _write_meta_and_publish(tmp: Path, final: Path, meta: dict[str, Any], files: dict[str, str]) -> str:
    checksum = combined_checksum(files)
    meta = {**meta, "format": FORMAT_VERSION, "files": files, "checksum": checksum}
    with open(tmp / META_FILE, "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True, default=_json_default)
        handle.flush()
        os.fsync(handle.fileno())
    artifact_store.fsync_dir(tmp)
    if final.exists():
        raise ArtifactError(f"{final} already exists; a version directory is never overwritten")
    if not artifact_store.colocated():
        # Remote storage: the version exists once its manifest is uploaded (last); the local copy then becomes
        # this host's cached copy.
        artifact_store.publish(tmp, final.name, files)
    os.rename(tmp, final)
    artifact_store.fsync_dir(final.parent)
    return checksum


def version_write(
    root: Path,
    name: str,
    arrays: Mapping[str, np.ndarray],
    *,
    index: faiss.Index | None,
    meta: Mapping[str, Any],
) -> tuple[Path, str]:
    """Write a complete version directory ``root/name`` and return (path, checksum).

    Everything goes to ``root/.tmp-<name>-<random>`` first and is renamed into place only when every file and
    meta.json are on disk (fsynced), so a crash leaves a temporary directory, never a half version.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for array_name, array in arrays.items():
            filename = f"{array_name}.npy"
            with open(tmp / filename, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            files[filename] = file_sha256(tmp / filename)
        if index is not None:
            ann.write_index(index, tmp / ANN_FILE)
            files[ANN_FILE] = file_sha256(tmp / ANN_FILE)
        checksum = _write_meta_and_publish(tmp, final, dict(meta), files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, checksum


def version_reindex_copy(
    source: Path, name: str, *, index: faiss.Index, meta_updates: Mapping[str, Any]
) -> tuple[Path, str]:
    """A new version directory ``source.parent/name`` with ``source``'s arrays (hard links: no copy, no extra
    disk) and a new index; the source directory stays untouched for processes still reading it."""
    meta = version_read_meta(source)
    root = source.parent
    final = root / name
    tmp = root / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for filename, sha in meta["files"].items():
            if filename == ANN_FILE:
                continue
            try:
                os.link(source / filename, tmp / filename)
            except OSError:  # another filesystem, or links not supported: copy instead
                shutil.copy2(source / filename, tmp / filename)
            files[filename] = sha
        ann.write_index(index, tmp / ANN_FILE)
        files[ANN_FILE] = file_sha256(tmp / ANN_FILE)
        new_meta = {k: v for k, v in meta.items() if k not in ("files", "checksum", "format")}
        new_meta.update(meta_updates)
        checksum = _write_meta_and_publish(tmp, final, new_meta, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, checksum


def _ensure_local(path: Path, expected_checksum: str | None) -> bool:
    """With a remote storage, download a version of this host's cache that is not there yet (a no-op otherwise).
    True when it did: the download has verified every file against the manifest and ``expected_checksum``."""
    if not path.is_dir() and artifact_store.in_cache(path):
        return artifact_store.fetch(path.name, expected_checksum)
    return False


def version_read_meta(path: Path) -> dict[str, Any]:
    _ensure_local(path, None)
    try:
        with open(path / META_FILE) as handle:
            meta = json.load(handle)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path / META_FILE} is missing", "missing") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path / META_FILE} is unreadable: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return meta


def version_verify(path: Path, expected_checksum: str | None = None) -> dict[str, Any]:
    """Check that every file listed in meta.json exists and matches its sha256; return the meta.

    Raises :class:`ArtifactError` (reason ``missing`` or ``checksum``; ``download`` when a remote storage fails)
    otherwise. With a remote storage the version is downloaded into the cache first, and a cached copy that fails
    is discarded, so the next attempt downloads it again.
    """
    if _ensure_local(path, expected_checksum):
        return version_read_meta(path)  # just verified while downloading: no second pass over the files
    try:
        return _verify_local(path, expected_checksum)
    except ArtifactError as exc:
        if exc.reason in ("missing", "checksum") and artifact_store.in_cache(path):
            artifact_store.discard(path)
        raise


def _verify_local(path: Path, expected_checksum: str | None) -> dict[str, Any]:
    meta = version_read_meta(path)
    files: dict[str, str] = meta.get("files", {})
    if expected_checksum and meta.get("checksum") != expected_checksum:
        raise ArtifactError(
            f"{path}: meta.json checksum {meta.get('checksum')} is not the registered {expected_checksum}", "checksum"
        )
    if combined_checksum(files) != meta.get("checksum"):
        raise ArtifactError(f"{path}: the file list does not match the version checksum", "checksum")
    for filename, sha in files.items():
        file_path = path / filename
        if not file_path.is_file():
            raise ArtifactError(f"{file_path} is missing", "missing")
        if file_sha256(file_path) != sha:
            raise ArtifactError(f"{file_path} does not match its sha256", "checksum")
    return meta


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
