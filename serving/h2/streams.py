"""A stream's life on the server side (RFC 9113, 5.1) as one table: (state, event) -> (action,
next state). Anything not in the table is an error, and `error_for` names it as RFC 9113 does
(a stream error resets the stream, a connection error ends the connection with GOAWAY); the
table and `ERRORS` are the whole of it, so a missing case shows in review rather than in a
flag combination.

The states are RFC 9113's, with "closed" split by how the stream closed, since what the RFC
allows afterwards depends on it: frames after our own RST_STREAM must be ignored (the peer may
have sent them before it saw the reset), frames after the peer's RST_STREAM or after both
END_STREAMs are STREAM_CLOSED. A stream forgotten after closing (or skipped: a higher stream
id closes every idle lower one) is FORGOTTEN. "half-closed (local)" does not occur: a server
that answers before the request is whole resets the stream (NO_ERROR) after its answer, as
RFC 9113, 8.1 allows, so the client stops sending.

Events are what the peer sends (HEADERS is a whole field block, CONTINUATIONs included) and
what we send that changes the state (our END_STREAM, our RST_STREAM).
"""
from __future__ import annotations

from .frames import PROTOCOL_ERROR, STREAM_CLOSED

# States.
IDLE, OPEN, HALF_CLOSED_REMOTE, CLOSED, RESET_BY_PEER, RESET_BY_US, FORGOTTEN = range(7)
STATE_NAMES = ("idle", "open", "half-closed (remote)", "closed", "closed (peer's RST_STREAM)",
               "closed (our RST_STREAM)", "closed (forgotten)")
# Events: received ...
RECV_HEADERS, RECV_HEADERS_END, RECV_DATA, RECV_DATA_END, RECV_RST, RECV_WINDOW_UPDATE, \
    RECV_PRIORITY = range(7)
# ... and sent.
SEND_END, SEND_RST = 7, 8
EVENT_NAMES = ("HEADERS", "HEADERS+END_STREAM", "DATA", "DATA+END_STREAM", "RST_STREAM",
               "WINDOW_UPDATE", "PRIORITY", "send END_STREAM", "send RST_STREAM")

# Actions: what the connection does.
OPEN_CALL = "open a call"                      # validate the head; the request may follow
OPEN_CALL_ENDED = "open a call, request ended"  # ... and it has no body
RECEIVE = "receive request bytes"
RECEIVE_LAST = "receive the last request bytes"
TRAILERS = "request trailers end the request"
PEER_RESET = "the peer reset the call"         # counted in the reset budget if unanswered
WINDOW = "grow the stream's send window"
IGNORE = "ignore"                              # PRIORITY; WINDOW_UPDATE, RST after close
DISCARD = "discard"                            # after our RST_STREAM: count DATA in the
                                               # connection window, decode HEADERS, drop
FINISH = "answer complete"
FINISH_EARLY = "answer complete before the request: RST_STREAM NO_ERROR"
RESET = "reset the stream"                     # counted in the reset budget

_LIVE = (OPEN, HALF_CLOSED_REMOTE)
_GONE = (CLOSED, RESET_BY_PEER, RESET_BY_US, FORGOTTEN)

#: (state, event) -> (action, next state)
TABLE: dict[tuple[int, int], tuple[str, int]] = {
    (IDLE, RECV_HEADERS): (OPEN_CALL, OPEN),
    (IDLE, RECV_HEADERS_END): (OPEN_CALL_ENDED, HALF_CLOSED_REMOTE),
    (IDLE, RECV_PRIORITY): (IGNORE, IDLE),

    (OPEN, RECV_DATA): (RECEIVE, OPEN),
    (OPEN, RECV_DATA_END): (RECEIVE_LAST, HALF_CLOSED_REMOTE),
    (OPEN, RECV_HEADERS_END): (TRAILERS, HALF_CLOSED_REMOTE),
    (OPEN, SEND_END): (FINISH_EARLY, RESET_BY_US),

    (HALF_CLOSED_REMOTE, SEND_END): (FINISH, CLOSED),

    (CLOSED, RECV_WINDOW_UPDATE): (IGNORE, CLOSED),
    (CLOSED, RECV_RST): (IGNORE, CLOSED),

    (RESET_BY_PEER, RECV_WINDOW_UPDATE): (IGNORE, RESET_BY_PEER),
    (RESET_BY_PEER, RECV_RST): (IGNORE, RESET_BY_PEER),

    (FORGOTTEN, RECV_WINDOW_UPDATE): (IGNORE, FORGOTTEN),
    (FORGOTTEN, RECV_RST): (IGNORE, FORGOTTEN),
}
for _state in _LIVE:
    TABLE[_state, RECV_RST] = (PEER_RESET, RESET_BY_PEER)
    TABLE[_state, RECV_WINDOW_UPDATE] = (WINDOW, _state)
    TABLE[_state, SEND_RST] = (RESET, RESET_BY_US)
