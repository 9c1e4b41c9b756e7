"""The HTTP/2 layer's parts on their own (serving/h2/): the stream table, header blocks
bounded before decoding, flow-control windows, and, on a connection fed bytes without a
socket, what no socket test can see exactly: a handler cancelled before it ever started
gives back its call slot and bytes, request bytes are held as allocated, a read of many frames
is processed a turn at a time, an answer is sliced without copies."""
from __future__ import annotations

import asyncio
import struct
import sys

import pytest
from hpack import Encoder

from h2client import frame, message
from h2harness import connect, errors_in, frames, listener
from servedmodel.serving.h2 import connection as h2connection
from servedmodel.serving.h2 import frames as fr
from servedmodel.serving.h2 import streams as st
from servedmodel.serving.h2.flow import ReceiveWindow, SendWindow
from servedmodel.serving.h2.frames import H2Error, parse_settings
from servedmodel.serving.h2.headers import HeaderBlocks, Malformed, request_head, scan

BLOCK = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/t/Wait"),
         (b":authority", b"t"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def request_block(path: str = "/t/Wait", encoder: Encoder | None = None) -> bytes:
    return (encoder or Encoder()).encode([(n, path.encode() if n == b":path" else v)
                                          for n, v in BLOCK])


def opened(sid: int, path: str, payload: bytes | None = b"", encoder=None) -> bytes:
    data = frame(fr.HEADERS, fr.END_HEADERS, sid, request_block(path, encoder))
    if payload is not None:
        data += frame(fr.DATA, fr.END_STREAM, sid, message(payload))
    return data


START = fr.PREFACE + frame(fr.SETTINGS, 0, 0)


# -- the table ------------------------------------------------------------------------------------

def test_every_received_event_in_every_state_is_in_the_table_or_a_named_error():
    for state in range(len(st.STATE_NAMES)):
        for event in range(st.RECV_PRIORITY + 1):
            if (state, event) in st.TABLE:
                continue
            _, code, why = st.error_for(state, event)
            assert code in (fr.PROTOCOL_ERROR, fr.STREAM_CLOSED) and why
    assert st.TABLE[st.RESET_BY_US, st.RECV_DATA][0] is st.DISCARD       # RFC 9113, 5.1
    assert st.error_for(st.IDLE, st.RECV_DATA) == (False, fr.PROTOCOL_ERROR,
                                                  "frame on an idle stream")
    assert st.error_for(st.CLOSED, st.RECV_HEADERS)[:2] == (False, fr.STREAM_CLOSED)
    assert st.error_for(st.FORGOTTEN, st.RECV_HEADERS)[:2] == (False, fr.PROTOCOL_ERROR)
    assert st.error_for(st.HALF_CLOSED_REMOTE, st.RECV_HEADERS_END)[:2] == \
        (True, fr.STREAM_CLOSED)
    with pytest.raises(RuntimeError):
        st.error_for(st.CLOSED, st.SEND_END)


# -- header blocks --------------------------------------------------------------------------------

def test_a_huffman_block_is_refused_from_its_scan_without_being_decoded(monkeypatch):
    blocks = HeaderBlocks(max_fields=100, max_decoded_bytes=10_000)
    huge = Encoder().encode([("x-a", "a" * 20_000)], huffman=True)
    assert len(huge) < 20_000 and scan(huge)[1] > 20_000
    monkeypatch.setattr(blocks.decoder, "decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(H2Error) as e:
        blocks.decode(huge)
    assert e.value.code == fr.ENHANCE_YOUR_CALM and e.value.kind == "header_bomb"
    bomb = Encoder().encode([("x", "a" * 4000)], huffman=False) + b"\xbe" * 5000
    assert scan(bomb)[0] == 5001
    with pytest.raises(H2Error):
        blocks.decode(bomb)


def test_scan_counts_as_the_decoder_does():
    fields = [("x-%d" % i, "v" * i) for i in range(50)] + [(":path", "/t")]
    for huffman in (False, True):
        block = Encoder().encode(fields, huffman=huffman)
        count, bound = scan(block)
        assert count == len(fields)
        assert bound >= sum(len(n) + len(v) for n, v in fields) - 200    # (indexed names)


@pytest.mark.parametrize("fields", [
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"X-A", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"a b", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x:y", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x", b" 1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x", b"1\r")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x", b"\x001")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"),
     (b"content-length", b"+1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":authority", b"a"),
     (b"host", b"b")],
    [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":authority", b"a")],
])
def test_more_malformed_fields(fields):
    with pytest.raises(Malformed):
        request_head(fields)


def test_a_valid_head():
    head = request_head(BLOCK + [(b"content-length", b"12"), (b"x-a", b"")])
    assert head.is_grpc and head.path == "/t/Wait" and head.content_length == 12
    assert head.metadata[0] == (b"content-type", b"application/grpc")


# -- windows --------------------------------------------------------------------------------------

def test_windows_raise_on_what_the_peer_breaks():
    send = SendWindow(65535)
    send.grow(2 ** 31 - 1 - 65535, 3)
    with pytest.raises(H2Error) as e:
        send.grow(1, 3)
    assert (e.value.code, e.value.stream) == (fr.FLOW_CONTROL_ERROR, 3)
    receive = ReceiveWindow(100)
    receive.limit = 120
    receive.consume(60)
    assert receive.release(60) == 20                # granted up to the limit, not more
    receive.consume(60)
    with pytest.raises(H2Error) as e:
        receive.consume(1)
    assert (e.value.code, e.value.stream) == (fr.FLOW_CONTROL_ERROR, 0)


