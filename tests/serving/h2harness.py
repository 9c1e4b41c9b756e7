"""Our HTTP/2 connection core without a socket: a `GrpcConnection` of a real `GrpcListener` on a
transport that keeps what is written, for the tests that feed it bytes directly (the
differential test against python-hyper h2, the fuzz tests, the unit tests). A plain module."""
from __future__ import annotations

import asyncio
import struct

from servedmodel.serving.h2 import GrpcConnection, GrpcLimits, GrpcListener
from servedmodel.serving.h2 import frames as fr
from servedmodel.serving.h2.call import Call, Handler


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name, default=None):
        return default


class CountingBudget:
    """A budget that counts what all calls hold (`held[0]`), up to `limit`."""

    def __init__(self, held: list[int], limit: int = 1 << 30) -> None:
        self.held, self.limit, self.mine = held, limit, 0

    def hold(self, n: int) -> None:
        from servedmodel.serving.errors import ServingError
        if self.held[0] + n > self.limit:
            raise ServingError(503, "over the test budget", reason="buffer_full")
        self.held[0] += n
        self.mine += n

    def release(self) -> None:
        self.held[0] -= self.mine
        self.mine = 0


async def wait_forever(call: Call) -> None:
    await asyncio.Event().wait()


async def echo(call: Call) -> None:
    call.reply(call.message)


async def fail(call: Call) -> None:
    raise RuntimeError("a handler bug")


async def stream(call: Call) -> None:
    for i in range(3):
        call.send_message(b"part %d" % i)
        await asyncio.sleep(0)
    call.finish()


HANDLERS: dict[str, Handler] = {"/t/Wait": wait_forever, "/t/Echo": echo, "/t/Fail": fail, "/t/Stream": stream}


def listener(held: list[int] | None = None, **limits) -> GrpcListener:
    held = held if held is not None else [0]
    return GrpcListener(GrpcLimits(**{"max_message_bytes": 1 << 20, **limits}), HANDLERS,
                        budget=lambda: CountingBudget(held),
                        streaming_methods=frozenset({"/t/Stream"}))


def connect(front: GrpcListener) -> tuple[GrpcConnection, FakeTransport]:
    """A connection that has been made (its SETTINGS written); call inside a running loop."""
    conn = GrpcConnection(front)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def frames(data: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    """The whole frames of `data`: (kind, flags, stream, payload)."""
    out, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if len(data) - pos < 9 + length:
            break
        kind, flags = data[pos + 3], data[pos + 4]
        sid = struct.unpack(">I", data[pos + 5:pos + 9])[0] & 0x7FFFFFFF
        out.append((kind, flags, sid, bytes(data[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return out


def errors_in(data: bytes | bytearray, debug: bool = False) -> list[tuple]:
    """The protocol errors written: ("goaway", 0, code) and ("rst", stream, code), codes other
    than NO_ERROR (an early answer's reset); a GOAWAY's debug data last with `debug`."""
    out = []
    for kind, _, sid, payload in frames(data):
        if kind == fr.GOAWAY and len(payload) >= 8:
            code = struct.unpack(">I", payload[4:8])[0]
            if code != fr.NO_ERROR:
                out.append(("goaway", 0, code) + ((payload[8:],) if debug else ()))
        elif kind == fr.RST_STREAM and len(payload) == 4:
            code = struct.unpack(">I", payload)[0]
            if code != fr.NO_ERROR:
                out.append(("rst", sid, code))
    return out
