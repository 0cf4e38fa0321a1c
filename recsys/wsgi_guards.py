"""WSGI-level guards around Django: what must happen before Django builds its request.

- :func:`chunked_body_shim`: a body sent with ``Transfer-Encoding: chunked`` becomes readable.
- :func:`url_length_guard`: a request line longer than :data:`MAX_URL_BYTES` is answered ``414`` in JSON.

gunicorn's own limit on the request line is raised past this one (gunicorn.conf.py), so an over-long URL reaches
this guard and gets the API's JSON error rather than gunicorn's HTML page.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# gunicorn's request line limit (gunicorn.conf.py), about what CDNs pass on (CloudFront: 8,192 bytes).
MAX_URL_BYTES = 8190


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


def url_length_guard(app: WSGIApp) -> WSGIApp:
    """``414 {"detail": …}`` for a path plus query string over :data:`MAX_URL_BYTES`, before Django parses it."""
    body = json.dumps({"detail": f"The URL is longer than {MAX_URL_BYTES:,} bytes."}).encode()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
        if length > MAX_URL_BYTES:
            start_response(
                "414 URI Too Long",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return wrapped
