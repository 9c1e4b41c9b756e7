"""Large JSON bodies parsed and written in pieces.

A 16 MB request of tensor data is one `orjson.loads` call of ~0.3 s (and ~0.8 s on a slower
machine) that holds the interpreter lock from start to end, so running it in the decode
thread does not help the event loop: probes and other requests wait for the whole call. Here
the bulk of such a body, its numeric `data` arrays, is cut out and parsed in pieces of about
256 KiB; between two pieces the event loop gets the lock back. Answers are written the same
way (an `orjson.Fragment` built from pieces).

The piecewise parse is an optimisation, never a second dialect: it is used only when its
result is provably the document `orjson.loads` would return (every cut-out array sits where a
value can stand and parses on its own), and it returns None otherwise, so that the caller
parses the body whole and reports errors exactly as for any other body.
"""
from __future__ import annotations

import os

import numpy as np
import orjson

from .codec import CHUNK_ELEMENTS  # lists and arrays longer than this: freed, written in pieces

#: Bodies below this size are parsed whole: one call is short.
MIN_BYTES = 1024 * 1024
#: An array of numbers (and nested arrays of numbers) at least this long is cut out.
MIN_SPAN_BYTES = 64 * 1024
#: Roughly how many bytes one parse step takes.
PIECE_BYTES = 256 * 1024
#: Structural tokens (brackets, braces, strings) scanned before giving up on the piecewise
#: parse: a body of millions of tiny arrays is parsed whole, not token by token in Python.
MAX_TOKENS = 100_000

_OPEN, _CLOSE, _BRACE, _QUOTE, _BACKSLASH = b"[]{\"\\"


class _Frame:
    """An open array: where it starts, whether it still holds only numbers and arrays, and
    the spans of its child arrays while it does."""
    __slots__ = ("start", "pure", "children")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pure = True
        self.children: list[tuple[int, int, list]] = []


def _numeric_spans(body: bytes) -> list[tuple[int, int, list]] | None:
    """The maximal arrays of numbers in `body`, each as (start, end, child spans), at least
    MIN_SPAN_BYTES long; None when the body has too many tokens to scan."""
    spans: list[tuple[int, int, list]] = []  # (start, end, child spans of the same shape)
    stack: list[_Frame] = []

    def spoil(frame: _Frame) -> None:
        # Its big pure children are maximal now.
        if frame.pure:
            frame.pure = False
            spans.extend(c for c in frame.children if c[1] - c[0] >= MIN_SPAN_BYTES)
            frame.children = []

    codes = np.frombuffer(body, dtype=np.uint8)
    # numpy finds the few structural bytes among millions of digits in short steps; the
    # regular expression engine takes one long step per match.
    where = np.flatnonzero((codes == _OPEN) | (codes == _CLOSE) | (codes == _BRACE)
                           | (codes == _QUOTE))
    if len(where) > MAX_TOKENS:
        return None
    in_string = False
    for pos in where.tolist():
        char = body[pos]
        if in_string:
            if char == _QUOTE:
                escapes = 0
                while body[pos - 1 - escapes] == _BACKSLASH:
                    escapes += 1
                in_string = escapes % 2 == 1
        elif char == _OPEN:
            stack.append(_Frame(pos))
        elif char == _CLOSE:
            if not stack:
                return None
            frame = stack.pop()
            end = pos + 1
            parent = stack[-1] if stack else None
            if frame.pure:
                if parent is not None and parent.pure:
                    parent.children.append((frame.start, end, frame.children))
                elif end - frame.start >= MIN_SPAN_BYTES:
                    spans.append((frame.start, end, frame.children))
            elif parent is not None:
                spoil(parent)
        else:                                               # a string or an object opens
            in_string = char == _QUOTE
            if stack:
                spoil(stack[-1])
    if stack or in_string:
        return None
    spans.sort()
    return spans


def _parse_span(body: bytes, start: int, end: int, children: list) -> list | None:
    """One array of numbers, parsed in pieces; None when it is not valid on its own."""
    out: list = []
    inner_start, inner_end = start + 1, end - 1
    if not children:
        # A flat array: every comma separates two numbers.
        pos = inner_start
        while True:
            cut = body.find(b",", pos + PIECE_BYTES, inner_end)
            last = cut == -1
            piece = body[pos:inner_end if last else cut]
            if not piece.strip() and not (last and pos == inner_start):
                return None                                 # an empty element: ",," or ",]"
            try:
                out.extend(orjson.loads(b"[" + piece + b"]"))
            except orjson.JSONDecodeError:
                return None
            if last:
                break
            pos = cut + 1
        return out
    # Nested: whole child arrays per piece; what lies between the pieces must be one comma.
    if body[inner_start:children[0][0]].strip() or body[children[-1][1]:inner_end].strip():
        return None
    group_start = 0
    for i in range(len(children)):
        last = i == len(children) - 1
        if not last and children[i + 1][1] - children[group_start][0] < PIECE_BYTES:
            continue
        piece = body[children[group_start][0]:children[i][1]]
        try:
            out.extend(orjson.loads(b"[" + piece + b"]"))
        except orjson.JSONDecodeError:
            return None
        if not last and body[children[i][1]:children[i + 1][0]].strip() != b",":
            return None
        group_start = i + 1
    return out


def loads(data: bytes | memoryview) -> object | None:
    """`data` parsed with its large numeric arrays in pieces, or None when the body is small,
    has no such array, or is anything but plainly valid (the caller then parses it whole).

    The cut-out arrays are accepted only as values of `inputs[i]` (`data`, `shape`)."""
    if len(data) < MIN_BYTES:
        return None
    body = bytes(data)
    spans = _numeric_spans(body)
    if not spans:
        return None
    token = os.urandom(8).hex()
    parts, pos = [], 0
    for i, (start, end, _) in enumerate(spans):
        parts += [body[pos:start], b'"\\u0000%s-%d"' % (token.encode(), i)]
        pos = end
    parts.append(body[pos:])
    try:
        doc = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError:
        return None
    placed = {f"\x00{token}-{i}": span for i, span in enumerate(spans)}
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    found = 0
    for entry in inputs if isinstance(inputs, list) else ():
        for key, value in entry.items() if isinstance(entry, dict) else ():
            span = placed.get(value) if isinstance(value, str) else None
            if span is None:
                continue
            parsed = _parse_span(body, *span)
            if parsed is None:
                return None
            entry[key] = parsed
            found += 1
    # A cut-out array anywhere else (or shadowed by a duplicate key): parse the body whole.
    return doc if found == len(spans) else None


def release(value: object) -> None:
    """Empty a list longer than CHUNK_ELEMENTS a piece at a time, so freeing millions of
    numbers does not hold the interpreter lock in one step; anything else is left alone."""
    if not isinstance(value, list) or len(value) <= CHUNK_ELEMENTS:
        return
    while len(value) > CHUNK_ELEMENTS:
        del value[-CHUNK_ELEMENTS:]
    value.clear()


def in_pieces(data: object) -> object:
    """JSON data for `orjson.dumps(..., option=OPT_SERIALIZE_NUMPY)`: a flat array longer than
    CHUNK_ELEMENTS encoded a piece at a time (an orjson.Fragment); anything else unchanged."""
    if not isinstance(data, np.ndarray) or data.size <= CHUNK_ELEMENTS:
        return data
    step = CHUNK_ELEMENTS
    pieces = [orjson.dumps(data[i:i + step], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
              for i in range(0, len(data), step)]
    return orjson.Fragment(b"[" + b",".join(pieces) + b"]")
