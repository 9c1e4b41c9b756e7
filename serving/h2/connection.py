"""One HTTP/2 connection of the gRPC front end: reading frames (bounded work per turn of the
event loop), the stream table (`streams.TABLE`) applied to each, flow control both ways,
the connection's limits and timers, the budgets that end a flood, and writing answers.

Every resource a peer can make us hold is charged when taken and given back by whatever ends
it: a call's request bytes are held against the budget as they are allocated (a bytearray's
size, not the payload's), its handler's call slot is taken when the task is created and given
back by the task's done-callback (which runs whether the task finished, failed, or was
cancelled before it ever started), and the call is forgotten (`_settle`) only once its stream
is closed and its handler has ended.

Budgets (`ConnectionLimits` and the constants below) end a connection with GOAWAY
ENHANCE_YOUR_CALM when spent:

- resets: every stream closed before its answer was complete that cost us work the peer did
  not wait for: ours after a malformed request, a window of 0, a flow-control error, a
  refused stream ("MadeYouReset"), and the peer's RST_STREAM of a call whose handler had not
  started ("rapid reset"), against a bucket of `RESET_BURST` refilled by `RESET_RATE` a second
  and by every answered call. The peer's reset of a call whose handler runs is a cancellation,
  not counted: its call slot stays taken until the handler has ended, so cancelling cannot
  raise the handlers a connection runs above `max_streams` (the rule Go's and grpc-go's
  servers adopted against CVE-2023-44487), and an honest client that cancels a batch of
  futures (grpcio: ~1,000 resets of running calls in a second) keeps its connection;
- frames that do no work (PING, SETTINGS, PRIORITY, WINDOW_UPDATE that unblocks nothing, empty
  DATA or CONTINUATION, frames on closed streams, unknown types...), against a bucket of
  `IDLE_FRAME_BURST` refilled by `IDLE_FRAME_RATE` a second and by one for each frame that does
  work; a frame that does work never empties the count, so slipping one in between does not
  help a flood.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

from ..errors import ServingError
from . import streams as st
from .call import NO_SLOT, STREAMING_SLOT, UNARY_SLOT, BudgetLike, Call, Handler
from .flow import ReceiveWindow, SendWindow
from .frames import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEAD,
    HEADERS,
    INTERNAL_ERROR,
    MAX_FRAME,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    SETTINGS_ACK,
    WINDOW_UPDATE,
    H2Error,
    check_goaway,
    check_priority,
    connection_error,
    frame,
    frame_head,
    goaway,
    header_fragment,
    parse_settings,
    rst_code,
    rst_stream,
    settings,
    strip_padding,
    window_increment,
    window_update,
)
from .grpc import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    RESOURCE_EXHAUSTED,
    RESPONSE_HEAD,
    RETRY,
    STATUS_OF_HTTP,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    http_head,
    parse_timeout,
    read_prefix,
    status_block,
)
from .headers import HeaderBlocks, Malformed
from .limits import GrpcLimits

#: Bytes one call may send ahead of our reading (SETTINGS_INITIAL_WINDOW_SIZE).
STREAM_WINDOW = 1 << 20
#: Bytes all calls of a connection may send ahead of our reading.
CONNECTION_WINDOW = 1 << 24
#: Work one connection does in one turn of the event loop before it lets the others run:
#: frames, and frame bytes (a header block of up to the header limit counts as its size).
TURN_FRAMES = 256
TURN_BYTES = 64 * 1024
#: The reset budget (module docstring).
RESET_BURST = 200
RESET_RATE = 100.0
#: The budget of frames that do no work (module docstring).
IDLE_FRAME_BURST = 1000
IDLE_FRAME_RATE = 100.0
#: Entries of a SETTINGS frame that cost as much as one frame that does no work.
SETTINGS_PER_IDLE_FRAME = 16
#: Closed streams whose way of closing is remembered (what RFC 9113 allows after it differs).
CLOSED_MEMORY = 256
#: Seconds between a connection's checks of its timers.
TICK = 0.25
_TABLE_GET = st.TABLE.get
_RESPONSE_HEAD_LENGTH = len(RESPONSE_HEAD) << 8


class Front(Protocol):
    """What a connection needs from what all connections share (`listener.GrpcListener`, which
    documents each member). Named here, not imported: the listener imports this module, and
    imports go one way."""

    limits: GrpcLimits
    handlers: dict[str, Handler]
    probe_methods: frozenset[str]
    streaming_methods: frozenset[str]
    metrics: Any
    running: int
    streaming: int
    budget: Callable[[], BudgetLike]
    authorize: Callable[[Call], None]
    arriving: Callable[[Call], Callable[[], None] | None]
    refused: Callable[[Call, int, str, str], None]

    def count(self, reason: str) -> None: ...

    def protocol_error(self, kind: str, code: int) -> None: ...

    def admit(self, conn: GrpcConnection) -> str: ...

    def busy(self, conn: GrpcConnection) -> None: ...

    def idle(self, conn: GrpcConnection) -> None: ...

    def closed(self, conn: GrpcConnection) -> None: ...


class GrpcConnection(asyncio.Protocol):
    """One client connection. `front` holds what all connections share."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.limits = limits = front.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport     # set by connection_made, before anything reads it
        self.inbuf = b""                  # received bytes not yet processed
        self.preface = False
        self.settled = False              # the client's first SETTINGS has come
        self.blocks = HeaderBlocks(max_fields=4 * limits.max_headers + 8,
                                   max_decoded_bytes=2 * limits.max_header_bytes)
        self.max_block_bytes = limits.max_header_bytes + 4096
        self.calls: dict[int, Call] = {}  # streams not yet forgotten (live, or a handler runs)
        self.closed_streams: dict[int, int] = {}   # sid -> closed state, oldest first
        self.open_streams = 0             # streams open or half-closed (RFC 9113, 5.1.2)
        self.active = 0                   # calls not yet forgotten
        self.last_sid = 0
        self.block: bytearray | None = None   # a field block awaiting CONTINUATION
        self.block_sid = 0
        self.block_end = False
        self.block_depends = -1           # the block's HEADERS priority dependency, if any
        self.block_started = 0.0
        self.send_window = SendWindow(65535)
        self.recv_window = ReceiveWindow(CONNECTION_WINDOW)
        self.peer_initial_window = 65535
        self.peer_max_frame = MAX_FRAME
        self.idle_frames_left = float(IDLE_FRAME_BURST)
        self.resets_left = float(RESET_BURST)
        self.refilled_at = 0.0
        self.closed = False
        self.going_away = False
        self.probe_only = False
        self.opened_at = self.last_active = self.loop.time()
        self.write_paused_at: float | None = None
        self.turn_pending = False         # a `_turn` is scheduled: reading is paused for it
        self.processing = False
        self.out: list[bytes | memoryview] = []
        self.ready: list[Call] = []       # requests complete this turn: handlers to start
        self.blocked: dict[Call, None] = {}
        self.timer: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # a stream's
        admission = self.front.admit(self)
        if admission == "refuse":
            self.closed = True
            transport.write(settings() + goaway(0, REFUSED_STREAM, b"the server is at its "
                                                b"connection limit (SERVEDMODEL_MAX_CONNECTIONS)"))
            transport.close()
            return
        self.probe_only = admission == "probe"
        limits = self.limits
        transport.write(settings((S_MAX_CONCURRENT_STREAMS, limits.max_streams),
                                 (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                                 (S_MAX_HEADER_LIST_SIZE, limits.max_header_bytes))
                        + window_update(0, CONNECTION_WINDOW - 65535))
        self.refilled_at = self.opened_at
        self.timer = self.loop.call_later(TICK, self._tick)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.front.closed(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # A call whose handler still runs stays in `calls` until the handler's done-callback
        # (`handler_done`): it gives back its slot, then `_settle` its bytes and arrival.
        for call in list(self.calls.values()):
            self._abandon(call, st.RESET_BY_PEER)
        self.blocked.clear()
        self.ready.clear()
        self.out.clear()
        self.inbuf = b""

    def pause_writing(self) -> None:
        # The client does not read its answers: read nothing more from it until it does,
        # and cut it off after the body timeout (`_tick`).
        self.write_paused_at = self.loop.time()
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        if not self.closed and not self.turn_pending:
            self.transport.resume_reading()

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """Tell the client that no call after the last one seen will be served."""
        if not self.transport.is_closing():
            self.out.append(goaway(self.last_sid, code, debug))
            self._send()
        self.going_away = True

    def _fail(self, error: H2Error) -> None:
        """A connection error: GOAWAY with its code, then close."""
        self.front.protocol_error(error.kind, error.code)
        if error.code == ENHANCE_YOUR_CALM:
            self.front.count("flood")
        elif error.kind != "header_timeout":       # (counted as such by `_tick`)
            self.front.count("protocol_error")
        self.processing = False
        self.goaway(error.code, error.why.encode()[:256])
        self.closed = True
        for call in list(self.calls.values()):
            self._abandon(call, st.RESET_BY_US)
        self.transport.close()

    def _close_if_done(self) -> None:
        if self.going_away and self.active == 0 and not self.closed:
            self.closed = True
            self._send()
            self.transport.close()

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        try:
            self._check_timers()
        except H2Error as e:
            self._fail(e)
            return
        if not self.closed:
            self.timer = self.loop.call_later(TICK, self._tick)

    def _check_timers(self) -> None:
        now, limits = self.loop.time(), self.limits
        if not self.settled and now - self.opened_at > limits.header_timeout:
            self.front.count("header_timeout")
            raise connection_error(
                PROTOCOL_ERROR, "no HTTP/2 preface and SETTINGS within "
                f"{limits.header_timeout:g} s (SERVEDMODEL_HEADER_TIMEOUT_SECONDS)",
                "header_timeout")
        if self.write_paused_at is not None and now - self.write_paused_at > limits.body_timeout:
            self.front.count("write_timeout")
            self.closed = True
            self.transport.abort()
            return
        if self.block is not None and now - self.block_started > limits.header_timeout:
            self.front.count("header_timeout")
            raise connection_error(PROTOCOL_ERROR, "header block not completed",
                                   "header_timeout")
        for call in list(self.calls.values()):
            if call.done:
                continue
            receiving = call.state == st.OPEN and call.status is None
            if call.deadline is not None and now >= call.deadline:
                self._expire(call)
            elif receiving and now - call.last_data > limits.body_timeout:
                self._refuse(call, DEADLINE_EXCEEDED, f"no request bytes for "
                             f"{limits.body_timeout:g} s (SERVEDMODEL_BODY_TIMEOUT_SECONDS)",
                             "body_timeout")
            elif receiving and now - call.opened_at > limits.request_timeout:
                self._refuse(call, DEADLINE_EXCEEDED, f"the request was not whole within "
                             f"{limits.request_timeout:g} s "
                             f"(SERVEDMODEL_REQUEST_TIMEOUT_SECONDS)", "request_timeout")
            elif call.blocked_since is not None and \
                    now - call.blocked_since > limits.body_timeout:
                # The client's window has held the answer back for the body timeout.
                self.front.count("write_timeout")
                self.front.protocol_error("blocked_answer", CANCEL)
                self._reset(call, CANCEL)
        self._send()
        if self.active == 0 and now - self.last_active > limits.keep_alive:
            self.goaway(NO_ERROR)
            self.closed = True
            self.transport.close()

    # -- budgets --------------------------------------------------------------------------
    def _refill(self) -> None:
        now = self.loop.time()
        elapsed, self.refilled_at = now - self.refilled_at, now
        self.idle_frames_left = min(IDLE_FRAME_BURST,
                                    self.idle_frames_left + elapsed * IDLE_FRAME_RATE)
        self.resets_left = min(RESET_BURST, self.resets_left + elapsed * RESET_RATE)

    def _idle(self, cost: int = 1) -> None:
        """A frame that does no work."""
        self.idle_frames_left -= cost
        if self.idle_frames_left < 0:
            self._refill()
            if self.idle_frames_left < 0:
                raise connection_error(ENHANCE_YOUR_CALM, "too many frames that do no work",
                                       "frame_flood")

    def _worked(self) -> None:
        if self.idle_frames_left < IDLE_FRAME_BURST:
            self.idle_frames_left += 1

    def _count_reset(self) -> None:
        """A stream closed before its answer was complete, whichever side reset it."""
        self.resets_left -= 1
        if self.resets_left < 0:
            self._refill()
            if self.resets_left < 0:
                raise connection_error(ENHANCE_YOUR_CALM, "too many streams reset",
                                       "reset_flood")

    # -- reading ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.front.metrics.received_bytes += len(data)
        self.inbuf = self.inbuf + data if self.inbuf else data
        if not self.turn_pending:
            self._turn()

    def _turn(self) -> None:
        """Process up to a turn's work of what was received; the rest waits for the next
        turn of the loop, with reading paused meanwhile."""
        if self.closed:
            return
        try:
            more = self._process()
        except H2Error as e:        # a connection error
            return self._fail(e)
        except Exception as e:      # a bug here must not take the server down
            print(f"serving: gRPC connection error: {e!r}", file=sys.stderr)
            return self._fail(connection_error(INTERNAL_ERROR, "internal error", "internal"))
        finally:
            self.processing = False
        if self.closed:
            return
        if not more:
            # Handlers start once all that was read is processed: a call opened and reset
            # within one read (however many turns it takes) never starts one.
            self._start_ready()
        self._send()
        if more:
            if not self.turn_pending:
                self.turn_pending = True
                self.transport.pause_reading()
            self.loop.call_soon(self._turn)
        elif self.turn_pending:
            self.turn_pending = False
            if self.write_paused_at is None:
                self.transport.resume_reading()

    def _process(self) -> bool:
        """Handle whole frames of `inbuf`; True when some are left for the next turn."""
        self.processing = True
        data = self.inbuf
        if not self.preface:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise connection_error(PROTOCOL_ERROR, "not an HTTP/2 connection preface",
                                           "preface")
                return False
            if not data.startswith(PREFACE):
                raise connection_error(PROTOCOL_ERROR, "not an HTTP/2 connection preface",
                                       "preface")
            self.preface = True
            data = data[len(PREFACE):]
        pos, end, frames = 0, len(data), 0
        unpack = HEAD.unpack_from
        try:
            while end - pos >= FRAME_HEAD:
                length_type, flags, sid = unpack(data, pos)
                length = length_type >> 8
                if length > MAX_FRAME:
                    raise connection_error(FRAME_SIZE_ERROR, f"frame of {length} bytes (max "
                                           f"{MAX_FRAME})", "frame_size")
                if end - pos - FRAME_HEAD < length:
                    break
                kind = length_type & 0xFF
                payload = data[pos + FRAME_HEAD:pos + FRAME_HEAD + length]
                pos += FRAME_HEAD + length
                sid &= 0x7FFFFFFF
                try:
                    self._on_frame(kind, flags, sid, payload)
                except H2Error as e:
                    if not e.stream:
                        raise
                    self._stream_error(e)
                if self.closed:
                    return False
                frames += 1
                if frames >= TURN_FRAMES or pos >= TURN_BYTES:
                    return end - pos >= FRAME_HEAD
            return False
        finally:
            self.inbuf = data[pos:] if pos < end else b""

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block is not None:
            if kind != CONTINUATION or sid != self.block_sid:
                raise connection_error(PROTOCOL_ERROR, "a field block must go on in "
                                       "CONTINUATION frames of its stream",
                                       "continuation_expected")
            return self._on_continuation(flags, payload)
        if not self.settled and kind != SETTINGS:
            raise connection_error(PROTOCOL_ERROR, "the first frame must be SETTINGS",
                                   "settings_first")
        if kind == DATA:
            self._on_data(flags, sid, payload)
        elif kind == HEADERS:
            self._on_headers(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif kind == PING:
            if sid:
                raise connection_error(PROTOCOL_ERROR, "PING on a stream", "bad_stream_id")
            if len(payload) != 8:
                raise connection_error(FRAME_SIZE_ERROR, "PING of other than 8 octets",
                                       "frame_size")
            self._idle()
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif kind == PRIORITY:
            check_priority(sid, payload)
            self._idle()
        elif kind == GOAWAY:
            check_goaway(sid, payload)
            self._idle()
            self.going_away = True
            self._close_if_done()
        elif kind == CONTINUATION:
            raise connection_error(PROTOCOL_ERROR, "CONTINUATION without HEADERS",
                                   "continuation_unexpected")
        elif kind == PUSH_PROMISE:
            raise connection_error(PROTOCOL_ERROR, "a client may not push", "push_promise")
        else:
            self._idle()            # other frame types are ignored (RFC 9113, 4.1)

    def _state_of(self, sid: int) -> tuple[int, Call | None]:
        call = self.calls.get(sid)
        if call is not None:
            return call.state, call
        if sid > self.last_sid or not sid & 1:
            return st.IDLE, None     # (we open no stream: every even one is idle)
        return self.closed_streams.get(sid, st.FORGOTTEN), None

    def _transition(self, sid: int, event: int) -> tuple[str, Call | None]:
        """The table's action for `event` on stream `sid` (its state moved on); an H2Error
        where the table has none."""
        call = self.calls.get(sid)
        if call is not None:
            state = call.state
        else:
            state = self._state_of(sid)[0]
        entry = _TABLE_GET((state, event))
        if entry is None:
            on_stream, code, why = st.error_for(state, event)
            raise H2Error(code, f"{st.EVENT_NAMES[event]}: {why}", "stream_state",
                          sid if on_stream else 0)
        action, after = entry
        if after != state:
            self._move(sid, call, state, after)
        return action, call

    def _move(self, sid: int, call: Call | None, state: int, after: int) -> None:
        if call is None:
            if after >= st.CLOSED:
                self._remember(sid, after)
            return
        was_live = state in (st.OPEN, st.HALF_CLOSED_REMOTE)
        call.state = after
        if was_live and after >= st.CLOSED:
            self.open_streams -= 1

    def _remember(self, sid: int, state: int) -> None:
        closed = self.closed_streams
        closed[sid] = state
        if len(closed) > 2 * CLOSED_MEMORY:        # keep the newest (amortized O(1))
            self.closed_streams = dict(list(closed.items())[-CLOSED_MEMORY:])

    def _stream_error(self, error: H2Error) -> None:
        """Reset the stream the error names (RFC 9113, 5.4.2)."""
        self.front.protocol_error(error.kind, error.code)
        call = self.calls.get(error.stream)
        if call is not None and call.state in (st.OPEN, st.HALF_CLOSED_REMOTE):
            self._reset(call, error.code)
            return
        self._idle()            # a reset of a closed stream costs us a write, not a stream
        self.out.append(rst_stream(error.stream, error.code))

    # -- DATA -----------------------------------------------------------------------------
    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise connection_error(PROTOCOL_ERROR, "DATA on stream 0", "bad_stream_id")
        size = len(payload)
        window = self.recv_window
        window.consume(size)
        increment = window.release(size)    # the bytes are held against the budget instead
        if increment:
            self.out.append(window_update(0, increment))
        data = strip_padding(flags, payload) if flags & PADDED else payload
        end = flags & END_STREAM
        action, call = self._transition(sid, st.RECV_DATA_END if end else st.RECV_DATA)
        if action is st.DISCARD:
            return self._idle()
        assert call is not None                 # every other action is on a live call
        call.recv_window.consume(size)
        received = call.received = call.received + len(data)
        if call.content_length >= 0 and (call.content_length < received or (
                end and call.content_length != received)):
            raise H2Error(PROTOCOL_ERROR, "DATA does not add up to content-length",
                          "content_length", sid)
        if data:
            if self.idle_frames_left < IDLE_FRAME_BURST:
                self.idle_frames_left += 1
            call.last_data = self.last_active = self.loop.time()
            if call.http_status is None and call.status is None:
                self._take(call, data)
                if call.done or call.status is not None:
                    return
        elif not end:
            self._idle()
        if end:
            self._request_complete(call)
        elif call.status is None:
            increment = call.recv_window.release(size)
            if increment:
                self.out.append(window_update(sid, increment))

    def _take(self, call: Call, data: bytes) -> None:
        """Keep a call's request bytes, held against the budget as allocated."""
        body = call.body
        if body is None:
            body = data
        elif type(body) is bytes:
            body = bytearray(body)
            body += data
        else:
            body += data
        call.body = body
        allocated = sys.getsizeof(body)
        try:
            call.budget.hold(allocated - call.charged)
        except ServingError as e:
            call.body = None
            return self._refuse(call, STATUS_OF_HTTP.get(e.status, UNAVAILABLE), e.message,
                                e.reason, RETRY if e.status == 503 else ())
        call.charged = allocated
        if call.expected < 0 and len(body) >= 5:
            flag, call.expected = read_prefix(body)
            if flag not in (0, 1):
                return self._refuse(call, INTERNAL, "bad gRPC message flag", "bad_request")
            if flag == 1:
                return self._refuse(call, UNIMPLEMENTED, "compressed messages are not "
                                    "supported; send with grpc-encoding identity",
                                    "unsupported_media_type",
                                    ((b"grpc-accept-encoding", b"identity"),))
            # The stream is granted what the message needs, no more: a peer that sends past
            # it has overrun its window (FLOW_CONTROL_ERROR).
            call.recv_window.limit = max(call.recv_window.granted, call.expected + 5)
            limit = self.limits.max_message_bytes
            if call.expected > limit:
                return self._refuse(call, RESOURCE_EXHAUSTED,
                                    f"received message larger than max ({call.expected} "
                                    f"vs. {limit} bytes, SERVEDMODEL_MAX_BODY_BYTES)",
                                    "body_too_large")
        if call.expected >= 0 and len(body) > call.expected + 5:
            return self._refuse(call, UNIMPLEMENTED,
                                "more than one request message in a unary call",
                                "bad_request")

    def _request_complete(self, call: Call) -> None:
        """The client's half is whole (END_STREAM): check it, then start its handler once
        the read is processed (a call reset within the same read never starts one)."""
        if call.done or call.status is not None:
            return
        if call.http_status is not None:
            return self._answer_http(call)
        body = call.body or b""
        if len(body) < 5 or len(body) != call.expected + 5:
            return self._refuse(call, INTERNAL if body else UNIMPLEMENTED,
                                f"the request must hold one whole gRPC message (got "
                                f"{len(body)} bytes)" if body else "no request message",
                                "bad_request")
        call.message = body[5:] if type(body) is bytes else bytes(memoryview(body)[5:])
        self.ready.append(call)

    # -- HEADERS and CONTINUATION ---------------------------------------------------------
    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise connection_error(PROTOCOL_ERROR, "HEADERS on stream 0", "bad_stream_id")
        fragment, self.block_depends = header_fragment(flags, payload)
        self.block_sid, self.block_end = sid, flags & END_STREAM
        if flags & END_HEADERS:
            return self._on_block(fragment)
        self.block = held = bytearray(fragment)
        self.block_started = self.loop.time()
        self._check_block_size(held)

    def _on_continuation(self, flags: int, payload: bytes) -> None:
        held = self.block
        assert held is not None                 # read only while a block awaits it
        if not payload and not flags & END_HEADERS:
            self._idle()
        held += payload
        if flags & END_HEADERS:
            block, self.block = bytes(held), None
            return self._on_block(block)
        self._check_block_size(held)

    def _check_block_size(self, block: bytearray) -> None:
        if len(block) > self.max_block_bytes:
            raise connection_error(ENHANCE_YOUR_CALM, f"field block over "
                                   f"{self.max_block_bytes} bytes", "header_block_too_large")

    def _on_block(self, block: bytes) -> None:
        if len(block) > self.max_block_bytes:
            raise connection_error(ENHANCE_YOUR_CALM, f"field block over "
                                   f"{self.max_block_bytes} bytes", "header_block_too_large")
        sid, end = self.block_sid, self.block_end
        state, call = self._state_of(sid)
        event = st.RECV_HEADERS_END if end else st.RECV_HEADERS
        entry = st.TABLE.get((state, event))
        if entry is None:
            on_stream, code, why = st.error_for(state, event)
            if on_stream:
                self.blocks.decode(block)     # the dynamic table is the connection's
            raise H2Error(code, why, "stream_state", sid if on_stream else 0)
        if self.block_depends == sid:
            # (RFC 9113, 5.3.1 names a stream error; as python-hyper h2, the connection's:
            # a stream that never opened cannot be reset)
            raise connection_error(PROTOCOL_ERROR, "a stream cannot depend on itself",
                                   "self_dependency")
        action = entry[0]
        if action is st.DISCARD:
            self.blocks.decode(block)
            return self._idle()
        if action is st.TRAILERS:
            assert call is not None             # trailers end a live call
            try:
                self.blocks.trailers(block)
            except Malformed as e:
                raise H2Error(PROTOCOL_ERROR, str(e), "malformed_headers", sid) from None
            if 0 <= call.content_length != call.received:
                raise H2Error(PROTOCOL_ERROR, "DATA does not add up to content-length",
                              "content_length", sid)
            self._move(sid, call, state, entry[1])
            return self._request_complete(call)
        self._open(sid, block, end)

    def _open(self, sid: int, block: bytes, end: int) -> None:
        """A new stream (RFC 9113, 5.1.1: odd, higher than any before)."""
        if not sid & 1:
            raise connection_error(PROTOCOL_ERROR, "HEADERS on an even stream id",
                                   "bad_stream_id")
        self.last_sid = sid
        try:
            head = self.blocks.request(block)
        except Malformed:      # a stream error (RFC 9113, 8.1.1) on a stream never opened
            self.front.protocol_error("malformed_headers", PROTOCOL_ERROR)
            self._remember(sid, st.RESET_BY_US)
            self.out.append(rst_stream(sid, PROTOCOL_ERROR))
            self._count_reset()
            return
        self.last_active = self.loop.time()
        if self.going_away or self.open_streams >= self.limits.max_streams:
            if not self.going_away:
                self.front.count("stream_limit")
            self._count_reset()
            self._remember(sid, st.RESET_BY_US)
            self.out.append(rst_stream(sid, REFUSED_STREAM))
            return
        self._worked()
        now = self.last_active
        call = Call(self, sid, head, st.HALF_CLOSED_REMOTE if end else st.OPEN,
                    self.front.budget(), self.peer_initial_window, STREAM_WINDOW, now)
        self.calls[sid] = call
        self.open_streams += 1
        if self.active == 0:
            self.front.busy(self)
        self.active += 1
        call.probe_only = self.probe_only
        if not head.is_grpc:
            call.http_status = b"405" if head.method != b"POST" else b"415"
            if end:
                self._answer_http(call)
            return
        limits = self.limits
        if head.size > limits.max_header_bytes:
            return self._refuse(call, RESOURCE_EXHAUSTED,
                                f"request metadata of {head.size} bytes is over the limit of "
                                f"{limits.max_header_bytes} bytes (SERVEDMODEL_MAX_HEADER_BYTES)",
                                "header_too_large")
        if len(head.metadata) > limits.max_headers:
            return self._refuse(call, RESOURCE_EXHAUSTED,
                                f"more than {limits.max_headers} metadata entries "
                                f"(SERVEDMODEL_MAX_HEADERS)", "too_many_headers")
        timeout = call.header(b"grpc-timeout")
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                return self._refuse(call, INTERNAL, "malformed grpc-timeout", "bad_request")
            call.deadline = now + seconds
        front = self.front
        try:
            front.authorize(call)           # before any of the request's bytes are kept
        except ServingError as e:
            return self._refuse(call, STATUS_OF_HTTP.get(e.status, UNAUTHENTICATED),
                                e.message, e.reason)
        if call.method not in front.handlers:
            return self._refuse(call, UNIMPLEMENTED, f"unknown method {call.method[:128]!r}",
                                "not_found")
        if call.probe_only and call.method not in front.probe_methods:
            return self._refuse(call, UNAVAILABLE, "the server is at its connection limit "
                                "(SERVEDMODEL_MAX_CONNECTIONS); retry later", "connection_limit",
                                RETRY)
        call.arrival = front.arriving(call)
        if end:
            self._request_complete(call)

    # -- control frames -------------------------------------------------------------------
    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        values = parse_settings(flags, sid, payload)
        if values is None:          # an ACK
            return self._idle()
        if self.settled:        # (the entries, not the distinct ones: each is parsed)
            self._idle(1 + len(payload) // 6 // SETTINGS_PER_IDLE_FRAME)
        window = values.get(S_INITIAL_WINDOW_SIZE)
        if window is not None and window != self.peer_initial_window:
            delta, self.peer_initial_window = window - self.peer_initial_window, window
            for call in self.calls.values():
                if call.state in (st.OPEN, st.HALF_CLOSED_REMOTE):
                    call.send_window.shift(delta, call.sid)
        size = values.get(S_MAX_FRAME_SIZE)
        if size is not None:
            self.peer_max_frame = size
        self.settled = True
        self.out.append(SETTINGS_ACK)
        self._flush_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        increment = window_increment(payload)
        if sid == 0:
            if increment == 0:
                raise connection_error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0", "window_update_0")
            self.send_window.grow(increment, 0)
            if self.blocked:
                return self._flush_blocked()
            return self._idle()
        action, call = self._transition(sid, st.RECV_WINDOW_UPDATE)
        if increment == 0:          # (malformed whatever the stream's state, but idle)
            raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0", "window_update_0", sid)
        if action is not st.WINDOW:
            return self._idle()
        assert call is not None                 # WINDOW is a live call's
        call.send_window.grow(increment, sid)
        if call in self.blocked:
            self.flush(call)
        else:
            self._idle()

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        rst_code(sid, payload)
        action, call = self._transition(sid, st.RECV_RST)
        if action is not st.PEER_RESET:
            return self._idle()
        assert call is not None                 # PEER_RESET is a live call's
        if not call.done and call.task is None:
            self._count_reset()
        self._abandon(call, st.RESET_BY_PEER)

    # -- handlers -------------------------------------------------------------------------
    def _start_ready(self) -> None:
        ready, self.ready = self.ready, []
        for call in ready:
            if call.done or call.status is not None or call.task is not None:
                continue
            front = self.front
            handler: Handler = front.handlers[call.method]
            if call.method in front.streaming_methods:
                if front.streaming >= self.limits.max_streaming_calls:
                    self._refuse(call, UNAVAILABLE, f"the server is at its limit of "
                                 f"{self.limits.max_streaming_calls} streaming calls "
                                 f"(SERVEDMODEL_MAX_STREAMING_CALLS); retry later",
                                 "streaming_limit", RETRY)
                    continue
                front.streaming += 1
                call.slot = STREAMING_SLOT
            else:
                if front.running >= self.limits.max_calls:
                    self._refuse(call, UNAVAILABLE, f"the server is at its limit of "
                                 f"{self.limits.max_calls} concurrent calls "
                                 f"(SERVEDMODEL_MAX_CONNECTIONS); retry later", "call_limit",
                                 RETRY)
                    continue
                front.running += 1
                call.slot = UNARY_SLOT
            call.task = task = self.loop.create_task(self._run(call, handler))
            task.add_done_callback(call.handler_done)

    async def _run(self, call: Call, handler: Handler) -> None:
        try:
            await handler(call)
        except asyncio.CancelledError:
            raise
        except Exception as e:      # a bug in a handler: INTERNAL, keep serving
            print(f"serving: internal error in gRPC {call.method}: {e!r}", file=sys.stderr)
            call.finish(INTERNAL, f"internal error: {type(e).__name__}")

    def handler_done(self, call: Call, task: asyncio.Task) -> None:
        """The done-callback of a call's handler: gives back its slot whatever happened."""
        front = self.front
        if call.slot == UNARY_SLOT:
            front.running -= 1
        elif call.slot == STREAMING_SLOT:
            front.streaming -= 1
        call.slot = NO_SLOT
        call.task = None
        if not task.cancelled() and task.exception() is not None:
            print(f"serving: gRPC handler error: {task.exception()!r}", file=sys.stderr)
        if not call.done and call.status is None:
            call.finish(INTERNAL, "the handler gave no answer")
        self._settle(call)

    # -- writing ------------------------------------------------------------------------
    def _send(self) -> None:
        out = self.out
        if out and not self.processing:
            self.out = []
            if not self.transport.is_closing():
                self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def flush(self, call: Call) -> None:
        """Write what the call has queued, as far as the flow-control windows allow."""
        if self.closed or call.done:
            return
        out, sid, pending = self.out, call.sid, call.pending
        if not call.head_sent:
            call.head_sent = True
            if call.status is not None and call.head is None and len(pending) == 1:
                # A unary answer that fits the windows: three frames, one write.
                chunk = pending[0]
                n = len(chunk)
                stream_window, conn_window = call.send_window, self.send_window
                if n <= stream_window.size and n <= conn_window.size and n <= self.peer_max_frame:
                    pending.clear()
                    stream_window.size -= n
                    conn_window.size -= n
                    out.append(HEAD.pack(_RESPONSE_HEAD_LENGTH | HEADERS, END_HEADERS, sid)
                               + RESPONSE_HEAD + HEAD.pack(n << 8 | DATA, 0, sid))
                    out.append(chunk)
                    out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, call.status))
                    self._end_stream(call)
                    return self._send()
            if call.head is None and not call.pending and call.status is not None:
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                 RESPONSE_HEAD + call.status))     # trailers-only
                self._end_stream(call)
                return self._send()
            out.append(frame(HEADERS, END_HEADERS, sid, call.head or RESPONSE_HEAD))
        if pending:
            stream_window, conn_window = call.send_window, self.send_window
            max_frame = self.peer_max_frame
            while pending:
                chunk = pending[0]
                n = min(len(chunk), stream_window.size, conn_window.size, max_frame)
                if n <= 0:
                    if call.blocked_since is None:
                        call.blocked_since = self.loop.time()
                    self.blocked[call] = None
                    break
                if n == len(chunk):
                    pending.popleft()
                else:
                    if type(chunk) is not memoryview:
                        chunk = memoryview(chunk)
                    pending[0], chunk = chunk[n:], chunk[:n]
                out.append(frame_head(DATA, 0, sid, n))
                out.append(chunk)
                stream_window.size -= n
                conn_window.size -= n
        if not pending:
            if call.blocked_since is not None:
                call.blocked_since = None
                self.blocked.pop(call, None)
            if call.status is not None:
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, call.status))
                self._end_stream(call)
        self._send()

    def _flush_blocked(self) -> None:
        for call in list(self.blocked):
            self.flush(call)

    def _end_stream(self, call: Call) -> None:
        """Our END_STREAM is queued: the table says whether the stream closes or is reset
        (answered before the request was whole: NO_ERROR, the client may stop sending)."""
        action, after = st.TABLE[call.state, st.SEND_END]
        if action is st.FINISH_EARLY:
            self.out.append(rst_stream(call.sid, NO_ERROR))
        self._move(call.sid, call, call.state, after)
        call.done = True
        if self.resets_left < RESET_BURST:
            self.resets_left += 1
        if call.task is None:
            self._settle(call)

    def _settle(self, call: Call) -> None:
        """Forget the call once its stream is closed and its handler has ended."""
        if call.settled or call.task is not None or call.state < st.CLOSED:
            return
        call.settled = True
        del self.calls[call.sid]
        self._remember(call.sid, call.state)
        self.blocked.pop(call, None)
        call.arrived()
        call.budget.release()
        call.body = None
        self.active -= 1
        self.last_active = self.loop.time()
        if self.active == 0:
            self.front.idle(self)
            self._close_if_done()

    def _refuse(self, call: Call, code: int, message: str, reason: str,
                trailers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer a call before its handler runs (a limit or a malformed request); `reason`
        is its label in the failure counter. Its request bytes are given back now."""
        call.arrived()
        call.budget.release()
        call.body = None
        self.front.refused(call, code, message, reason)     # counted before the client knows
        call.pending.clear()
        call.finish(code, message, trailers)

    def _answer_http(self, call: Call) -> None:
        """Not a gRPC request at all: a plain HTTP answer with a body (gRPC's rule)."""
        message = ("a gRPC call is a POST with content-type application/grpc"
                   if call.http_status == b"415" else "a gRPC call is a POST")
        assert call.http_status is not None    # set when the request was found not gRPC
        call.head = http_head(call.http_status)
        call.pending.append(message.encode() + b"\n")
        call.status = status_block(UNIMPLEMENTED, message)
        self.flush(call)

    def _reset(self, call: Call, code: int) -> None:
        """Our RST_STREAM: counted in the reset budget; the handler is stopped."""
        self.out.append(rst_stream(call.sid, code))
        self._abandon(call, st.RESET_BY_US)
        self._count_reset()

    def _abandon(self, call: Call, closed_state: int) -> None:
        """The stream is gone (reset either way, or the connection closed): stop its
        handler; `handler_done` then gives back what it holds."""
        if call.state in (st.OPEN, st.HALF_CLOSED_REMOTE):
            self.open_streams -= 1
            call.state = closed_state
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
