"""What the connections of one gRPC listener share: limits, handlers, the call-slot counters,
admission at the connection cap (idle connections evicted first, then the probe reserve), the
counters, and the hooks of the service behind it."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .call import Budget, BudgetLike, Call, Handler
from .connection import GrpcConnection
from .frames import ERROR_NAMES, NO_ERROR, goaway
from .limits import GrpcLimits


@dataclass
class _Counters:
    """Stands in for the server's `Metrics` where a listener is used without one."""
    received_bytes: int = 0
    connection_errors: dict = field(default_factory=dict)
    protocol_errors: dict = field(default_factory=dict)


class GrpcListener:
    """The connections of one listener and the hooks of the service behind it:

    - `budget()`: what one call's request bytes are held against (the REST body budget);
    - `authorize(call)`: raises ServingError when the call's metadata does not authorize its
      method; run on the HEADERS, before any of the request's bytes are kept;
    - `arriving(call)`: called when a call's headers are in; may return a function that the
      layer calls once the call's message is decoded or refused (the batch window);
    - `refused(call, code, message, reason)`: a call this layer answered itself;
    - `probe_methods`: what a connection from the reserve over the cap may call;
    - `streaming_methods`: calls that may last (Watch), counted against
      `max_streaming_calls` instead of `max_calls`.
    """

    def __init__(self, limits: GrpcLimits, handlers: dict[str, Handler], *,
                 metrics=None, budget: Callable[[], BudgetLike] = Budget,
                 authorize: Callable[[Call], None] = lambda call: None,
                 arriving: Callable[[Call], Callable[[], None] | None] = lambda call: None,
                 refused: Callable[[Call, int, str, str], None] = lambda *args: None,
                 probe_methods: frozenset[str] = frozenset(),
                 streaming_methods: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        self.handlers = handlers
        self.metrics = metrics if metrics is not None else _Counters()
        self.budget = budget
        self.authorize = authorize
        self.arriving = arriving
        self.refused = refused
        self.probe_methods = probe_methods
        self.streaming_methods = streaming_methods
        self.connections: set[GrpcConnection] = set()
        #: connections with no call, oldest first: evicted first at the cap
        self.idle_connections: OrderedDict[GrpcConnection, None] = OrderedDict()
        self.running = 0                  # unary handlers running, all connections together
        self.streaming = 0                # streaming handlers running
        self.server: asyncio.AbstractServer | None = None

    def count(self, reason: str) -> None:
        errors = self.metrics.connection_errors
        errors[f"grpc_{reason}"] = errors.get(f"grpc_{reason}", 0) + 1

    def protocol_error(self, kind: str, code: int) -> None:
        """One protocol error (servedmodel_http2_protocol_errors_total)."""
        key = (kind, ERROR_NAMES[code] if code < len(ERROR_NAMES) else str(code))
        errors = self.metrics.protocol_errors
        errors[key] = errors.get(key, 0) + 1

    def admit(self, conn: GrpcConnection) -> str:
        """'normal', 'probe' (the reserve: `probe_methods` only) or 'refuse'. At the cap the
        oldest connection without a call makes room (GOAWAY NO_ERROR), as REST's do."""
        cap = self.limits.max_connections
        if len(self.connections) >= cap and self.idle_connections:
            oldest, _ = self.idle_connections.popitem(last=False)
            self.evict(oldest)
        if len(self.connections) < cap:
            verdict = "normal"
        elif len(self.connections) < cap + self.limits.probe_connections:
            verdict = "probe"
        else:
            self.count("connection_limit")
            return "refuse"
        self.connections.add(conn)
        self.idle_connections[conn] = None
        return verdict

    def evict(self, conn: GrpcConnection) -> None:
        self.count("evicted")
        self.connections.discard(conn)
        if not conn.closed:
            conn.closed = True
            if not conn.transport.is_closing():
                conn.transport.write(goaway(conn.last_sid, NO_ERROR, b"evicted: the server is "
                                            b"at its connection limit"))
            conn.transport.close()

    def busy(self, conn: GrpcConnection) -> None:
        self.idle_connections.pop(conn, None)

    def idle(self, conn: GrpcConnection) -> None:
        if not conn.closed and conn in self.connections:
            self.idle_connections[conn] = None

    def closed(self, conn: GrpcConnection) -> None:
        self.connections.discard(conn)
        self.idle_connections.pop(conn, None)

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
