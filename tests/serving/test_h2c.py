"""The gRPC front end's HTTP/2 layer (serving/h2/) on its own: a real listener on 127.0.0.1
with small test handlers, called by the real grpcio client and, for what a well-behaved
client never does, by a raw HTTP/2 client written here (frames by hand, HPACK from hpack).
The V2 service on top is tested through tritonclient in test_grpc.py."""
from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import threading
import time

import grpc
import pytest

from h2client import RawClient
from h2client import frame as _frame
from h2client import message as _message
from servedmodel.serving.errors import ServingError
from servedmodel.serving.h2 import Call, GrpcLimits, GrpcListener, connection
from servedmodel.serving.h2 import frames as fr
from servedmodel.serving.h2 import grpc as g

ECHO, BIG, SLOW, STREAM, PROBE = "/t.S/Echo", "/t.S/Big", "/t.S/Slow", "/t.S/Stream", "/t.S/Probe"


class Handlers:
    """Test handlers, and what they saw."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.gone_seen: list[bool] = []

    async def echo(self, call: Call) -> None:
        call.send_message(call.message)
        call.finish()

    async def big(self, call: Call) -> None:
        call.send_message(bytes(range(256)) * (int(call.message) // 256))
        call.finish()

    async def slow(self, call: Call) -> None:
        try:
            await asyncio.sleep(float(call.message or b"10"))
        except asyncio.CancelledError:
            self.cancelled += 1
            self.gone_seen.append(call.gone())
            raise
        call.send_message(b"done")
        call.finish()

    async def stream(self, call: Call) -> None:
        for i in range(3):
            call.send_message(b"part %d" % i)
            await asyncio.sleep(0)
        call.finish()

    def table(self) -> dict:
        return {ECHO: self.echo, BIG: self.big, SLOW: self.slow, STREAM: self.stream,
                PROBE: self.echo}


@contextlib.contextmanager
def serve(handlers: Handlers | None = None, **kwargs):
    """A GrpcListener on its own loop in a thread; yields (listener, port)."""
    handlers = handlers or Handlers()
    hooks = {k: kwargs.pop(k) for k in ("budget", "arriving", "refused") if k in kwargs}
    loop = asyncio.new_event_loop()
    listener = GrpcListener(GrpcLimits(**{"max_message_bytes": 8 << 20, **kwargs}),
                            handlers.table(), probe_methods=frozenset({PROBE}), **hooks)
    port = loop.run_until_complete(listener.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield listener, port
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(0.5), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_receive_message_length", 16 << 20)])


def _still_serves(port: int) -> None:
    with _channel(port) as channel:
        assert channel.unary_unary(ECHO)(b"ping", timeout=10) == b"ping"


# -- a real client ---------------------------------------------------------------------------

def test_grpcio_client_unary_streaming_large_messages_and_errors():
    handlers = Handlers()
    with serve(handlers) as (_, port), _channel(port) as channel:
        echo = channel.unary_unary(ECHO)
        assert echo(b"hello", timeout=10) == b"hello"
        assert echo(b"", timeout=10) == b""
        # 5 MB both ways: the client's window (64 KiB at first) paces our answer, ours its
        # request (WINDOW_UPDATE frames both ways).
        payload = bytes(range(256)) * (5 * 4096)
        assert echo(payload, timeout=30) == payload
        # 100 calls on one connection, 20 at a time (streams interleave)
        futures = [echo.future(b"%d" % i, timeout=30) for i in range(100)]
        assert [f.result() for f in futures] == [b"%d" % i for i in range(100)]
        assert list(channel.unary_stream(STREAM)(b"", timeout=10)) == [b"part 0", b"part 1",
                                                                       b"part 2"]
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/t.S/Nope")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "unknown method '/t.S/Nope'" in (e.value.details() or "")
        # grpc-timeout: the call ends DEADLINE_EXCEEDED and its handler is stopped
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(SLOW)(b"10", timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 5
        while handlers.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handlers.cancelled == 1
        # a message over the limit: RESOURCE_EXHAUSTED from its length prefix, at once
        with pytest.raises(grpc.RpcError) as e:
            echo(b"x" * ((8 << 20) + 1), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max (8388609 vs. 8388608 bytes" in (e.value.details() or "")
        assert echo(b"after", timeout=10) == b"after"


def test_status_message_is_percent_encoded():
    async def fail(call):
        call.finish(g.INVALID_ARGUMENT, "bad tensor 'x': 100% wrong \u00e9\nline")

    handlers = Handlers()
    handlers.table = lambda: {ECHO: fail}
    with serve(handlers) as (_, port), _channel(port) as channel:
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(ECHO)(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "bad tensor 'x': 100% wrong \u00e9\nline"


# -- flow control ----------------------------------------------------------------------------

def test_answers_wait_for_the_clients_window():
    """A client that allows 1,000 bytes a stream gets 1,000 bytes, and the rest only as it
    sends WINDOW_UPDATE; the message arrives whole and in order."""
    size = 200_000
    with serve() as (_, port):
        c = RawClient(port, settings=struct.pack(">HI", fr.S_INITIAL_WINDOW_SIZE, 1000))
        c.call(1, BIG, b"%d" % size)
        frames = c.until(lambda f: f[0] == fr.DATA)
        time.sleep(0.2)         # give the server time to (wrongly) send more
        c.sock.setblocking(False)
        try:
            more = c.sock.recv(1 << 20)
        except BlockingIOError:
            more = b""
        c.sock.setblocking(True)
        c.buf += more
        got = frames[-1][3]
        while len(c.buf) >= 9:
            f = c.frame()
            if f[0] == fr.DATA:
                got += f[3]
        assert len(got) == 1000, len(got)
        # now open the windows (connection and stream) and read the rest
        c.send(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20))
        c.send(fr.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20))
        data, trailers = c.response(1)
        body = got + data
        assert trailers["grpc-status"] == "0"
        assert body[5:] == (bytes(range(256)) * (size // 256)) and len(body) == 5 + size // 256 * 256
        c.close()


def test_requests_larger_than_the_initial_window_get_window_updates():
    """The server opens the connection window (WINDOW_UPDATE on 0 at once) and a stream's as
    its data arrives: a 3 MB request in 16 KiB frames goes through."""
    with serve() as (_, port):
        # (the client opens its own windows wide: the echo comes back in one go)
        c = RawClient(port, settings=struct.pack(">HI", fr.S_INITIAL_WINDOW_SIZE, 1 << 30))
        c.send(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))
        c.send(fr.HEADERS, fr.END_HEADERS, 1, c.block(ECHO))
        body = _message(b"\x07" * (3 << 20))
        sent = 0
        while sent < len(body):
            piece = body[sent:sent + 16384]
            sent += len(piece)
            c.send(fr.DATA, fr.END_STREAM if sent == len(body) else 0, 1, piece)
        frames = c.until(lambda f: f[0] == fr.HEADERS and f[1] & fr.END_STREAM, timeout=30)
        data = b"".join(f[3] for f in frames if f[0] == fr.DATA)
        assert frames[-1][3]["grpc-status"] == "0" and data == body
        updates = {f[2]: f for f in frames if f[0] == fr.WINDOW_UPDATE}
        assert 0 in updates and 1 in updates         # the connection's and the stream's
        c.close()


# -- what a peer must not do -----------------------------------------------------------------

def _bad_hpack(c):
    c.send(fr.HEADERS, fr.END_HEADERS, 1, b"\xff\xff\xff\x7f")     # index far out of range


PROTOCOL_ERRORS = [
    ("oversize-frame", lambda c: c.send(fr.DATA, 0, 1, b"\0" * 20000), fr.FRAME_SIZE_ERROR),
    ("even-stream", lambda c: c.send(fr.HEADERS, fr.END_HEADERS, 2, c.block(ECHO)),
     fr.PROTOCOL_ERROR),
    ("data-on-idle-stream", lambda c: c.send(fr.DATA, 0, 7, b"abc"), fr.PROTOCOL_ERROR),
    ("continuation-alone", lambda c: c.send(fr.CONTINUATION, fr.END_HEADERS, 1, b""),
     fr.PROTOCOL_ERROR),
    ("bad-padding", lambda c: c.send(fr.HEADERS, fr.END_HEADERS | fr.PADDED, 1, b"\x09abc"),
     fr.PROTOCOL_ERROR),
    ("zero-window-update", lambda c: c.send(fr.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
     fr.PROTOCOL_ERROR),
    ("short-ping", lambda c: c.send(fr.PING, 0, 0, b"1234"), fr.FRAME_SIZE_ERROR),
    ("settings-on-stream", lambda c: c.send(fr.SETTINGS, 0, 1, b""), fr.PROTOCOL_ERROR),
    ("bad-settings-length", lambda c: c.send(fr.SETTINGS, 0, 0, b"\0\0\0"),
     fr.FRAME_SIZE_ERROR),
    ("push-promise", lambda c: c.send(fr.PUSH_PROMISE, fr.END_HEADERS, 1, b"\0\0\0\2"),
     fr.PROTOCOL_ERROR),
    ("bad-hpack", _bad_hpack, fr.COMPRESSION_ERROR),
    ("interleaved-headers", lambda c: (
        c.send(fr.HEADERS, 0, 1, c.block(ECHO)[:3]), c.send(fr.DATA, 0, 1, b"x")),
     fr.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("case", PROTOCOL_ERRORS, ids=[c[0] for c in PROTOCOL_ERRORS])
def test_a_protocol_error_closes_that_connection_only(case):
    _, send, code = case
    with serve() as (_, port):
        other = RawClient(port)
        other.call(1, ECHO, b"before")
        assert other.response(1)[0] == _message(b"before")
        c = RawClient(port)
        send(c)
        assert c.goaway() == code
        assert c.frame(timeout=5) is None                   # and closed
        other.call(3, ECHO, b"after")                       # another connection: untouched
        assert other.response(3)[0] == _message(b"after")
        _still_serves(port)


def test_not_http2_and_silent_connections_are_closed():
    with serve(header_timeout=0.5) as (listener, port):
        c = RawClient(port, preface=False)
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.goaway() == fr.PROTOCOL_ERROR
        silent = RawClient(port, preface=False)
        t0 = time.monotonic()
        assert silent.goaway(timeout=5) == fr.PROTOCOL_ERROR     # no preface in 0.5 s
        assert time.monotonic() - t0 < 3
        _still_serves(port)
        assert listener.metrics.connection_errors["grpc_header_timeout"] == 1


def test_floods_are_cut_off():
    with serve() as (_, port):
        pings = RawClient(port)
        pings.sock.sendall(_frame(fr.PING, 0, 0, b"12345678") * (connection.IDLE_FRAME_BURST + 10))
        assert pings.goaway() == fr.ENHANCE_YOUR_CALM
        # "rapid reset": calls opened and cancelled at once, over and over
        resets = RawClient(port)
        frames = b""
        for i in range(connection.RESET_BURST + 50):
            sid = 2 * i + 1
            frames += _frame(fr.HEADERS, fr.END_HEADERS, sid, resets.block(SLOW))
            frames += _frame(fr.RST_STREAM, 0, sid, struct.pack(">I", fr.CANCEL))
        resets.sock.sendall(frames)
        assert resets.goaway() == fr.ENHANCE_YOUR_CALM
        _still_serves(port)


# -- limits ----------------------------------------------------------------------------------

def test_concurrent_calls_a_connection_may_make():
    with serve(max_streams=2) as (_, port):
        c = RawClient(port)
        settings = c.until(lambda f: f[0] == fr.SETTINGS and not f[1] & fr.ACK)[-1][3]
        assert struct.pack(">HI", fr.S_MAX_CONCURRENT_STREAMS, 2) in [
            settings[i:i + 6] for i in range(0, len(settings), 6)]
        for sid in (1, 3, 5):
            c.call(sid, SLOW, b"0.5")
        reset = c.until(lambda f: f[0] == fr.RST_STREAM)[-1]
        assert reset[2] == 5 and struct.unpack(">I", reset[3])[0] == fr.REFUSED_STREAM
        assert c.response(1)[0] == _message(b"done")
        assert c.response(3)[0] == _message(b"done")
        c.call(7, ECHO, b"next")                 # a finished call frees its place
        assert c.response(7)[0] == _message(b"next")


def test_metadata_and_message_limits_answer_early():
    with serve(max_header_bytes=4096, max_headers=10, max_message_bytes=1000) as (_, port):
        c = RawClient(port)
        c.call(1, ECHO, b"x", metadata=[("x-big", "a" * 5000)])
        _, trailers = c.response(1)
        assert trailers["grpc-status"] == str(g.RESOURCE_EXHAUSTED)
        assert "over the limit of 4096 bytes (SERVEDMODEL_MAX_HEADER_BYTES)" in \
            trailers["grpc-message"].replace("%20", " ").replace("%28", "(")
        c.call(3, ECHO, b"x", metadata=[(f"x-{i}", "a") for i in range(11)])
        assert c.response(3)[1]["grpc-status"] == str(g.RESOURCE_EXHAUSTED)
        # a 5-byte prefix that declares too much: answered before the rest is sent, and the
        # stream is reset (NO_ERROR: the client may stop sending)
        c.send(fr.HEADERS, fr.END_HEADERS, 5, c.block(ECHO))
        c.send(fr.DATA, 0, 5, b"\0" + struct.pack(">I", 5000) + b"abc")
        frames = c.until(lambda f: f[0] == fr.RST_STREAM and f[2] == 5)
        trailers = next(f for f in frames if f[0] == fr.HEADERS and f[2] == 5)[3]
        assert trailers["grpc-status"] == str(g.RESOURCE_EXHAUSTED)
        assert struct.unpack(">I", frames[-1][3])[0] == fr.NO_ERROR
        c.send(fr.DATA, fr.END_STREAM, 5, b"x" * 100)    # late data is dropped, no error
        c.call(7, ECHO, b"fine")
        assert c.response(7)[0] == _message(b"fine")
        # compressed messages are refused with what is accepted
        c.send(fr.HEADERS, fr.END_HEADERS, 9, c.block(ECHO))
        c.send(fr.DATA, fr.END_STREAM, 9, b"\1" + struct.pack(">I", 1) + b"x")
        trailers = c.response(9)[1]
        assert trailers["grpc-status"] == str(g.UNIMPLEMENTED)
        assert trailers["grpc-accept-encoding"] == "identity"


def test_stalled_requests_idle_connections_and_slow_readers():
    refusals = []
    with serve(body_timeout=0.5, keep_alive=1.0, refused=lambda call, code, message, reason:
               refusals.append(reason)) as (_, port):
        c = RawClient(port)
        c.send(fr.HEADERS, fr.END_HEADERS, 1, c.block(ECHO))
        c.send(fr.DATA, 0, 1, b"\0\0\0")          # then nothing
        t0 = time.monotonic()
        _, trailers = c.response(1)
        assert trailers["grpc-status"] == str(g.DEADLINE_EXCEEDED)
        assert 0.4 < time.monotonic() - t0 < 3
        # then idle: GOAWAY (NO_ERROR) about 1 s after its last call
        assert c.goaway(timeout=5) == fr.NO_ERROR
        assert refusals == ["body_timeout"]


def test_connection_cap_keeps_a_reserve_for_probes():
    with serve(max_connections=1, probe_connections=1) as (listener, port):
        first = RawClient(port)
        first.call(1, SLOW, b"3")                 # busy: not evictable
        deadline = time.monotonic() + 5
        while not listener.running and time.monotonic() < deadline:
            time.sleep(0.01)
        reserve = RawClient(port)
        reserve.call(1, PROBE, b"p")
        assert reserve.response(1)[0] == _message(b"p")
        reserve.call(3, ECHO, b"e")
        trailers = reserve.response(3)[1]
        assert trailers["grpc-status"] == str(g.UNAVAILABLE)
        assert trailers["retry-after"] == "1"
        reserve.send(fr.HEADERS, fr.END_HEADERS, 5, reserve.block(PROBE))   # busy too
        deadline = time.monotonic() + 5
        while listener.idle_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = RawClient(port)
        assert refused.goaway() == fr.REFUSED_STREAM
        assert listener.metrics.connection_errors["grpc_connection_limit"] == 1
        assert first.response(1)[0] == _message(b"done")


def test_idle_connections_are_evicted_at_the_cap():
    """At the cap, a new connection takes the place of the oldest one without a call (GOAWAY
    NO_ERROR), as REST's do: 1,007 idle connections cannot keep everyone else out."""
    with serve(max_connections=2, probe_connections=1) as (listener, port):
        idle = RawClient(port)
        idle.call(1, ECHO, b"a")
        assert idle.response(1)[0] == _message(b"a")
        busy = RawClient(port)
        busy.call(1, SLOW, b"3")
        newcomer = RawClient(port)
        assert idle.goaway() == fr.NO_ERROR
        newcomer.call(1, ECHO, b"n")               # a full connection, not the reserve
        assert newcomer.response(1)[0] == _message(b"n")
        assert busy.response(1)[0] == _message(b"done")
        assert listener.metrics.connection_errors["grpc_evicted"] == 1


