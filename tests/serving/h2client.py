"""A raw HTTP/2 client for tests: it sends exactly the frames a test gives it (HPACK from
hpack) and reads the server's frames one by one. A plain module, as serverkit is."""
from __future__ import annotations

import socket
import struct
import time
from typing import Any

from hpack import Decoder, Encoder

from servedmodel.serving.h2 import frames as fr


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(
        ">I", sid) + payload


def message(payload: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(payload)) + payload


class RawClient:
    """An HTTP/2 client that sends exactly the frames a test gives it."""

    def __init__(self, port: int, settings: bytes = b"", preface: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder, self.decoder = Encoder(), Decoder()
        self.buf = b""
        if preface:
            self.sock.sendall(fr.PREFACE + frame(fr.SETTINGS, 0, 0, settings))

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: int, flags: int, sid: int, payload: bytes = b"") -> None:
        self.sock.sendall(frame(kind, flags, sid, payload))

    def block(self, method: str, metadata=()) -> bytes:
        return self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", method),
                                    (":authority", "t"), ("content-type", "application/grpc"),
                                    ("te", "trailers"), *metadata])

    def call(self, sid: int, method: str, payload: bytes | None = b"", metadata=()) -> None:
        """HEADERS, then (unless payload is None) one whole message that ends the stream."""
        self.send(fr.HEADERS, fr.END_HEADERS, sid, self.block(method, metadata))
        if payload is not None:
            self.send(fr.DATA, fr.END_STREAM, sid, message(payload))

    def frame(self, timeout: float = 10.0) -> tuple[int, int, int, Any] | None:
        """The next frame (kind, flags, sid, payload; HEADERS decoded), or None when closed."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except (TimeoutError, ConnectionResetError) as e:
                if isinstance(e, socket.timeout):
                    raise AssertionError("no frame from the server in time") from None
                return None
            if not data:
                return None
            self.buf += data
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if kind == fr.HEADERS:
            payload = {k.decode(): v.decode() for k, v in self.decoder.decode(payload, raw=True)}
        return kind, flags, sid, payload

    def until(self, want, timeout: float = 10.0) -> list:
        """Frames up to and including the first for which `want(frame)` holds."""
        seen = []
        while True:
            f = self.frame(timeout)
            assert f is not None, f"connection closed; frames: {seen}"
            seen.append(f)
            if want(f):
                return seen

    def response(self, sid: int, timeout: float = 10.0) -> tuple[bytes, dict]:
        """The data and the trailers of call `sid` (other frames skipped)."""
        frames = self.until(lambda f: f[2] == sid and (
            (f[0] == fr.HEADERS and f[1] & fr.END_STREAM) or f[0] == fr.RST_STREAM), timeout)
        last = frames[-1]
        assert last[0] == fr.HEADERS, f"call {sid} was reset: {frames}"
        data = b"".join(f[3] for f in frames if f[0] == fr.DATA and f[2] == sid)
        return data, last[3]

    def goaway(self, timeout: float = 10.0) -> int | None:
        """The error code of the server's GOAWAY; None if it closed without one."""
        while True:
            f = self.frame(timeout)
            if f is None:
                return None
            if f[0] == fr.GOAWAY:
                return struct.unpack(">I", f[3][4:8])[0]


