"""Derive the per-purpose Redis URLs (app data, Celery broker, results) from one REDIS_URL.

REDIS_URL may be ``redis://host:port/N``, ``rediss://...`` or ``unix:///path/redis.sock?db=N``; Celery spells the
unix-socket form ``redis+socket://`` (for the broker and the result backend alike) with ``virtual_host=N``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


def with_db(url: str, db: int) -> str:
    """The same server as ``url``, database ``db``, in redis-py's URL form."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = parse_qs(parts.query)
        query["db"] = [str(db)]
        # urlunsplit would drop the empty authority and write "unix:/path"; redis-py needs "unix:///path".
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query, doseq=True)}"
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))


def db_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return int(parse_qs(parts.query).get("db", ["0"])[0])
    path = parts.path.strip("/")
    return int(path) if path else 0


def celery_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis+socket://{parts.path}?virtual_host={db}"
    return with_db(url, db)