def test_settings_with_many_entries_are_one_pass():
    payload = b"".join(struct.pack(">HI", 4, 1000 + i) for i in range(2730))
    assert parse_settings(0, 0, payload) == {4: 1000 + 2729}
    with pytest.raises(H2Error):
        parse_settings(0, 0, payload + struct.pack(">HI", 2, 2))       # ENABLE_PUSH 2


# -- a connection fed bytes -----------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def test_a_handler_cancelled_before_it_started_gives_back_its_slot_and_bytes():
    """The rapid-reset leak: the call's task exists but its coroutine never ran; its slot and
    bytes come back by the task's done-callback all the same (and for a handler cancelled
    mid-way, one that failed, one that finished, one cancelled by a closed connection)."""
    async def main():
        held = [0]
        front = listener(held)
        conn, _ = connect(front)
        conn.data_received(START + opened(1, "/t/Wait", b"x" * 100))
        assert front.running == 1 and held[0] > 100     # the task exists, not yet started
        task = conn.calls[1].task
        assert task is not None and not task.done()
        conn.data_received(frame(fr.RST_STREAM, 0, 1, struct.pack(">I", fr.CANCEL)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.cancelled()
        assert front.running == 0 and held[0] == 0 and not conn.calls
        # mid-way, failed, finished
        conn.data_received(opened(3, "/t/Wait", b"y") + opened(5, "/t/Fail", b"z")
                           + opened(7, "/t/Echo", b"w"))
        await asyncio.sleep(0.01)
        assert front.running == 1
        conn.data_received(frame(fr.RST_STREAM, 0, 3, struct.pack(">I", fr.CANCEL)))
        await asyncio.sleep(0.01)
        assert front.running == 0 and held[0] == 0 and not conn.calls
        # a connection closed while its handlers run
        conn.data_received(opened(9, "/t/Wait", b"v") + opened(11, "/t/Stream", b""))
        await asyncio.sleep(0)
        conn.connection_lost(None)
        await asyncio.sleep(0.01)
        assert front.running == front.streaming == 0 and held[0] == 0 and not conn.calls
    run(main())


def test_request_bytes_are_held_as_allocated():
    """2-byte DATA frames used 27x the memory the budget counted (a bytes object and a list
    slot each): they are now one bytearray, held at its allocated size."""
    async def main():
        held = [0]
        front = listener(held)
        conn, _ = connect(front)
        body = message(b"m" * 4000)
        data = START + frame(fr.HEADERS, fr.END_HEADERS, 1, request_block())
        data += b"".join(frame(fr.DATA, 0, 1, body[i:i + 2]) for i in range(0, 2000, 2))
        conn.data_received(data)
        while conn.turn_pending:
            await asyncio.sleep(0)
        call = conn.calls[1]
        assert type(call.body) is bytearray and len(call.body) == 2000
        assert held[0] == sys.getsizeof(call.body) == call.charged
        conn.connection_lost(None)
        assert held[0] == 0
    run(main())


def test_a_read_of_many_frames_is_processed_a_turn_at_a_time():
    async def main():
        front = listener()
        conn, transport = connect(front)
        body = message(b"m" * 2000)
        data = START + frame(fr.HEADERS, fr.END_HEADERS, 1, request_block("/t/Echo"))
        data += b"".join(frame(fr.DATA, 0, 1, body[i:i + 1]) for i in range(len(body) - 1))
        data += frame(fr.DATA, fr.END_STREAM, 1, body[-1:])
        conn.data_received(data)
        assert conn.turn_pending and not transport.reading      # yielded, reading paused
        assert 0 < len(conn.calls[1].body or b"") <= h2connection.TURN_FRAMES
        turns = 1
        while conn.turn_pending:
            await asyncio.sleep(0)
            turns += 1
        assert turns >= len(body) // h2connection.TURN_FRAMES and transport.reading
        await asyncio.sleep(0.01)
        answer = b"".join(p for k, _, s, p in frames(transport.written) if k == fr.DATA)
        assert answer == body
    run(main())


def test_an_answer_is_sliced_without_copies():
    """A large answer held back by the client's window is written in pieces that are views of
    the one buffer (a copy per frame made a 32 MiB answer quadratic)."""
    async def main():
        front = listener()
        conn, transport = connect(front)
        conn.data_received(START + frame(fr.SETTINGS, 0, 0, struct.pack(">HI", 4, 16384))
                           + opened(1, "/t/Wait", b""))
        call = conn.calls[1]
        payload = bytes(range(256)) * 4096                    # 1 MiB
        call.send_message(payload)
        views = [p for p in conn.out if isinstance(p, memoryview)] or \
            [p for p in call.pending if isinstance(p, memoryview)]
        assert views and all(v.obj is payload for v in views)
        for _ in range(70):
            conn.data_received(frame(fr.WINDOW_UPDATE, 0, 1, struct.pack(">I", 16384))
                               + frame(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", 16384)))
        written = b"".join(p for k, _, s, p in frames(transport.written) if k == fr.DATA)
        assert written[5:] == payload
        conn.connection_lost(None)
    run(main())


def test_a_protocol_error_never_escapes_and_is_counted():
    async def main():
        front = listener()
        conn, transport = connect(front)
        conn.data_received(START + frame(fr.DATA, 0, 0, b"x"))
        assert errors_in(transport.written) == [("goaway", 0, fr.PROTOCOL_ERROR)]
        assert front.metrics.protocol_errors == {("bad_stream_id", "PROTOCOL_ERROR"): 1}
    run(main())


def test_the_documented_table_is_the_table():
    from serverkit import ROOT
    assert st.describe() in (ROOT / "docs" / "protocol.md").read_text(), \
        "docs/protocol.md's stream table is stale: paste serving.h2.streams.describe()"
