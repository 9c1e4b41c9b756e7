"""The connection layer: uvicorn's httptools protocol with the limits a public endpoint needs.

uvicorn + httptools bound none of these: a request head may grow without limit (httptools
concatenates a long header value chunk by chunk, so tens of MB stall the event loop), a
connection that sends nothing or stops halfway is kept forever, every connection is accepted
until the process runs out of file descriptors, and pipelined requests are parsed into
objects as fast as they arrive. `GuardedProtocol` adds, per connection:

- a head limit: more than `max_header_bytes` of request line + headers, or more than
  `max_headers` header lines, is answered 431 and the connection closed;
- a header timeout (the head must be complete `header_timeout` seconds after the connection
  opened or the request's first byte arrived) and a body idle timeout (no body byte for
  `body_timeout` seconds; 1 s while draining), answered 408 and closed;
- at most `PIPELINE_DEPTH` pipelined requests parsed ahead; the rest waits unparsed in the
  socket (reading is paused), so one connection holds a bounded amount of memory;

and, across connections (`ConnectionGuard`), a cap of `max_connections`: a new connection
over it evicts the oldest connection that is only waiting for a request head (silent,
trickling or idle keep-alive); when every connection is busy with a request, up to
`probe_connections` more are accepted for health and metrics requests only (anything else
gets 503), so Kubernetes probes still answer; beyond that a new connection is closed at once.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .metrics import Metrics
from .settings import Settings

#: Pipelined requests parsed ahead of the one being answered, per connection.
PIPELINE_DEPTH = 8
#: Bytes handed to the parser at a time, so limits are checked between pieces.
FEED_BYTES = 64 * 1024
#: Body idle timeout while draining: a stalled upload must not hold the drain.
DRAIN_BODY_TIMEOUT = 1.0
#: ASGI scope extension (`scope["extensions"]`) this layer sets on every request: a function
#: that tells whether the request's connection has closed (the client went away).
CLIENT_GONE = "servedmodel.client_gone"
#: Paths a connection taken from the probe reserve may request.
PROBE_PATHS = (b"/v2/health/live", b"/v2/health/ready", b"/metrics")


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection layer's limits; the defaults are the server settings' (stated there)."""
    max_header_bytes: int = Settings.max_header_bytes
    max_headers: int = Settings.max_headers
    header_timeout: float = Settings.header_timeout_seconds
    body_timeout: float = Settings.body_timeout_seconds
    keep_alive: float = Settings.keep_alive_seconds
    max_connections: int = Settings.max_connections
    probe_connections: int = Settings.probe_connections

    @classmethod
    def from_settings(cls, s: Settings):
        return cls(max_header_bytes=s.max_header_bytes, max_headers=s.max_headers,
                   header_timeout=s.header_timeout_seconds, body_timeout=s.body_timeout_seconds,
                   keep_alive=s.keep_alive_seconds, max_connections=s.max_connections,
                   probe_connections=s.probe_connections)


def _error(status: int, phrase: str, message: str, *, retry: bool = False) -> bytes:
    """A whole HTTP/1.1 response with our JSON error body, for answers written by the
    connection layer itself (no request task exists yet, or it is stuck reading)."""
    body = orjson.dumps({"error": message})
    head = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Refused(Exception):
    def __init__(self, response: bytes, reason: str) -> None:
        super().__init__(reason)
        self.response, self.reason = response, reason


class ConnectionGuard:
    """State shared by the connections of one server: the cap, the connections that may be
    evicted, and the counters exported in /metrics."""

    def __init__(self, limits: ConnectionLimits, metrics: Metrics, audit=None) -> None:
        self.limits = limits
        self.metrics = metrics
        #: the server's AuditLog: requests this layer answers itself are audited too
        self.audit = audit if audit is not None and audit.enabled else None
        self.open = 0
        #: connections waiting for a request head, oldest first (evicted first at the cap)
        self.waiting: OrderedDict[GuardedProtocol, None] = OrderedDict()
        #: connections receiving a request body (their idle timer shortens while draining)
        self.reading: set[GuardedProtocol] = set()
        self.draining = False

    def count(self, reason: str) -> None:
        errors = self.metrics.connection_errors
        errors[reason] = errors.get(reason, 0) + 1

    def audited(self, status: int, reason: str, method: str | None, path: str | None) -> None:
        """Audit a request this layer refused before the app saw it (no caller is known)."""
        if self.audit is not None:
            self.audit.add(protocol="rest", method=method, path=path or "", status=status,
                           seconds=0.0, identity=None, reason=reason, bytes_out=None)

    def admit(self, conn: GuardedProtocol) -> str:
        """'normal', 'probe' (the reserve: health and metrics only) or 'refuse'."""
        cap = self.limits.max_connections
        if self.open >= cap and self.waiting:
            oldest = next(iter(self.waiting))
            oldest.evict()
        if self.open < cap:
            return "normal"
        if self.open < cap + self.limits.probe_connections:
            return "probe"
        return "refuse"

    def opened(self, conn: GuardedProtocol) -> None:
        self.open += 1
        self.metrics.connections = self.open
        self.metrics.connections_total += 1

    def closed(self, conn: GuardedProtocol) -> None:
        self.open -= 1
        self.metrics.connections = self.open
        self.waiting.pop(conn, None)
        self.reading.discard(conn)

    def begin_drain(self) -> None:
        self.draining = True
        for conn in list(self.reading):
            conn.arm_body_timer()


