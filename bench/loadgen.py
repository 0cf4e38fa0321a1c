"""An open-loop HTTP load generator for the benches (a small wrk2 in Python; wrk2 is not packaged in Debian).

Requests are *scheduled* at a fixed arrival rate, whatever the server's pace: a dispatcher thread puts each
request's scheduled send time on a queue and a pool of client threads (one keep-alive ``http.client`` connection
each) sends them. Every latency is measured from the scheduled send time, not from when a client thread got
round to it, so a server that stalls is charged for every request that queued behind the stall (no coordinated
omission, which a closed-loop client such as wrk commits: it simply sends less while the server is slow).

Every response is recorded (status, latency, body) and handed to a callback; nothing is sampled.
"""

from __future__ import annotations

import http.client
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    kind: str
    body: bytes | None = None
    meta: object = None  # whatever the caller needs back with the result (event ids, ...)


@dataclass
class Result:
    request: Request
    scheduled: float  # time.monotonic() at which the request was due
    latency: float  # seconds, scheduled send time -> whole response read (includes queueing in the client)
    service: float  # seconds, actual send -> whole response read
    status: int  # 0: no HTTP answer (connection error, timeout); see ``error``
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""


@dataclass
class LoadStats:
    scheduled: int = 0
    sent: int = 0
    unsent: int = 0  # still queued when the run was stopped (the server could not keep up)
    reconnects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class OpenLoop:
    """``start(rate)`` ... ``stop()``: requests built by ``make_request(n)`` at ``rate`` per second, results to
    ``on_result`` (called from the client threads; keep it cheap and thread-safe)."""

    def __init__(
        self,
        host: str,
        port: int,
        key: str,
        make_request: Callable[[int], Request],
        on_result: Callable[[Result], None],
        connections: int = 16,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.make_request = make_request
        self.on_result = on_result
        self.connections = connections
        self.stats = LoadStats()
        self._queue: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
        self._stop_dispatch = threading.Event()
        self._discard = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dispatcher: threading.Thread | None = None

    def start(self, rate: float) -> None:
        self._stop_dispatch.clear()
        self._discard.clear()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.connections)]
        for thread in self._threads:
            thread.start()
        self._dispatcher = threading.Thread(target=self._dispatch, args=(rate,), daemon=True)
        self._dispatcher.start()

    def stop(self, drain: float = 10.0) -> None:
        """Stop scheduling; let the queued requests go out for up to ``drain`` seconds, then drop the rest."""
        self._stop_dispatch.set()
        assert self._dispatcher is not None
        self._dispatcher.join()
        deadline = time.monotonic() + drain
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._discard.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def run(self, rate: float, seconds: float, drain: float = 10.0) -> None:
        self.start(rate)
        time.sleep(seconds)
        self.stop(drain)

    def _dispatch(self, rate: float) -> None:
        started = time.monotonic()
        n = 0
        while not self._stop_dispatch.is_set():
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                # Sleep in short steps so stop() is prompt even at low rates.
                time.sleep(min(delay, 0.05))
                continue
            self._queue.put((n, due))
            with self.stats.lock:
                self.stats.scheduled += 1
            n += 1

    def _client(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._discard.is_set():
                with self.stats.lock:
                    self.stats.unsent += 1
                continue
            n, due = item
            request = self.make_request(n)
            sent_at = time.monotonic()
            status, body, retry_after, error = self._send(conn, request)
            done = time.monotonic()
            with self.stats.lock:
                self.stats.sent += 1
            self.on_result(
                Result(request, due, done - due, done - sent_at, status, body, retry_after, error)
            )  # fmt: skip
        conn.close()

    def _send(self, conn: http.client.HTTPConnection, request: Request) -> tuple[int, bytes, str | None, str]:
        for attempt in range(2):
            reused = conn.sock is not None
            try:
                conn.request(request.method, request.path, body=request.body, headers=self.headers)
                response = conn.getresponse()
                body = response.read()
                return response.status, body, response.getheader("Retry-After"), ""
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                # A kept-alive connection the server closed while idle: send again on a new one (a POST of
                # events is idempotent by event_id). A fresh connection failing is a real error.
                if attempt == 0 and reused:
                    with self.stats.lock:
                        self.stats.reconnects += 1
                    continue
                return 0, b"", None, type(exc).__name__
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                conn.close()
                return 0, b"", None, type(exc).__name__
        raise AssertionError("unreachable")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
