"""One gRPC call: a stream's record on the connection (its state in `streams.TABLE`, its
windows, its request bytes and what they are held against) and what a handler reads and
answers with."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from .flow import ReceiveWindow, SendWindow
from .grpc import OK, message_prefix, status_block
from .headers import RequestHead


class CallOwner(Protocol):
    """What a call needs from the connection it is a stream of (`connection.GrpcConnection`).
    Named here, not imported: the connection imports this module, and imports go one way."""

    closed: bool

    def flush(self, call: Call) -> None: ...

    def handler_done(self, call: Call, task: asyncio.Task) -> None: ...


class BudgetLike(Protocol):
    """What a call's request bytes are held against: `Budget` holds nothing, the server's is
    `BodyBudget`, the tests count."""

    def hold(self, n: int) -> None: ...

    def release(self) -> None: ...


class Budget:
    """A budget that holds nothing back; the server's is `BodyBudget`."""

    def hold(self, n: int) -> None:   # raises ServingError when over
        pass

    def release(self) -> None:
        pass


Handler = Callable[["Call"], Awaitable[None]]
_OK_TRAILERS = status_block(OK)
_COPY_BELOW = 16384

#: Which call-slot counter a running handler holds.
NO_SLOT, UNARY_SLOT, STREAMING_SLOT = range(3)


class Call:
    """One gRPC call (one HTTP/2 stream)."""

    __slots__ = ("conn", "sid", "state", "method", "metadata", "message", "body", "charged",
                 "expected", "received", "content_length", "budget", "task", "slot",
                 "send_window", "recv_window", "pending", "head", "head_sent", "status",
                 "done", "settled", "deadline", "opened_at", "last_data", "blocked_since",
                 "arrival", "probe_only", "http_status", "identity")

    def __init__(self, conn: CallOwner, sid: int, head: RequestHead, state: int,
                 budget: BudgetLike, send_window: int, recv_window: int, now: float) -> None:
        self.conn, self.sid, self.state = conn, sid, state
        self.method = head.path
        self.metadata = head.metadata
        self.content_length = head.content_length
        self.message = b""
        self.body: bytes | bytearray | None = None   # the request bytes so far
        self.charged = 0                   # bytes held against the budget for `body`
        self.expected = -1                 # the message's length, once its prefix is in
        self.received = 0                  # DATA payload bytes (content-length's count)
        self.budget = budget
        self.task: asyncio.Task | None = None
        self.slot = NO_SLOT
        self.send_window = SendWindow(send_window)
        self.recv_window = ReceiveWindow(recv_window)
        self.pending: deque[bytes | memoryview] = deque()
        self.head: bytes | None = None     # the response head, when not gRPC's
        self.head_sent = False
        self.status: bytes | None = None   # the trailers, once the handler has answered
        self.done = False                  # answered and written, or the stream is gone
        self.settled = False               # forgotten by the connection (all released)
        self.deadline: float | None = None
        self.opened_at = self.last_data = now
        self.blocked_since: float | None = None
        self.arrival: Callable[[], None] | None = None
        self.probe_only = False
        self.http_status: bytes | None = None   # not a gRPC request: answered plainly
        #: who is calling, as the front end's `authorize` found (its audit record names them)
        self.identity: object = None

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
        self._queue(payload)
        self.conn.flush(self)

    def reply(self, payload: bytes) -> None:
        """A unary call's answer: its one message and status OK, written at once."""
        if self.done or self.status is not None:
            return
        self._queue(payload)
        self.status = _OK_TRAILERS
        self.conn.flush(self)

    def _queue(self, payload: bytes) -> None:
        # A small message goes out with its prefix in one DATA frame (one copy of a few KB);
        # a large one is not copied (the prefix is a frame of its own).
        if len(payload) <= _COPY_BELOW:
            self.pending.append(message_prefix(payload) + payload)
        else:
            self.pending.append(message_prefix(payload))
            self.pending.append(payload)

    def finish(self, code: int = OK, message: str = "",
               trailers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """End the call with its status (after any queued messages)."""
        if self.done or self.status is not None:
            return
        self.status = status_block(code, message, trailers)
        self.conn.flush(self)

    def handler_done(self, task: asyncio.Task) -> None:
        """The handler's task ended, whatever its fate (done-callback)."""
        self.conn.handler_done(self, task)
