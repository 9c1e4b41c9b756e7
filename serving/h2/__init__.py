"""The gRPC front end's HTTP/2 layer: cleartext HTTP/2 with prior knowledge (what gRPC clients
and Kubernetes gRPC probes speak), on the server's asyncio loop. It knows gRPC's framing and
status codes, not the V2 protocol (`grpc_server.py`).

- `frames`: the frame codec (constants, encoding, the checks of a frame's own fields);
- `headers`: field blocks bounded before decoding, decoded (`hpack`), validated (RFC 9113, 8);
- `streams`: a stream's life as one table, (state, event) -> (action, next state);
- `flow`: flow-control windows;
- `grpc`: gRPC's status codes, trailers, grpc-timeout and message prefix;
- `limits`: what connections and their listener are held to;
- `call`: one call, as its handler sees it;
- `connection`: one connection (reading, the table applied, limits, timers, budgets, writing);
- `listener`: what the connections share (admission, call slots, counters, hooks).

docs/protocol.md ("The HTTP/2 layer") describes the whole, the table included.
"""
from .call import Budget, Call, Handler
from .connection import GrpcConnection
from .limits import GrpcLimits
from .listener import GrpcListener

__all__ = ["Budget", "Call", "GrpcConnection", "GrpcLimits", "GrpcListener", "Handler"]
