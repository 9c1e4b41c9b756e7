"""The gRPC front end's connection layer: HTTP/2 over cleartext TCP with prior knowledge (what
gRPC clients and Kubernetes gRPC probes speak), on the server's asyncio loop.

Why our own: a grpc.aio call costs the event loop ~0.45 ms (its completion queue hands each
call over, reads its message and sends its answer in separate hops between gRPC's threads and
the loop), so grpc.aio answered fewer calls than REST binary even with a handler that does
nothing (docs/protocol.md, "Throughput"). gRPC needs little of HTTP/2: a call is one HEADERS
block, DATA holding length-prefixed messages and a trailing HEADERS block with `grpc-status`.
This module does that part of RFC 9113 and the gRPC HTTP/2 mapping, with HPACK from `hpack`:

- framing, SETTINGS, PING, GOAWAY, RST_STREAM, WINDOW_UPDATE flow control both ways,
  CONTINUATION, padding, priority fields; unary and server-streaming calls;
- the limits of the REST connection layer in HTTP/2 terms: metadata size and count
  (`max_header_bytes`, `max_headers`), message size (`max_message_bytes`, RESOURCE_EXHAUSTED),
  request bytes held by all calls together (the REST body budget), concurrent calls per
  connection (SETTINGS_MAX_CONCURRENT_STREAMS, REFUSED_STREAM above it) and in all, the
  connection cap with a reserve for health checks, a preface/header timeout, a stalled
  request timeout, idle connections closed with GOAWAY, a client that does not read its
  answers cut off after the body timeout;
- a peer that breaks the protocol gets GOAWAY with the RFC's error code and the connection
  closes; nothing it sends can raise out of `data_received`.

It knows gRPC's framing and status codes, not the V2 protocol (`grpc_server.py`).
"""
from __future__ import annotations

import asyncio
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hpack import Decoder, HPACKError

from .connections import ConnectionLimits
from .errors import ServingError
from .settings import Settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)
# Settings.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, \
    S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = range(1, 7)

#: The largest frame payload we accept: the protocol's default, never raised.
MAX_FRAME = 16384
MAX_WINDOW = 2 ** 31 - 1
#: Bytes one call may send ahead of our reading (SETTINGS_INITIAL_WINDOW_SIZE).
STREAM_WINDOW = 1 << 20
#: Bytes all calls of a connection may send ahead of our reading.
CONNECTION_WINDOW = 1 << 24
#: Frames that produce nothing for a call (PING, SETTINGS, empty DATA, PRIORITY, RST of a
#: closed stream...) a connection may send in a row before it is cut off (flood protection).
MAX_IDLE_FRAMES = 10_000
#: Header blocks whose decoded lists a connection keeps (`GrpcConnection._decode`), and the
#: largest block kept: a client's repeated block is a few dozen bytes once its fields are
#: indexed; bigger ones are decoded each time, so a client cannot make each of its connections
#: hold much (8 x 256 bytes of block, each at most 256 fields).
DECODED_BLOCKS = 8
DECODED_BLOCK_BYTES = 256
#: Calls a client may reset within one TICK before it is cut off (the "rapid reset" flood).
MAX_RESETS_PER_TICK = 500
#: Seconds between a connection's checks of its timers (idle, header, stalled calls).
TICK = 0.25

_HEAD = struct.Struct(">IBI")    # length << 8 | type, flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")

# gRPC status codes (grpc/doc/statuscodes.md).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, \
    PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, \
    UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED = range(17)
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
#: The HTTP-like status of a ServingError -> gRPC status code, as Triton maps them.
STATUS_OF_HTTP = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 404: NOT_FOUND,
                  413: RESOURCE_EXHAUSTED, 415: INVALID_ARGUMENT, 503: UNAVAILABLE,
                  403: PERMISSION_DENIED}
