"""Flow-control windows (RFC 9113, 5.2 and 6.9), one small object per direction that raises
when the peer breaks its rules: a send window the peer grows past 2^31-1, a receive window
the peer overruns."""
from __future__ import annotations

from .frames import FLOW_CONTROL_ERROR, MAX_WINDOW, H2Error

#: What a window may grant in all when nothing bounds it (a connection's).
MAX_GRANTED = 1 << 62


class SendWindow:
    """How much we may send; the peer grows it (WINDOW_UPDATE, SETTINGS_INITIAL_WINDOW_SIZE)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def grow(self, increment: int, stream: int) -> None:
        """A WINDOW_UPDATE; past 2^31-1 is FLOW_CONTROL_ERROR (of the stream, or the
        connection for stream 0)."""
        size = self.size + increment
        if size > MAX_WINDOW:
            raise H2Error(FLOW_CONTROL_ERROR, "window over 2^31-1", "window_overflow", stream)
        self.size = size

    def shift(self, delta: int, stream: int) -> None:
        """A new SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window by the difference
        (it may go below zero); past 2^31-1 is a connection error (RFC 9113, 6.9.2)."""
        size = self.size + delta
        if size > MAX_WINDOW:
            raise H2Error(FLOW_CONTROL_ERROR, "window over 2^31-1", "window_overflow")
        self.size = size


class ReceiveWindow:
    """How much the peer may send us: `left` of what we granted (the advertised size, then
    our WINDOW_UPDATEs). `consume` raises when a DATA frame is larger than what is left (the
    peer ignored the window); `release` returns the WINDOW_UPDATE increment to send once half
    the window has been used (fewer, larger updates), never granting past `limit` in all
    (a stream whose message is known to be n bytes is granted n, not more)."""

    __slots__ = ("size", "left", "unacked", "granted", "limit")

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size
        self.unacked = 0
        self.granted = size
        self.limit = MAX_GRANTED

    def consume(self, n: int) -> None:
        """(An overrun of a stream's window is a connection error too, as python-hyper h2
        makes it: the peer's flow-control accounting is broken, not one request.)"""
        left = self.left - n
        if left < 0:
            raise H2Error(FLOW_CONTROL_ERROR, f"{n} bytes of DATA with {self.left} bytes of "
                          "window left", "window_overrun")
        self.left = left

    def release(self, n: int) -> int:
        """`n` bytes handed on (or dropped): the increment to announce now, or 0."""
        unacked = self.unacked + n
        if unacked < self.size >> 1:
            self.unacked = unacked
            return 0
        increment = min(unacked, self.limit - self.granted)
        self.unacked = 0
        if increment <= 0:
            return 0
        self.granted += increment
        self.left += increment
        return increment