def test_request_bytes_are_held_against_the_budget():
    """Request bytes are held as allocated (a bytes object's header included), and given back
    whatever ends the call: a reset, a closed connection while its handler runs."""
    held = {"bytes": 0}
    limit = 300

    class Budget:
        def __init__(self):
            self.mine = 0

        def hold(self, n):
            if held["bytes"] + n > limit:
                raise ServingError(503, "the server holds too many request bytes",
                                   reason="buffer_full")
            held["bytes"] += n
            self.mine += n

        def release(self):
            held["bytes"] -= self.mine
            self.mine = 0

    refusals = []
    with serve(budget=Budget, refused=lambda call, code, message, reason:
               refusals.append((call.method, code, reason))) as (_, port):
        c = RawClient(port)
        c.send(fr.HEADERS, fr.END_HEADERS, 1, c.block(ECHO))
        c.send(fr.DATA, 0, 1, _message(b"x" * 400)[:150])      # 150 bytes held, call open
        c.call(3, ECHO, b"y" * 100)                             # 183 + 138 > 300
        _, trailers = c.response(3)
        assert trailers["grpc-status"] == str(g.UNAVAILABLE)
        assert trailers["retry-after"] == "1"
        assert refusals == [(ECHO, g.UNAVAILABLE, "buffer_full")]
        assert held["bytes"] == sys.getsizeof(b"x" * 150)
        c.send(fr.RST_STREAM, 0, 1, struct.pack(">I", fr.CANCEL))   # gives its bytes back
        c.call(5, ECHO, b"z" * 100)
        assert c.response(5)[0] == _message(b"z" * 100)
        # a call whose handler runs when its connection closes gives its bytes back too
        d = RawClient(port)
        d.call(1, SLOW, b"10")
        deadline = time.monotonic() + 5
        while held["bytes"] != sys.getsizeof(b"x" * 7) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held["bytes"] == sys.getsizeof(b"x" * 7)
        d.close()
        while held["bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held["bytes"] == 0
        c.call(7, ECHO, b"w" * 250)                   # and the whole budget is there again
        assert c.response(7)[0] == _message(b"w" * 250)


# -- the batch window, cancellation, stop ----------------------------------------------------

def test_arrival_runs_from_headers_to_message():
    """`arriving` is called when a call's headers are in; what it returns is called once the
    message is handed over (the handler calls `arrived`) or the call ends any other way."""
    arriving = {"n": 0}

    def begin(call):
        arriving["n"] += 1

        def done():
            arriving["n"] -= 1
        return done

    seen = []

    async def infer(call):
        seen.append(arriving["n"])       # this call, still counted
        call.arrived()
        seen.append(arriving["n"])
        call.send_message(call.message)
        call.finish()

    handlers = Handlers()
    handlers.table = lambda: {ECHO: infer}
    with serve(handlers, arriving=begin) as (_, port):
        c = RawClient(port)
        c.send(fr.HEADERS, fr.END_HEADERS, 1, c.block(ECHO))
        deadline = time.monotonic() + 5
        while arriving["n"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert arriving["n"] == 1                      # headers in, message not yet
        c.send(fr.DATA, fr.END_STREAM, 1, _message(b"m"))
        assert c.response(1)[0] == _message(b"m")
        assert seen == [1, 0]
        c.send(fr.HEADERS, fr.END_HEADERS, 3, c.block(ECHO))   # reset before its message
        c.send(fr.RST_STREAM, 0, 3, struct.pack(">I", fr.CANCEL))
        c.call(5, ECHO, b"n")
        assert c.response(5)[0] == _message(b"n")
        assert arriving["n"] == 0
        # a connection closed while its call is on its way in
        d = RawClient(port)
        d.send(fr.HEADERS, fr.END_HEADERS, 1, d.block(ECHO))
        deadline = time.monotonic() + 5
        while arriving["n"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        d.close()
        while arriving["n"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert arriving["n"] == 0


def test_reset_and_closed_connections_stop_their_handlers():
    handlers = Handlers()
    with serve(handlers) as (_, port):
        c = RawClient(port)
        c.call(1, SLOW, b"10")
        time.sleep(0.2)
        c.send(fr.RST_STREAM, 0, 1, struct.pack(">I", fr.CANCEL))
        d = RawClient(port)
        d.call(1, SLOW, b"10")
        time.sleep(0.2)
        d.close()
        deadline = time.monotonic() + 5
        while handlers.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handlers.cancelled == 2 and handlers.gone_seen == [True, True]
        c.call(3, ECHO, b"still")
        assert c.response(3)[0] == _message(b"still")


def test_stop_lets_running_calls_finish_and_refuses_new_ones():
    handlers = Handlers()
    loop_box = {}
    with serve(handlers) as (listener, port):
        c = RawClient(port)
        c.call(1, SLOW, b"0.4")
        time.sleep(0.1)
        loop_box["loop"] = listener.server.get_loop()
        stopping = asyncio.run_coroutine_threadsafe(listener.stop(5), loop_box["loop"])
        frames = c.until(lambda f: f[0] == fr.GOAWAY)
        assert struct.unpack(">I", frames[-1][3][:4])[0] == 1        # the last call it serves
        c.call(3, ECHO, b"late")                                     # after GOAWAY
        reset = c.until(lambda f: f[0] == fr.RST_STREAM and f[2] == 3)[-1]
        assert struct.unpack(">I", reset[3])[0] == fr.REFUSED_STREAM
        assert c.response(1)[0] == _message(b"done")
        stopping.result(10)
        assert c.frame(timeout=5) is None


def test_a_kept_header_block_means_what_the_table_says_now():
    """The same header block bytes mean another thing once the client's dynamic table has
    changed: a decoded block is reused only while the table stays as it was."""
    with serve() as (_, port):
        c = RawClient(port)
        c.send(fr.HEADERS, fr.END_HEADERS, 1, c.block(ECHO))   # fills the table
        c.send(fr.DATA, fr.END_STREAM, 1, _message(b"512"))
        assert c.response(1)[0] == _message(b"512")
        indexed = c.block(ECHO)                                   # all fields by index now
        assert len(indexed) < 10
        for sid in (3, 5):                                        # decoded, then kept
            c.send(fr.HEADERS, fr.END_HEADERS, sid, indexed)
            c.send(fr.DATA, fr.END_STREAM, sid, _message(b"512"))
            assert c.response(sid)[0] == _message(b"512")
        # a block that adds ":path: /t.S/Big" to the table moves every entry up by one...
        c.send(fr.HEADERS, fr.END_HEADERS, 7, c.block(BIG))
        c.send(fr.DATA, fr.END_STREAM, 7, _message(b"256"))
        assert c.response(7)[0] == _message(bytes(range(256)))
        # ...so the kept bytes now mean another list: ":path: /t.S/Big" (index 62, the newest
        # entry) last, after the regular fields, which is malformed (RFC 9113, 8.3): the
        # stream is reset PROTOCOL_ERROR instead of the kept Echo call being served
        c.send(fr.HEADERS, fr.END_HEADERS, 9, indexed)
        c.send(fr.DATA, fr.END_STREAM, 9, _message(b"512"))
        reset = c.until(lambda f: f[2] == 9)[-1]
        assert reset[0] == fr.RST_STREAM and struct.unpack(">I", reset[3])[0] == \
            fr.PROTOCOL_ERROR