#: grpc-message is cut to this many bytes (a client's header limit is 8 KiB by default).
MAX_STATUS_MESSAGE = 2048
RETRY = ((b"retry-after", b"1"),)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field, literal without indexing, new name, no Huffman (RFC 7541, 6.2.2): our
    answers never touch the client's dynamic table, so nothing of ours needs tracking."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


#: `:status: 200` (static index 8) and `content-type: application/grpc` (name index 31).
RESPONSE_HEAD = b"\x88\x0f\x10" + _hpack_int(16, 7, 0) + b"application/grpc"
_TRAILERS_OK = _literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, percent-encoding every byte outside printable ASCII, and '%'."""
    raw = message.encode("utf-8", "replace")[:MAX_STATUS_MESSAGE]
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in raw)


def status_block(code: int, message: str = "",
                 trailers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    if code == OK and not message and not trailers:
        return _TRAILERS_OK
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message))
    for name, value in trailers:
        block += _literal(name, value)
    return block


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (`1S`, `250m`, ...) in seconds; None when malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


@dataclass(frozen=True)
class GrpcLimits(ConnectionLimits):
    """The REST connection layer's limits (`keep_alive`: an idle connection's GOAWAY) and
    gRPC's own: the message size, `max_streams` concurrent calls a connection may make,
    `max_calls` in all. The defaults are the server settings' (stated there)."""
    max_message_bytes: int = Settings.max_body_bytes
    max_streams: int = 100
    max_calls: int = Settings.max_connections


class Budget:
    """What a call's request bytes are held against; the server's is `BodyBudget`."""

    def hold(self, n: int) -> None:   # raises ServingError when over
        pass

    def release(self) -> None:
        pass


Handler = Callable[["Call"], Awaitable[None]]


