"""gunicorn's own error answers (a malformed request line or header, a request line or headers over its limits,
sent before Django ever sees the request) as JSON, like every other API error.

gunicorn writes them with ``gunicorn.util.write_error``, an HTML page; gunicorn.conf.py installs :func:`write_error`
in its place when gunicorn starts. Same status line and ``Connection: close``; the body is
``{"detail": "<reason>: <gunicorn's message>"}``.
"""

from __future__ import annotations

import json
import socket


def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    body = json.dumps({"detail": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    from gunicorn import util

    util.write_error = write_error