class _Flow(FlowControl):
    """uvicorn resumes reading after each response and each receive(); while this connection
    has unparsed bytes waiting (its pipeline is full) reading stays paused, else every
    response would let another read of up to 256 KB pile up behind the parser."""

    def __init__(self, transport, conn: GuardedProtocol) -> None:
        super().__init__(transport)
        self._conn = conn

    def resume_reading(self) -> None:
        if not self._conn._pending:
            super().resume_reading()


def _probe_only(app, guard: ConnectionGuard):
    """The app for a connection taken from the probe reserve: probes pass, the rest is 503."""
    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"].encode() not in PROBE_PATHS:
            guard.audited(503, "connection_limit", scope.get("method"), scope["path"])
            body = orjson.dumps({"error": "the server is at its connection limit "
                                          "(SERVEDMODEL_MAX_CONNECTIONS); retry later"})
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"),
                (b"connection", b"close"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)
    return guarded


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `guard` is bound by
    `protocol_factory`."""

    guard: ConnectionGuard

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending = b""          # bytes received and not parsed yet
        self._held = False           # parsing held back: the pipeline is full
        self._in_head = False        # a request head has begun and is not complete
        self._began = False          # a head began in the piece being parsed
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._last_body = 0.0
        self._dead = False

    # -- connection -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        guard = self.guard
        admission = guard.admit(self)
        if admission == "refuse":
            self._dead = True
            guard.count("connection_limit")
            guard.audited(503, "connection_limit", None, None)
            self.connections.discard(self)
            transport.write(_error(503, "Service Unavailable", "the server is at its connection "
                                   "limit (SERVEDMODEL_MAX_CONNECTIONS); retry later",
                                   retry=True))
            transport.close()
            return
        guard.opened(self)
        if admission == "probe":
            self.app = _probe_only(self.app, guard)
        self._wait_for_head()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self._cancel_timers()
        if not self._dead:
            self._dead = True
            self.guard.closed(self)
        # Drop what this connection parsed ahead: the cycles point back at this protocol,
        # so without this they live until a full garbage collection.
        self.pipeline.clear()
        self._pending = b""

    def evict(self) -> None:
        """Closed to make room for a new connection (this one only waits for a head)."""
        self._dead = True
        self._cancel_timers()
        self.guard.closed(self)          # now, so the newcomer takes this one's place
        self.guard.count("evicted")
        self.transport.close()

    def _wait_for_head(self) -> None:
        self.guard.waiting[self] = None
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.limits.header_timeout,
                                                    self._head_timeout)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._write_timer = None

    def _refuse(self, response: bytes, reason: str) -> None:
        self.guard.count(reason)
        if self._in_head and response:
            # A head the app never saw (a request whose body was being read is the app's to
            # audit): the status is the response's, the path what was parsed of the URL.
            url = bytes(getattr(self, "url", b""))
            path = url.split(b"?", 1)[0].decode("latin-1")[:256] or None
            self.guard.audited(int(response[9:12]), reason, None, path)
        self.guard.waiting.pop(self, None)
        self._pending = b""
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _head_timeout(self) -> None:
        self._head_timer = None
        # Idle between two requests is the keep-alive timer's business, not this one's.
        if self._in_head or self.cycle is None:
            self._refuse(_error(408, "Request Timeout", f"the request head was not complete "
                                f"within {self.guard.limits.header_timeout:g} s "
                                f"(SERVEDMODEL_HEADER_TIMEOUT_SECONDS)"), "header_timeout")

    def arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        limit = self.guard.limits.body_timeout
        if self.guard.draining:
            limit = min(limit, DRAIN_BODY_TIMEOUT)
        delay = max(0.0, self._last_body + limit - self.loop.time())
        self._body_timer = self.loop.call_later(delay, self._body_check)

    def _body_check(self) -> None:
        self._body_timer = None
        limit = self.guard.limits.body_timeout
        if self.guard.draining:
            limit = min(limit, DRAIN_BODY_TIMEOUT)
        if self.flow.read_paused:
            # Reading is paused by us (a pipelined request waits for the one before it, or
            # the app has not taken the buffered body yet): the client is not the one idle.
            self._last_body = self.loop.time()
        idle = self.loop.time() - self._last_body
        if idle < limit:
            self.arm_body_timer()
            return
        self.guard.reading.discard(self)
        response = b""
        if self.cycle is not None and not self.cycle.response_started:
            response = _error(408, "Request Timeout", f"no request body bytes for {limit:g} s "
                              f"(SERVEDMODEL_BODY_TIMEOUT_SECONDS)")
        self._refuse(response, "body_timeout")

    def pause_writing(self) -> None:
        """The client does not read its responses: it gets the body timeout to start again."""
        super().pause_writing()
        if self._write_timer is None and not self._dead:
            self._write_timer = self.loop.call_later(self.guard.limits.body_timeout,
                                                     self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timeout(self) -> None:
        self._write_timer = None
        self.guard.count("write_timeout")
        self.transport.abort()

    # -- parsing ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        self._unset_keepalive_if_required()
        self.guard.metrics.received_bytes += len(data)
        self._pending = self._pending + data if self._pending else data
        if self._held:
            self.flow.pause_reading()
            return
        self._feed()

    def _feed(self) -> None:
        limits = self.guard.limits
        while self._pending and not self._held and not self._dead \
                and not self.transport.is_closing():
            if len(self.pipeline) >= PIPELINE_DEPTH:
                self._held = True
                self.flow.pause_reading()     # stays paused until the bytes are parsed
                return
            data = self._pending
            size = FEED_BYTES
            if self._in_head:
                size = min(size, max(1, limits.max_header_bytes - self._head_bytes + 1))
            piece, self._pending = data[:size], data[size:]
            was_in_head, self._began = self._in_head, False
            try:
                # uvicorn sets its parser to None when the connection is lost, after the last feed
                self.parser.feed_data(piece)  # pyright: ignore[reportOptionalMemberAccess]
            except httptools.HttpParserCallbackError as e:
                if isinstance(e.__context__, _Refused):
                    self._refuse(e.__context__.response, e.__context__.reason)
                else:
                    self._refuse(_error(400, "Bad Request", "invalid HTTP request"),
                                 "bad_request")
                return
            except httptools.HttpParserUpgrade:
                # As uvicorn without a WebSocket library: the request (already dispatched) is
                # answered as plain HTTP and nothing after the upgrade point is parsed.
                self._pending = b""
                return
            except httptools.HttpParserError:
                self._refuse(_error(400, "Bad Request", "invalid HTTP request"), "bad_request")
                return
            if self._in_head:
                # A head that began inside this piece is not counted (its start within the
                # piece is unknown): the count can only be low, never refuse a valid head.
                if was_in_head and not self._began:
                    self._head_bytes += len(piece)
                if self._head_bytes > limits.max_header_bytes:
                    self._refuse(_too_large(limits), "header_too_large")
                    return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._began = True
        self._head_bytes = 0
        self._header_count = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.limits.header_timeout,
                                                    self._head_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        limits = self.guard.limits
        if self._header_count > limits.max_headers:
            raise _Refused(_error(431, "Request Header Fields Too Large",
                                  f"more than {limits.max_headers} header fields "
                                  f"(SERVEDMODEL_MAX_HEADERS)"), "too_many_headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.guard.waiting.pop(self, None)
        # Before uvicorn builds the request's cycle from this scope: the app can then drop a
        # queued request whose client has gone (`Batcher.submit`'s `gone`).
        # Our own extension holds a callable, where ASGI's typed scope expects a dict.
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[CLIENT_GONE] = self.transport.is_closing
        super().on_headers_complete()
        # A body follows unless the parser already finished the message (no body).
        self._last_body = self.loop.time()
        self.guard.reading.add(self)
        self.arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self._last_body = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.guard.reading.discard(self)
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._dead or self.transport.is_closing():
            return
        if not self.pipeline and (self.cycle is None or self.cycle.response_complete):
            self.guard.waiting[self] = None       # idle keep-alive: evictable
        if self._held and len(self.pipeline) < PIPELINE_DEPTH:
            self._held = False
            self.loop.call_soon(self._resume_feed)

    def _resume_feed(self) -> None:
        self._feed()
        if not self._pending and not self._dead and self.cycle is not None \
                and self.cycle.response_complete:
            self.flow.resume_reading()


def _too_large(limits: ConnectionLimits) -> bytes:
    return _error(431, "Request Header Fields Too Large",
                  f"the request head is over {limits.max_header_bytes} bytes "
                  f"(SERVEDMODEL_MAX_HEADER_BYTES)")


def protocol_factory(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """A protocol class bound to one server's guard (uvicorn instantiates it per connection)."""
    return type("BoundGuardedProtocol", (GuardedProtocol,), {"guard": guard})
