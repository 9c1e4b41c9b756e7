"""Giving memory back after a peak (a flood of connections, a large request).

Two things keep RSS high after a peak in a CPython server: objects in reference cycles wait
for a full collection (rare here: the warm-up freezes the long-lived objects and raises the
collection threshold), and glibc keeps freed heap pages (its dynamic mmap threshold also
climbs after large frees, so later large buffers come from the heap instead of mmap).
`Allocator.tune` pins the mmap threshold so large buffers (bodies, tensors) are unmapped when
freed; `Allocator.release` runs a collection and `malloc_trim(0)`."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

#: Buffers at least this big are mmapped by glibc and returned to the system when freed.
MMAP_THRESHOLD = 1024 * 1024
#: Receive this many bytes (or take this many connections), then be idle for a second:
#: memory is released (a collection and a trim cost milliseconds, so not after every request).
RELEASE_AFTER_BYTES = 8 * 1024 * 1024
RELEASE_AFTER_CONNECTIONS = 2000
_M_MMAP_THRESHOLD = -3


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None         # not glibc (musl, macOS): nothing to tune
    return libc


class Allocator:
    def __init__(self) -> None:
        self._libc = _libc()

    def tune(self) -> None:
        if self._libc is not None:
            self._libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)

    def release(self) -> None:
        """Collect cycles (frozen objects are skipped) and hand free heap pages back."""
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
