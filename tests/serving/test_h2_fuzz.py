"""Property-based fuzzing of the frame parser and the stream table (hypothesis): whatever bytes
arrive, in whatever pieces (random bytes; generated frame sequences, valid or not; whole calls
to handlers that answer, stream, fail or wait), no exception escapes the connection (none
reaches its catch-all, which would count an "internal" error), and once the connection is
closed every call slot, every budget byte and every call record is given back. Bounded: a
fixed number of examples of a few KB each."""
from __future__ import annotations

import asyncio
import struct

from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from h2client import message
from h2harness import connect, listener
from servedmodel.serving.h2 import frames as fr
from test_h2_differential import VALID, _frame, frame_ops

FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
START = fr.PREFACE + _frame(fr.SETTINGS, 0, 0, b"")


@s.composite
def whole_calls(draw):
    """A call to one of the harness's handlers, whole or cut short or reset."""
    sid = draw(s.sampled_from([1, 3, 5, 7, 9, 11]))
    path = draw(s.sampled_from(["/t/Echo", "/t/Fail", "/t/Stream", "/t/Wait", "/t/Nope"]))
    body = message(draw(s.binary(max_size=200)))
    cut = draw(s.sampled_from([None, None, None, 3, 5]))
    reset = draw(s.sampled_from([False, False, True]))

    def build(encoder: Encoder) -> bytes:
        fields = [(n, path if n == ":path" else v) for n, v in VALID]
        out = _frame(fr.HEADERS, fr.END_HEADERS, sid, encoder.encode(fields))
        out += _frame(fr.DATA, 0 if cut else fr.END_STREAM, sid, body[:cut] if cut else body)
        if reset:
            out += _frame(fr.RST_STREAM, 0, sid, struct.pack(">I", fr.CANCEL))
        return out
    return build


def check(data: bytes, splits: list[int]) -> None:
    async def main():
        held = [0]
        front = listener(held, max_streaming_calls=2, max_calls=3)
        conn, _ = connect(front)
        pieces, last = [], 0
        for cut in sorted({min(c, len(data)) for c in splits}) + [len(data)]:
            pieces.append(data[last:cut])
            last = cut
        for piece in pieces:
            if piece:
                conn.data_received(piece)
            for _ in range(3):
                await asyncio.sleep(0)
        while conn.turn_pending and not conn.closed:
            await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        conn.connection_lost(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert ("internal", "INTERNAL_ERROR") not in front.metrics.protocol_errors
        assert front.running == 0 and front.streaming == 0
        assert held[0] == 0
        assert not conn.calls and conn.active == 0 and not conn.blocked
        assert not front.connections and not front.idle_connections
    asyncio.run(main())


@FUZZ
@given(s.binary(max_size=3000), s.lists(s.integers(0, 3000), max_size=4))
def test_random_bytes_after_the_preface(noise, splits):
    check(START + noise, splits)


@FUZZ
@given(s.lists(s.one_of(frame_ops(), whole_calls()), min_size=1, max_size=30),
       s.lists(s.integers(0, 4000), max_size=6))
def test_generated_frame_sequences(ops, splits):
    encoder = Encoder()
    check(START + b"".join(op(encoder) for op in ops), splits)


@FUZZ
@given(s.lists(whole_calls(), min_size=1, max_size=20), s.lists(s.integers(0, 3000),
                                                                 max_size=6))
def test_whole_calls_in_pieces(ops, splits):
    encoder = Encoder()
    data = b"".join(op(encoder) for op in ops)
    # (stream ids must rise: renumber each call's frames in order)
    check(START + data, splits)