class Call:
    """One gRPC call (one HTTP/2 stream): what a handler reads, and how it answers."""

    __slots__ = ("conn", "sid", "method", "metadata", "message", "chunks", "size", "expected",
                 "budget", "task", "send_window", "pending", "head_sent", "status", "done",
                 "ended", "discard", "deadline", "arrival", "last_data", "recv_unacked",
                 "probe_only")

    def __init__(self, conn: "GrpcConnection", sid: int, method: str,
                 metadata: list[tuple[bytes, bytes]], budget: Budget) -> None:
        self.conn, self.sid, self.method, self.metadata = conn, sid, method, metadata
        self.message = b""
        self.chunks: list[bytes] = []
        self.size = 0
        self.expected = -1                 # the message's length, once its prefix is in
        self.budget = budget
        self.task: asyncio.Task | None = None
        self.send_window = conn.peer_initial_window
        self.pending: deque[bytes] = deque()
        self.head_sent = False
        self.status: bytes | None = None    # the trailers, once the handler has answered
        self.done = False                  # answered and everything written (or reset)
        self.ended = False                 # the client's half is complete (END_STREAM)
        self.discard = False               # answered early: later DATA is dropped
        self.deadline: float | None = None
        self.arrival: Callable[[], None] | None = None
        self.last_data = conn.loop.time()
        self.recv_unacked = 0
        self.probe_only = False

    # -- what handlers use --------------------------------------------------------------
    def header(self, name: bytes) -> bytes | None:
        for key, value in self.metadata:
            if key == name:
                return value
        return None

    def gone(self) -> bool:
        """Whether the client has gone away (reset the call or closed the connection)."""
        return self.done or self.conn.closed

    def arrived(self) -> None:
        """The request is decoded and queued (or refused): no longer on its way in."""
        if self.arrival is not None:
            self.arrival()
            self.arrival = None

    def send_message(self, payload: bytes) -> None:
        """Queue one response message (a streaming call may send several)."""
        if self.done or self.status is not None:
            return
        self.pending.append(b"\x00" + _U32.pack(len(payload)) + payload)
        self.conn.flush(self)

    def finish(self, code: int = OK, message: str = "",
               trailers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """End the call with its status (after any queued messages)."""
        if self.done or self.status is not None:
            return
        self.status = status_block(code, message, trailers)
        self.conn.flush(self)


class GrpcConnection(asyncio.Protocol):
    """One client connection. `front` holds what all connections share."""

    def __init__(self, front: "GrpcListener") -> None:
        self.front = front
        self.limits = front.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.settled = False              # the client's first SETTINGS has come
        self.decoder = Decoder(max_header_list_size=self._hard_header_limit())
        self.decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self.calls: dict[int, Call] = {}
        self.active = 0                   # calls whose stream or handler is not finished
        self.last_sid = 0
        self.block: bytearray | None = None   # a header block awaiting CONTINUATION
        self.block_sid = 0
        self.block_end = False
        self.send_window = 65535
        self.peer_initial_window = 65535
        self.peer_max_frame = MAX_FRAME
        self.recv_unacked = 0
        self.idle_frames = 0
        self.resets = 0
        self.closed = False
        self.going_away = False
        self.probe_only = False
        self.opened_at = self.last_active = self.loop.time()
        self.write_paused_at: float | None = None
        self.blocked: set[Call] = set()
        self.timer: asyncio.TimerHandle | None = None

    def _hard_header_limit(self) -> int:
        # Decoding must go on past the refusal limit (the HPACK table is shared by every
        # later call), up to this: beyond it the connection itself is closed.
        return max(4 * self.limits.max_header_bytes, 65536)

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        admission = self.front.admit(self)
        if admission == "refuse":
            self.closed = True
            transport.write(_frame(SETTINGS, 0, 0) + _frame(
                GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(REFUSED_STREAM) +
                b"the server is at its connection limit (SERVEDMODEL_MAX_CONNECTIONS)"))
            transport.close()
            return
        self.probe_only = admission == "probe"
        limits = self.limits
        settings = (_SETTING.pack(S_MAX_CONCURRENT_STREAMS, limits.max_streams)
                    + _SETTING.pack(S_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
                    + _SETTING.pack(S_MAX_HEADER_LIST_SIZE, limits.max_header_bytes))
        transport.write(_frame(SETTINGS, 0, 0, settings)
                        + _frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - 65535)))
        self.timer = self.loop.call_later(TICK, self._tick)

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.closed = True
        self.front.closed(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # A call whose handler still runs stays in `calls` until the handler ends: `_settle`
        # then gives back its budget and its arrival.
        for call in list(self.calls.values()):
            self._abandon(call)
        self.blocked.clear()

    def pause_writing(self) -> None:
        # The client does not read its answers: read nothing more from it until it does,
        # and cut it off after the body timeout (`_tick`).
        self.write_paused_at = self.loop.time()
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        if not self.closed:
            self.transport.resume_reading()

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        self.resets = 0
        now, limits = self.loop.time(), self.limits
        if not self.settled and now - self.opened_at > limits.header_timeout:
            self.front.count("header_timeout")
            return self._fail(PROTOCOL_ERROR, "no HTTP/2 preface and SETTINGS within "
                              f"{limits.header_timeout:g} s (SERVEDMODEL_HEADER_TIMEOUT_SECONDS)")
        if self.write_paused_at is not None and now - self.write_paused_at > limits.body_timeout:
            self.front.count("write_timeout")
            self.closed = True
            self.transport.abort()
            return
        if self.block is not None and now - self.last_active > limits.header_timeout:
            self.front.count("header_timeout")
            return self._fail(PROTOCOL_ERROR, "header block not completed")
        for call in list(self.calls.values()):
            if call.deadline is not None and now >= call.deadline and not call.done:
                self._expire(call)
            elif not call.ended and not call.discard and call.task is None \
                    and now - call.last_data > limits.body_timeout:
                self._refuse(call, DEADLINE_EXCEEDED,
                             f"no request bytes for {limits.body_timeout:g} s "
                             f"(SERVEDMODEL_BODY_TIMEOUT_SECONDS)", "body_timeout")
        if self.active == 0 and now - self.last_active > limits.keep_alive:
            self.goaway(NO_ERROR)
            self.closed = True
            self.transport.close()
            return
        self.timer = self.loop.call_later(TICK, self._tick)

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """Tell the client that no call after the last one seen will be served."""
        if not self.transport.is_closing():
            self.transport.write(_frame(GOAWAY, 0, 0, _U32.pack(self.last_sid)
                                        + _U32.pack(code) + debug))
        self.going_away = True

    def _fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with the code, then close."""
        self.front.count("protocol_error" if code != ENHANCE_YOUR_CALM else "flood")
        self.goaway(code, why.encode()[:256])
        self.closed = True
        for call in list(self.calls.values()):
            self._abandon(call)
        self.transport.close()

    # -- reading ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._receive(data)
        except HPACKError as e:
            self._fail(COMPRESSION_ERROR, f"header block: {type(e).__name__}")
        except Exception as e:      # a bug here must not take the server down
            print(f"serving: gRPC connection error: {e!r}", file=sys.stderr)
            self._fail(INTERNAL_ERROR, "internal error")

    def _receive(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        self.front.metrics.received_bytes += len(data)
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    return self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not buf.startswith(PREFACE):
                return self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buf[:len(PREFACE)]
            self.preface = True
        pos, end, out = 0, len(buf), []
        head = _HEAD.unpack_from
        while end - pos >= 9 and not self.closed:
            length_type, flags, sid = head(buf, pos)
            length, kind = length_type >> 8, length_type & 0xFF
            if length > MAX_FRAME:
                return self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes (max {MAX_FRAME})")
            if end - pos < 9 + length:
                break
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            sid &= 0x7FFFFFFF
            if not self.settled and kind != SETTINGS:
                return self._fail(PROTOCOL_ERROR, "the first frame must be SETTINGS")
            if self.block is not None and (kind != CONTINUATION or sid != self.block_sid):
                return self._fail(PROTOCOL_ERROR, "expected CONTINUATION")
            self.idle_frames += 1
            if kind == DATA:
                self._on_data(flags, sid, payload, out)
            elif kind == HEADERS:
                self._on_headers(flags, sid, payload, out)
            elif kind == CONTINUATION:
                self._on_continuation(flags, sid, payload, out)
            elif kind == SETTINGS:
                self._on_settings(flags, sid, payload, out)
            elif kind == PING:
                if sid or length != 8:
                    return self._fail(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "bad PING")
                if not flags & ACK:
                    out.append(_frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif kind == RST_STREAM:
                if not sid or length != 4:
                    return self._fail(PROTOCOL_ERROR if not sid else FRAME_SIZE_ERROR,
                                      "bad RST_STREAM")
                if sid > self.last_sid:
                    return self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
                call = self.calls.get(sid)
                if call is not None and not call.done:
                    self.resets += 1
                    if self.resets > MAX_RESETS_PER_TICK:
                        return self._fail(ENHANCE_YOUR_CALM, "too many calls reset")
                    self._abandon(call)
            elif kind == GOAWAY:
                self.going_away = True
                if self.active == 0:
                    self.closed = True
                    self.transport.close()
            elif kind == PRIORITY:
                if length != 5:
                    return self._fail(FRAME_SIZE_ERROR, "bad PRIORITY")
            elif kind == PUSH_PROMISE:
                return self._fail(PROTOCOL_ERROR, "a client may not push")
            # other frame types are ignored (RFC 9113, 4.1)
            if self.idle_frames > MAX_IDLE_FRAMES:
                return self._fail(ENHANCE_YOUR_CALM, "too many frames that do no work")
        del buf[:pos]
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_unacked)))
            self.recv_unacked = 0
        if out and not self.closed:
            self.transport.write(b"".join(out))

    def _on_settings(self, flags: int, sid: int, payload: bytes, out: list) -> None:
        if sid:
            return self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                return self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            return self._fail(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    return self._fail(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for call in self.calls.values():
                    call.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    return self._fail(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                return self._fail(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self.settled = True
        out.append(_frame(SETTINGS, ACK, 0))
        for call in list(self.blocked):
            self.flush(call)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            return self._fail(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                return self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                return self._fail(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            for call in list(self.blocked):
                self.flush(call)
            return
        call = self.calls.get(sid)
        if call is None:
            if sid > self.last_sid:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0 or call.send_window + increment > MAX_WINDOW:
            self._reset(call, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            return
        call.send_window += increment
        self.flush(call)

    def _strip_padding(self, flags: int, payload: bytes) -> bytes | None:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                self._fail(PROTOCOL_ERROR, "padding longer than the frame")
                return None
            payload = payload[1:len(payload) - payload[0]]
        return payload

    def _on_headers(self, flags: int, sid: int, payload: bytes, out: list) -> None:
        if sid == 0 or sid % 2 == 0:
            return self._fail(PROTOCOL_ERROR, "HEADERS on an invalid stream id")
        payload = self._strip_padding(flags, payload)
        if payload is None:
            return
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                return self._fail(FRAME_SIZE_ERROR, "HEADERS priority fields cut short")
            payload = payload[5:]
        self.block, self.block_sid, self.block_end = bytearray(payload), sid, bool(
            flags & END_STREAM)
        if flags & END_HEADERS:
            self._on_block(out)
        elif len(self.block) > self._hard_header_limit():
            self._fail(ENHANCE_YOUR_CALM, "header block too large")

    def _on_continuation(self, flags: int, sid: int, payload: bytes, out: list) -> None:
        if self.block is None:
            return self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        self.block += payload
        if flags & END_HEADERS:
            self._on_block(out)
        elif len(self.block) > self._hard_header_limit():
            self._fail(ENHANCE_YOUR_CALM, "header block too large")

    def _on_block(self, out: list) -> None:
        block, sid, end = bytes(self.block), self.block_sid, self.block_end
        self.block = None
        headers = self._decode(block)
        self.last_active = self.loop.time()
        if sid <= self.last_sid:
            call = self.calls.get(sid)
            if call is None:
                return self._fail(STREAM_CLOSED, "HEADERS on a closed stream")
            # Request trailers: gRPC clients send none, but they may end the stream.
            if not end:
                return self._fail(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_request(call)
            return
        self.last_sid = sid
        self.idle_frames = 0
        if self.going_away:
            out.append(_frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        if self.active >= self.limits.max_streams:
            self.front.count("stream_limit")
            out.append(_frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        method = path = ctype = None
        size, metadata = 0, []
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
            else:
                if name == b"content-type":
                    ctype = value
                metadata.append((name, value))
        call = Call(self, sid, (path or b"").decode("latin-1"), metadata,
                    self.front.budget())
        call.ended = end          # (a refusal below must not reset a stream the client closed)
        self.calls[sid] = call
        self.active += 1
        call.probe_only = self.probe_only
        limits = self.limits
        if method != b"POST" or path is None:
            return self._http_refuse(call, b"405", "a gRPC call is a POST with a :path")
        if ctype is None or not ctype.startswith(b"application/grpc"):
            return self._http_refuse(call, b"415", "content-type must be application/grpc")
        if size > limits.max_header_bytes:
            return self._refuse(call, RESOURCE_EXHAUSTED,
                                f"request metadata of {size} bytes is over the limit of "
                                f"{limits.max_header_bytes} bytes (SERVEDMODEL_MAX_HEADER_BYTES)",
                                "header_too_large")
        if len(metadata) > limits.max_headers:
            return self._refuse(call, RESOURCE_EXHAUSTED,
                                f"more than {limits.max_headers} metadata entries "
                                f"(SERVEDMODEL_MAX_HEADERS)", "too_many_headers")
        timeout = call.header(b"grpc-timeout")
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                return self._refuse(call, INTERNAL, "malformed grpc-timeout", "bad_request")
            call.deadline = self.loop.time() + seconds
        call.arrival = self.front.arriving(call)
        if end:
            self._end_request(call)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of a block. A client sends the same block for every call once
        its fields are in the dynamic table, and decoding is a third of a small call's cost
        in pure Python: a block that left the table as it was is kept, and its list reused
        until some block changes the table (which may change what the kept blocks mean)."""
        cached = self.decoded.get(block)
        if cached is not None:
            return cached
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        headers = self.decoder.decode(block, raw=True)     # always: the table is shared
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            if len(block) > DECODED_BLOCK_BYTES:
                return headers
            if len(self.decoded) >= DECODED_BLOCKS:
                self.decoded.clear()
            self.decoded[block] = headers
        elif self.decoded:
            self.decoded.clear()
        return headers

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list) -> None:
        size = len(payload)
        self.recv_unacked += size
        call = self.calls.get(sid)
        if call is None:
            if sid == 0 or sid > self.last_sid:
                return self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            return      # a call already answered or reset: only the connection window counts
        payload = self._strip_padding(flags, payload)
        if payload is None:
            return
        if call.ended:
            return self._fail(STREAM_CLOSED, "DATA after END_STREAM")
        if call.discard:
            return
        if payload:
            self.idle_frames = 0
            call.last_data = self.last_active = self.loop.time()
            try:
                call.budget.hold(len(payload))
            except ServingError as e:
                return self._refuse(call, STATUS_OF_HTTP.get(e.status, UNAVAILABLE), e.message,
                                    e.reason, RETRY if e.status == 503 else ())
            call.chunks.append(payload)
            call.size += len(payload)
            if call.expected < 0 and call.size >= 5:
                head = call.chunks[0] if len(call.chunks[0]) >= 5 else b"".join(call.chunks)
                call.expected = _U32.unpack_from(head, 1)[0]
                if head[0] not in (0, 1):
                    return self._refuse(call, INTERNAL, "bad gRPC message flag", "bad_request")
                if head[0] == 1:
                    return self._refuse(call, UNIMPLEMENTED, "compressed messages are not "
                                        "supported; send with grpc-encoding identity",
                                        "unsupported_media_type",
                                        ((b"grpc-accept-encoding", b"identity"),))
                limit = self.limits.max_message_bytes
                if call.expected > limit:
                    return self._refuse(call, RESOURCE_EXHAUSTED,
                                        f"received message larger than max ({call.expected} "
                                        f"vs. {limit} bytes, SERVEDMODEL_MAX_BODY_BYTES)",
                                        "body_too_large")
            if call.expected >= 0 and call.size > call.expected + 5:
                return self._refuse(call, UNIMPLEMENTED,
                                    "more than one request message in a unary call",
                                    "bad_request")
            call.recv_unacked += size
            if call.recv_unacked >= STREAM_WINDOW // 2 and not flags & END_STREAM:
                out.append(_frame(WINDOW_UPDATE, 0, sid, _U32.pack(call.recv_unacked)))
                call.recv_unacked = 0
        if flags & END_STREAM:
            self._end_request(call)

    def _end_request(self, call: Call) -> None:
        call.ended = True
        if call.discard or call.done or call.status is not None:
            return
        body = call.chunks[0] if len(call.chunks) == 1 else b"".join(call.chunks)
        call.chunks = []
        if len(body) < 5 or len(body) != call.expected + 5:
            return self._refuse(call, INTERNAL if body else UNIMPLEMENTED,
                                f"the request must hold one whole gRPC message (got "
                                f"{len(body)} bytes)" if body else "no request message",
                                "bad_request")
        call.message = body[5:]
        front = self.front
        handler = front.handlers.get(call.method)
        if handler is None:
            return self._refuse(call, UNIMPLEMENTED, f"unknown method {call.method[:128]!r}",
                                "not_found")
        if call.probe_only and call.method not in front.probe_methods:
            return self._refuse(call, UNAVAILABLE, "the server is at its connection limit "
                                "(SERVEDMODEL_MAX_CONNECTIONS); retry later", "connection_limit",
                                RETRY)
        if front.running >= self.limits.max_calls:
            return self._refuse(call, UNAVAILABLE, f"the server is at its limit of "
                                f"{self.limits.max_calls} concurrent calls "
                                f"(SERVEDMODEL_MAX_CONNECTIONS); retry later", "call_limit",
                                RETRY)
        front.running += 1
        call.task = self.loop.create_task(self._run(call, handler))

    async def _run(self, call: Call, handler: Handler) -> None:
        try:
            await handler(call)
        except asyncio.CancelledError:
            pass
        except Exception as e:      # a bug in a handler: INTERNAL, keep serving
            print(f"serving: internal error in gRPC {call.method}: {e!r}", file=sys.stderr)
            call.finish(INTERNAL, f"internal error: {type(e).__name__}")
        finally:
            call.task = None
            self.front.running -= 1
            if call.status is None and not call.done:
                call.finish(INTERNAL, "the handler gave no answer")
            self._settle(call)

    # -- writing ------------------------------------------------------------------------
    def flush(self, call: Call) -> None:
        """Write what the call has queued, as far as the flow-control windows allow."""
        if self.closed or call.done:
            return
        if self.transport.is_closing():
            self.closed = True
            return
        out = []
        if not call.head_sent:
            call.head_sent = True
            if not call.pending and call.status is not None:     # trailers-only
                out.append(_frame(HEADERS, END_HEADERS | END_STREAM, call.sid,
                                  RESPONSE_HEAD + call.status))
                self._write_done(call, out)
                return
            out.append(_frame(HEADERS, END_HEADERS, call.sid, RESPONSE_HEAD))
        pending = call.pending
        while pending:
            chunk = pending[0]
            n = min(len(chunk), call.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                self.blocked.add(call)
                break
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0], chunk = chunk[n:], chunk[:n]
            out.append(_frame(DATA, 0, call.sid, chunk))
            call.send_window -= n
            self.send_window -= n
        if not pending:
            self.blocked.discard(call)
            if call.status is not None:
                out.append(_frame(HEADERS, END_HEADERS | END_STREAM, call.sid, call.status))
                self._write_done(call, out)
                return
        if out:
            self.transport.write(b"".join(out))

    def _write_done(self, call: Call, out: list) -> None:
        if not call.ended:
            # Answered before the request was whole (refused): the client may stop sending.
            out.append(_frame(RST_STREAM, 0, call.sid, _U32.pack(NO_ERROR)))
            call.discard = True
        self.transport.write(b"".join(out))
        call.done = True
        self._settle(call)

    def _settle(self, call: Call) -> None:
        """Forget the call once it is answered (or reset) and its handler has ended."""
        if call.done and call.task is None and self.calls.get(call.sid) is call:
            del self.calls[call.sid]
            self.blocked.discard(call)
            call.arrived()
            call.budget.release()
            self.active -= 1
            self.last_active = self.loop.time()
            if self.going_away and self.active == 0 and not self.closed:
                self.closed = True
                self.transport.close()

    def _refuse(self, call: Call, code: int, message: str, reason: str,
                trailers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer a call before its handler runs (a limit or a malformed request); `reason`
        is its label in the failure counter."""
        call.arrived()
        self.front.refused(call, code, message, reason)     # counted before the client knows
        call.finish(code, message, trailers)

    def _http_refuse(self, call: Call, status: bytes, message: str) -> None:
        """Not a gRPC request at all: a plain HTTP answer (the gRPC spec's rule)."""
        block = b"\x08" + _hpack_int(len(status), 7, 0) + status + status_block(
            UNIMPLEMENTED, message)
        call.head_sent = True
        self._write_done(call, [_frame(HEADERS, END_HEADERS | END_STREAM, call.sid, block)])

    def _reset(self, call: Call, code: int) -> None:
        if not self.closed:
            self.transport.write(_frame(RST_STREAM, 0, call.sid, _U32.pack(code)))
        self._abandon(call)

    def _abandon(self, call: Call) -> None:
        """The client reset the call or left: stop its handler (it counts the call)."""
        call.discard = True
        call.pending.clear()
        if not call.done:
            call.done = True
            if call.task is not None:
                call.task.cancel()
        self._settle(call)

    def _expire(self, call: Call) -> None:
        """The call's grpc-timeout has passed: DEADLINE_EXCEEDED, and its handler stops (it
        counts the call); a call still receiving its message is refused here."""
        message = "deadline exceeded (grpc-timeout)"
        call.pending.clear()
        if call.task is None:
            self._refuse(call, DEADLINE_EXCEEDED, message, "deadline_exceeded")
        else:
            call.task.cancel()
            call.finish(DEADLINE_EXCEEDED, message)
        call.discard = True


@dataclass
class _Counters:
    """Stands in for the server's `Metrics` where a listener is used without one."""
    received_bytes: int = 0
    connection_errors: dict = field(default_factory=dict)


class GrpcListener:
    """What the connections of one gRPC listener share: limits, handlers (by method path),
    counters, and the hooks of the service behind it:

    - `budget()`: what one call's request bytes are held against (the REST body budget);
    - `arriving(call)`: called when a call's headers are in; may return a function that the
      layer calls once the call's message is decoded or refused (the batch window);
    - `refused(call, code, message, reason)`: a call this layer answered itself;
    - `probe_methods`: what a connection from the reserve over the cap may call.
    """

    def __init__(self, limits: GrpcLimits, handlers: dict[str, Handler], *,
                 metrics=None, budget: Callable[[], Budget] = Budget,
                 arriving: Callable[[Call], Callable[[], None] | None] = lambda call: None,
                 refused: Callable[[Call, int, str, str], None] = lambda *args: None,
                 probe_methods: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        self.handlers = handlers
        self.metrics = metrics if metrics is not None else _Counters()
        self.budget = budget
        self.arriving = arriving
        self.refused = refused
        self.probe_methods = probe_methods
        self.connections: set[GrpcConnection] = set()
        self.running = 0                  # handlers running, all connections together
        self.server: asyncio.AbstractServer | None = None

    def count(self, reason: str) -> None:
        errors = self.metrics.connection_errors
        errors[f"grpc_{reason}"] = errors.get(f"grpc_{reason}", 0) + 1

    def admit(self, conn: GrpcConnection) -> str:
        """'normal', 'probe' (the reserve: `probe_methods` only) or 'refuse'."""
        cap = self.limits.max_connections
        if len(self.connections) < cap:
            verdict = "normal"
        elif len(self.connections) < cap + self.limits.probe_connections:
            verdict = "probe"
        else:
            self.count("connection_limit")
            return "refuse"
        self.connections.add(conn)
        return verdict

    def closed(self, conn: GrpcConnection) -> None:
        self.connections.discard(conn)

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (`port` 0 picks one)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: GrpcConnection(self), host, port,
                                               reuse_address=True, backlog=2048)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop listening, tell every client (GOAWAY), give running calls `grace` seconds."""
        loop = asyncio.get_running_loop()
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if not conn.closed:
                conn.goaway(NO_ERROR)
                if conn.active == 0:
                    conn.closed = True
                    conn.transport.close()
        deadline = loop.time() + grace
        while any(c.active for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.closed = True
            conn.transport.abort()
