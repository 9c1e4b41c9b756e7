"""The HTTP/2 frame codec (RFC 9113, 4 and 6): the wire constants, a frame's encoding, and the
checks a frame's own fields must pass before any stream state is looked at (lengths, stream
id 0 or not, padding, priority fields). A frame that fails them is an `H2Error` naming the
error code and whether it ends the connection or only the stream, as RFC 9113 says."""
from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FRAME_NAMES = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
               "GOAWAY", "WINDOW_UPDATE", "CONTINUATION")
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
               "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM")
# Settings (RFC 9113, 6.5.2).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, \
    S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = range(1, 7)

#: The largest frame payload we accept: the protocol's default, never raised.
MAX_FRAME = 16384
MAX_WINDOW = 2 ** 31 - 1
FRAME_HEAD = 9

HEAD = struct.Struct(">IBI")    # length << 8 | type, flags, stream id
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")
_GOAWAY_HEAD = struct.Struct(">II")


class H2Error(Exception):
    """A protocol error: `code` (RFC 9113, 7); `stream` is the stream it ends, 0 for the
    connection; `kind` is its label in servedmodel_h2_protocol_errors_total."""

    def __init__(self, code: int, why: str, kind: str, stream: int = 0) -> None:
        super().__init__(why)
        self.code, self.why, self.kind, self.stream = code, why, kind, stream


def connection_error(code: int, why: str, kind: str) -> H2Error:
    return H2Error(code, why, kind)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload) << 8 | kind, flags, stream) + payload


def frame_head(kind: int, flags: int, stream: int, length: int) -> bytes:
    return HEAD.pack(length << 8 | kind, flags, stream)


def rst_stream(stream: int, code: int) -> bytes:
    return HEAD.pack(4 << 8 | RST_STREAM, 0, stream) + U32.pack(code)


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY_HEAD.pack(last_stream, code) + debug)


def window_update(stream: int, increment: int) -> bytes:
    return HEAD.pack(4 << 8 | WINDOW_UPDATE, 0, stream) + U32.pack(increment)


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in pairs))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


# -- checks of a frame's own fields (before its stream's state) ------------------------------

def strip_padding(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS payload without its padding (RFC 9113, 6.1): a pad length that
    reaches past the frame is a connection error."""
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise connection_error(PROTOCOL_ERROR, "padding longer than the frame", "bad_padding")
        return payload[1:len(payload) - payload[0]]
    return payload


def header_fragment(flags: int, payload: bytes) -> tuple[bytes, int]:
    """A HEADERS payload's field block fragment, with padding and priority fields taken off,
    and the stream its priority fields say it depends on (-1 without them). A stream that
    depends on itself is an error its caller raises once the stream's state has been
    checked (python-hyper h2's order)."""
    payload = strip_padding(flags, payload)
    if flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise connection_error(FRAME_SIZE_ERROR, "HEADERS priority fields cut short",
                                   "frame_size")
        return payload[5:], U32.unpack_from(payload)[0] & 0x7FFFFFFF
    return payload, -1


def check_priority(sid: int, payload: bytes) -> None:
    """PRIORITY (deprecated by RFC 9113, 5.3.2, still parsed): a bad one ends the connection
    (a PRIORITY may name an idle stream, which must not be reset)."""
    if sid == 0:
        raise connection_error(PROTOCOL_ERROR, "PRIORITY on stream 0", "bad_stream_id")
    if len(payload) != 5:
        raise connection_error(FRAME_SIZE_ERROR, "PRIORITY of other than 5 octets",
                               "frame_size")
    if U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
        raise connection_error(PROTOCOL_ERROR, "a stream cannot depend on itself",
                               "self_dependency")


def window_increment(payload: bytes) -> int:
    """A WINDOW_UPDATE's increment (0 is an error the caller names: the connection's on
    stream 0, else the stream's once it is known to be open)."""
    if len(payload) != 4:
        raise connection_error(FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 octets",
                               "frame_size")
    return U32.unpack(payload)[0] & 0x7FFFFFFF


def rst_code(sid: int, payload: bytes) -> int:
    if sid == 0:
        raise connection_error(PROTOCOL_ERROR, "RST_STREAM on stream 0", "bad_stream_id")
    if len(payload) != 4:
        raise connection_error(FRAME_SIZE_ERROR, "RST_STREAM of other than 4 octets",
                               "frame_size")
    return U32.unpack(payload)[0]


def check_ping(sid: int, payload: bytes) -> None:
    if sid:
        raise connection_error(PROTOCOL_ERROR, "PING on a stream", "bad_stream_id")
    if len(payload) != 8:
        raise connection_error(FRAME_SIZE_ERROR, "PING of other than 8 octets", "frame_size")


def check_goaway(sid: int, payload: bytes) -> None:
    if sid:
        raise connection_error(PROTOCOL_ERROR, "GOAWAY on a stream", "bad_stream_id")
    if len(payload) < 8:
        raise connection_error(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 octets", "frame_size")


def parse_settings(flags: int, sid: int, payload: bytes) -> dict[int, int] | None:
    """A SETTINGS frame's values, the last of each identifier winning (a frame of 2,730
    entries costs one pass, whatever they say); None for an ACK. Values the RFC bounds are
    checked here."""
    if sid:
        raise connection_error(PROTOCOL_ERROR, "SETTINGS on a stream", "bad_stream_id")
    if flags & ACK:
        if payload:
            raise connection_error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload", "frame_size")
        return None
    if len(payload) % 6:
        raise connection_error(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6",
                               "frame_size")
    values = dict(SETTING.iter_unpack(payload))
    if S_ENABLE_PUSH in values or S_INITIAL_WINDOW_SIZE in values or S_MAX_FRAME_SIZE in values:
        for key, value in values.items():     # (each identifier once, where it first came)
            if key == S_ENABLE_PUSH and value > 1:
                raise connection_error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH other than 0 or 1",
                                       "bad_setting")
            if key == S_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
                raise connection_error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over "
                                       "2^31-1", "bad_setting")
            if key == S_MAX_FRAME_SIZE and not MAX_FRAME <= value <= 16777215:
                raise connection_error(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range",
                                       "bad_setting")
    return values