for _state in _LIVE + _GONE:
    TABLE[_state, RECV_PRIORITY] = (IGNORE, _state)
for _event in range(RECV_PRIORITY + 1):
    TABLE[RESET_BY_US, _event] = (DISCARD, RESET_BY_US)

#: What is absent from TABLE, by state: (the stream's error, or the connection's: 0, code,
#: why). RFC 9113, 5.1: a frame on an idle stream other than HEADERS or PRIORITY is a
#: connection PROTOCOL_ERROR; after END_STREAM from the peer, or after its RST_STREAM, a
#: stream error STREAM_CLOSED (6.1: DATA on a stream neither open nor half-closed (local));
#: in "open", HEADERS without END_STREAM after the request's head is malformed (8.1).
ERRORS: dict[int, tuple[bool, int, str]] = {
    IDLE: (False, PROTOCOL_ERROR, "frame on an idle stream"),
    OPEN: (True, PROTOCOL_ERROR, "trailers without END_STREAM"),
    HALF_CLOSED_REMOTE: (True, STREAM_CLOSED, "frame after the request's END_STREAM"),
    CLOSED: (True, STREAM_CLOSED, "frame on a closed stream"),
    RESET_BY_PEER: (True, STREAM_CLOSED, "frame after the peer's RST_STREAM"),
    FORGOTTEN: (True, STREAM_CLOSED, "frame on a closed stream"),
}
#: Where the error is the connection's although the state's is the stream's: a field block
#: on a stream that closed cleanly (RFC 9113, 5.1, "closed": its HPACK state may be used
#: for nothing, a connection error STREAM_CLOSED), and a new stream id lower than one
#: already used (5.1.1: PROTOCOL_ERROR).
ERROR_OVERRIDES: dict[tuple[int, int], tuple[bool, int, str]] = {
    (CLOSED, RECV_HEADERS): (False, STREAM_CLOSED, "HEADERS on a closed stream"),
    (CLOSED, RECV_HEADERS_END): (False, STREAM_CLOSED, "HEADERS on a closed stream"),
    (FORGOTTEN, RECV_HEADERS): (False, PROTOCOL_ERROR, "stream id lower than one used"),
    (FORGOTTEN, RECV_HEADERS_END): (False, PROTOCOL_ERROR, "stream id lower than one used"),
}


def error_for(state: int, event: int) -> tuple[bool, int, str]:
    """(on the stream only, error code, why) for an event absent from TABLE."""
    override = ERROR_OVERRIDES.get((state, event))
    if override is not None:
        return override
    if event >= SEND_END:       # we never send on a stream that cannot take it: a bug
        raise RuntimeError(f"{EVENT_NAMES[event]} in state {STATE_NAMES[state]}")
    return ERRORS[state]


def describe() -> str:
    """The table as Markdown rows (docs/protocol.md keeps a copy; a test keeps them equal)."""
    rows = ["| state | event | action | next state |", "| --- | --- | --- | --- |"]
    for (state, event), (action, after) in sorted(TABLE.items()):
        rows.append(f"| {STATE_NAMES[state]} | {EVENT_NAMES[event]} | {action} | "
                    f"{STATE_NAMES[after]} |")
    return "\n".join(rows)
