"""WSGI-level guards around Django: what must happen before Django builds its request.

- :func:`chunked_body_shim`: a body sent with ``Transfer-Encoding: chunked`` becomes readable.
- :func:`url_guard`: a request line longer than :data:`MAX_URL_BYTES` is answered ``414`` in JSON, a path
  whose percent-escapes are not UTF-8 text ``400``.

gunicorn's own limit on the request line is raised past this one (gunicorn.conf.py), so an over-long URL reaches
this guard and gets the API's JSON error rather than gunicorn's HTML page.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from django.conf import settings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# gunicorn's request line limit (gunicorn.conf.py), about what CDNs pass on (CloudFront: 8,192 bytes).
MAX_URL_BYTES = 8190
# A percent-escape of a byte above 0x7F: only a query string holding one can fail to be UTF-8 (ASCII otherwise).
_HIGH_ESCAPE = re.compile(r"%[89a-fA-F][0-9a-fA-F]").search


def chunked_body_shim(app: WSGIApp) -> WSGIApp:
    """Let Django read a body sent with ``Transfer-Encoding: chunked``.

    The root cause: such a request has no ``Content-Length``, and Django's ``WSGIRequest`` reads exactly
    ``CONTENT_LENGTH`` bytes of ``wsgi.input`` (0 when absent), so the body read as empty and every field was
    "required". gunicorn de-chunks the body itself and says so with ``wsgi.input_terminated`` (the input ends at
    the body's end, so reading it to EOF is safe). Where that flag is set and no length was sent, this reads the
    body (at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` + 1 bytes, so an endless stream cannot exhaust memory; one byte
    past the limit makes the parser's 413) and hands Django a sized stream.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            stream = environ["wsgi.input"]
            body = stream.read() if limit is None else stream.read(limit + 1)
            if body:
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return wrapped


def url_guard(app: WSGIApp) -> WSGIApp:
    """``414 {"detail": …}`` for a path plus query string over :data:`MAX_URL_BYTES`, ``400`` for a path or query
    string that is not UTF-8 text, before Django parses it (Django reads a query string's other bytes as U+FFFD:
    ``customer_id=%FF`` and ``%FE`` were one id)."""
    too_long = json.dumps({"detail": f"The URL is longer than {MAX_URL_BYTES:,} bytes."}).encode()
    # Django keeps the escapes of bytes that are not UTF-8 as they were sent: PUT /v1/items/%FF stored the item
    # "%FF", which /v1/items/%25FF names too (two spellings of one id; found by a fifth tester, 5 December).
    not_text = json.dumps({"detail": "The URL's path is not UTF-8 text (percent-escapes of other bytes)."}).encode()
    query_not_text = json.dumps(
        {"detail": "The URL's query string is not UTF-8 text (percent-escapes of other bytes)."}
    ).encode()

    def answer(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if len(path) + len(environ.get("QUERY_STRING", "")) > MAX_URL_BYTES:
            return answer(start_response, "414 URI Too Long", too_long)
        if not path.isascii():
            # WSGI hands the path's bytes over as latin-1 characters.
            try:
                path.encode("latin-1").decode("utf-8")
            except UnicodeError:
                return answer(start_response, "400 Bad Request", not_text)
        query = environ.get("QUERY_STRING", "")
        if not query.isascii() or _HIGH_ESCAPE(query):
            try:
                unquote_to_bytes(query.encode("latin-1")).decode("utf-8")
            except UnicodeError:
                return answer(start_response, "400 Bad Request", query_not_text)
        return app(environ, start_response)

    return wrapped
