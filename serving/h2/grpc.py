"""gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md): status codes, the response head and
trailers we send (HPACK without our own dynamic table, so nothing of ours needs tracking),
grpc-timeout, and the 5-octet message prefix."""
from __future__ import annotations

import struct

# gRPC status codes (grpc/doc/statuscodes.md).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, \
    PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, \
    UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED = range(17)
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
#: The HTTP-like status of a ServingError -> gRPC status code, as Triton maps them.
STATUS_OF_HTTP = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
                  404: NOT_FOUND, 413: RESOURCE_EXHAUSTED, 415: INVALID_ARGUMENT,
                  503: UNAVAILABLE}
#: grpc-message is cut to this many bytes (a client's header limit is 8 KiB by default).
MAX_STATUS_MESSAGE = 2048
RETRY = ((b"retry-after", b"1"),)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_PREFIX = struct.Struct(">BI")


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A field, literal without indexing, new name, no Huffman (RFC 7541, 6.2.2)."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


#: `:status: 200` (static index 8) and `content-type: application/grpc` (name index 31).
RESPONSE_HEAD = b"\x88\x0f\x10" + hpack_int(16, 7, 0) + b"application/grpc"
_TRAILERS_OK = literal(b"grpc-status", b"0")


def http_head(status: bytes) -> bytes:
    """A plain HTTP answer's head (`:status` by name index 8, text/plain)."""
    return (b"\x08" + hpack_int(len(status), 7, 0) + status + b"\x0f\x10"
            + hpack_int(24, 7, 0) + b"text/plain; charset=utf-8")


def percent_encode(message: str) -> bytes:
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
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    for name, value in trailers:
        block += literal(name, value)
    return block


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (`1S`, `250m`, ...) in seconds; None when malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def message_prefix(payload: bytes) -> bytes:
    """The 5 octets before a message: not compressed, its length."""
    return _PREFIX.pack(0, len(payload))


def read_prefix(head: bytes | bytearray) -> tuple[int, int]:
    """(compressed flag, length) of a message's first 5 octets."""
    return _PREFIX.unpack_from(head)
