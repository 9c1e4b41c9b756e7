"""The gRPC front end's limits: what its connections (`connection`) and their listener
(`listener`) are held to. Below both, so that each imports it and neither the other."""
from __future__ import annotations

from dataclasses import dataclass

from ..connections import ConnectionLimits
from ..settings import Settings


@dataclass(frozen=True)
class GrpcLimits(ConnectionLimits):
    """The REST connection layer's limits (`keep_alive`: an idle connection's GOAWAY) and
    gRPC's own: the message size, `max_streams` concurrent calls a connection may make,
    `max_calls` unary calls running in all, `max_streaming_calls` streaming ones (Watch)
    apart from them, and `request_timeout` for a request message to arrive whole. The
    defaults are the server settings' (stated there)."""
    max_message_bytes: int = Settings.max_body_bytes
    max_streams: int = 100
    max_calls: int = Settings.max_connections
    max_streaming_calls: int = Settings.max_streaming_calls
    request_timeout: float = Settings.request_timeout_seconds
