"""Model version artifacts: writing a version directory atomically, checksums, memory-mapped loading, and the
loader every serving process uses to hot-swap to a newly activated version without a restart.

A version is a directory ``<name>/`` of ``.npy`` arrays (``np.load(mmap_mode="r")``), an optional faiss index and
``meta.json``, its manifest (parameters, sizes, metrics, the sha256 of every file and one checksum over them). It
is written under a temporary name and renamed when complete, so a reader never sees half a version. Where it lives
is ``STORAGES["artifacts"]`` (ranking/artifact_store.py): by default ``ARTIFACT_ROOT`` on this disk, used in place;
with a remote storage (S3-compatible object storage) training uploads it (manifest last) and every process
downloads it into its local cache (``ARTIFACT_CACHE_DIR``) and verifies it before memory-mapping it:
:func:`version_verify` and :func:`version_read_meta` fetch a version of the cache that is not there yet.

Serving calls :func:`get_active_model`: it returns the loaded :class:`ActiveModel` and, at most once per second
per process, compares the Redis marker (``model:active`` = version id, ``model:active:checksum``) with what it
holds (falling back to the database when Redis is down). A version whose files are missing, cannot be downloaded
or fail their checksums is not loaded: the previous one keeps serving, and ``recsys_model_load_failures_total``
counts it (reason ``missing``, ``checksum``, ``download``, ...).

One module per concern; callers import from this package:

- ``files``: writing and verifying a version directory (``version_write``, ``version_reindex_copy``,
  ``version_read_meta``, ``version_verify``, ``local_root``);
- ``model``: the loaded model (``ActiveModel``, ``model_load``);
- ``trending``: the encoding of the hourly trending overlay in Redis (``trending_encode``, ``trending_decode``);
- ``hot_swap``: the Redis marker and its keys, the hot-swapping ``ModelLoader``, ``get_active_model`` and ``loader``;
- ``pinned_models``: the versions experiment arms name (``PinnedModels``, ``model_for``, ``pinned``).

A test that replaces a module attribute patches the module that looks it up (``artifacts.hot_swap._redis_marker``).
"""

from ranking.artifact_store import ArtifactError, combined_checksum, file_sha256
from ranking.artifacts.files import (
    ANN_FILE,
    FORMAT_VERSION,
    META_FILE,
    TMP_PREFIX,
    local_root,
    version_read_meta,
    version_reindex_copy,
    version_verify,
    version_write,
)
from ranking.artifacts.hot_swap import (
    ACTIVE_CHECKSUM_KEY,
    ACTIVE_KEY,
    FALLBACKS,
    LOAD_FAILURES,
    TRENDING_KEY,
    TRENDING_STAMP_KEY,
    Marker,
    ModelLoader,
    _database_marker,
    _redis_marker,
    get_active_model,
    loader,
)
from ranking.artifacts.model import ActiveModel, model_load
from ranking.artifacts.pinned_models import PinnedModels, model_for, pinned
from ranking.artifacts.trending import trending_decode, trending_encode
from ranking.selectors import VersionLocation

__all__ = [
    "ACTIVE_CHECKSUM_KEY",
    "ACTIVE_KEY",
    "ANN_FILE",
    "FALLBACKS",
    "FORMAT_VERSION",
    "LOAD_FAILURES",
    "META_FILE",
    "TMP_PREFIX",
    "TRENDING_KEY",
    "TRENDING_STAMP_KEY",
    "ActiveModel",
    "ArtifactError",
    "Marker",
    "ModelLoader",
    "PinnedModels",
    "VersionLocation",
    "_database_marker",
    "_redis_marker",
    "combined_checksum",
    "file_sha256",
    "get_active_model",
    "loader",
    "local_root",
    "model_for",
    "model_load",
    "pinned",
    "trending_decode",
    "trending_encode",
    "version_read_meta",
    "version_reindex_copy",
    "version_verify",
    "version_write",
]
