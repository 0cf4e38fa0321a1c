"""Event use cases: bulk import of interactions from CSV, real-time ingestion through the API, session merge,
and the online state's fold and rebuild."""

from events.services.imports import RETRY_WINDOW, interactions_import
from events.services.ingest import (
    ERASED_CUSTOMER_MESSAGE,
    CustomerErased,
    IngestResult,
    SessionMergeResult,
    event_ingest_batch,
    session_merge,
)
from events.services.online_state import (
    REBUILD_LOCK_SECONDS,
    REBUILD_REQUEST_SECONDS,
    REBUILD_TASK,
    FoldSummary,
    RebuildAborted,
    RebuildInProgress,
    RebuildStage,
    RebuildSummary,
    item_features_fold,
    online_state_rebuild,
    online_state_rebuild_request,
)

__all__ = [
    "ERASED_CUSTOMER_MESSAGE",
    "REBUILD_LOCK_SECONDS",
    "REBUILD_REQUEST_SECONDS",
    "REBUILD_TASK",
    "RETRY_WINDOW",
    "CustomerErased",
    "FoldSummary",
    "IngestResult",
    "RebuildAborted",
    "RebuildInProgress",
    "RebuildStage",
    "RebuildSummary",
    "SessionMergeResult",
    "event_ingest_batch",
    "interactions_import",
    "item_features_fold",
    "online_state_rebuild",
    "online_state_rebuild_request",
    "session_merge",
]
