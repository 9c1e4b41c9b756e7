"""Header blocks: bounded before they are decoded, decoded with `hpack`, and validated as
RFC 9113, 8.2 and 8.3 require of a request.

A field block is scanned (representations walked, no Huffman decoding) before `hpack` sees it:
more fields than `max_fields`, or literal strings that could decode to more than
`max_decoded_bytes` (a Huffman string of n octets decodes to at most 8n/5), end the connection
(ENHANCE_YOUR_CALM) without decoding. What passes is decoded with `max_decoded_bytes` as
hpack's own header-list limit, which stops the classic HPACK bomb (one large table entry
referenced thousands of times) after that many bytes. Blocks of up to `SCAN_ABOVE` octets are
not scanned: at most that many fields of at most 8/5 of it each cost less than the scan.

A client sends the same block for every call once its fields are in the dynamic table, and
decoding is a third of a small call's cost in pure Python: a block that left the table as it
was keeps its validated request head, reused until some block changes the table (which may
change what the kept blocks mean). At most `KEPT_BLOCKS` blocks of at most `KEPT_BLOCK_BYTES`
octets are kept a connection.
"""
from __future__ import annotations

from typing import cast

from hpack import Decoder, HPACKError, OversizedHeaderListError

from .frames import COMPRESSION_ERROR, ENHANCE_YOUR_CALM, connection_error

#: Blocks up to this size are decoded without the scan (see above).
SCAN_ABOVE = 1024
KEPT_BLOCKS = 8
KEPT_BLOCK_BYTES = 256
#: Connection-specific fields (RFC 9113, 8.2.2): a request that carries one is malformed.
CONNECTION_FIELDS = frozenset((b"connection", b"proxy-connection", b"keep-alive",
                               b"transfer-encoding", b"upgrade"))
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
#: Octets a field name may hold (RFC 9113, 8.2.1): visible ASCII but uppercase and ':'.
_NAME_OCTETS = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_DIGITS = b"0123456789"


class Malformed(Exception):
    """A request RFC 9113, 8.1.1 calls malformed: a stream error of type PROTOCOL_ERROR."""


class RequestHead:
    """What a request's header block says, once validated."""

    __slots__ = ("method", "path", "content_type", "content_length", "metadata", "size",
                 "is_grpc")

    def __init__(self, method: bytes, path: bytes, content_type: bytes | None,
                 content_length: int, metadata: list[tuple[bytes, bytes]], size: int) -> None:
        self.method = method
        self.path = path.decode("latin-1")
        self.content_type = content_type
        self.content_length = content_length      # -1: not given
        self.metadata = metadata                  # the regular fields, in order
        self.size = size                          # the header list's size (RFC 9113, 6.5.2)
        self.is_grpc = method == b"POST" and content_type is not None and \
            content_type.startswith(b"application/grpc")


def scan(block: bytes) -> tuple[int, int]:
    """(fields, the most octets its literal strings can decode to) of an HPACK field block,
    without decoding anything (RFC 7541, 6). A block cut short is left to the decoder."""
    fields = bound = i = 0
    n = len(block)
    while i < n:
        first = block[i]
        if first & 0x80:                    # indexed field
            prefix, strings = 0x7F, 0
        elif first & 0x40:                  # literal, incremental indexing
            prefix, strings = 0x3F, 1
        elif first & 0x20:                  # dynamic table size update
            prefix, strings = 0x1F, -1
        else:                               # literal, without / never indexed
            prefix, strings = 0x0F, 1
        index, i = _integer(block, i + 1, first & prefix, prefix)
        if strings < 0:
            continue
        fields += 1
        if strings and index == 0:          # a literal name as well as the value
            strings = 2
        for _ in range(strings):
            if i >= n:
                return fields, bound
            huffman = block[i] & 0x80
            length, i = _integer(block, i + 1, block[i] & 0x7F, 0x7F)
            bound += length * 8 // 5 + 1 if huffman else length
            i += length
    return fields, bound


def _integer(block: bytes, i: int, value: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541, 5.1) whose prefix bits gave `value`, its continuation octets
    from `i`: (the integer, the index after it). Past 28 bits of continuation it stops, leaving
    an oversized integer to the decoder's own error."""
    if value == prefix:
        shift, n = 0, len(block)
        while i < n:
            octet = block[i]
            i += 1
            value += (octet & 0x7F) << shift
            shift += 7
            if not octet & 0x80 or shift > 28:
                break
    return value, i


def _check_field(name: bytes, value: bytes) -> None:
    if not name or (name.translate(None, _NAME_OCTETS) and not (
            name[0] == 0x3A and not name[1:].translate(None, _NAME_OCTETS))):
        raise Malformed(f"field name {name[:64]!r} is empty or holds uppercase letters, "
                        f"controls, spaces or ':'")
    if value and (b"\0" in value or b"\n" in value or b"\r" in value
                  or value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
        raise Malformed(f"the value of {name[:64]!r} holds NUL, CR or LF, or starts or ends "
                        f"with whitespace")


def request_head(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    """Validate a request's field list (RFC 9113, 8.2 and 8.3); raise Malformed."""
    pseudo: dict[bytes, bytes] = {}
    metadata: list[tuple[bytes, bytes]] = []
    size = 0
    content_type = host = None
    content_length = -1
    for name, value in fields:
        size += len(name) + len(value) + 32
        _check_field(name, value)
        if name[0] == 0x3A:
            if metadata:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if name not in REQUEST_PSEUDO:
                raise Malformed(f"pseudo-header {name!r} is not a request's")
            if name in pseudo:
                raise Malformed(f"pseudo-header {name!r} twice")
            pseudo[name] = value
            continue
        if name in CONNECTION_FIELDS:
            raise Malformed(f"connection-specific field {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise Malformed("te other than 'trailers'")
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            if not value or value.translate(None, _DIGITS) or (
                    content_length >= 0 and int(value) != content_length):
                raise Malformed("content-length is not one decimal number")
            content_length = int(value)
        elif name == b"host":
            if host is not None:
                raise Malformed("host twice")
            host = value
        metadata.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        raise Malformed("no :method")
    path = pseudo.get(b":path")
    if method == b"CONNECT":
        if b":scheme" in pseudo or path is not None:
            raise Malformed("CONNECT with :scheme or :path")
        path = b""
    else:
        if b":scheme" not in pseudo:
            raise Malformed("no :scheme")
        if not path:
            raise Malformed("no :path, or an empty one")
    authority = pseudo.get(b":authority")
    if host is not None and authority is not None and host != authority:
        raise Malformed("host differs from :authority")
    return RequestHead(method, path, content_type, content_length, metadata, size)


def check_trailers(fields: list[tuple[bytes, bytes]]) -> None:
    """Request trailers: regular fields only (RFC 9113, 8.1)."""
    for name, value in fields:
        _check_field(name, value)
        if name[0] == 0x3A:
            raise Malformed(f"pseudo-header {name!r} in trailers")
        if name in CONNECTION_FIELDS:
            raise Malformed(f"connection-specific field {name!r}")


class HeaderBlocks:
    """One connection's HPACK decoder, its bounds, and its kept request heads."""

    def __init__(self, max_fields: int, max_decoded_bytes: int) -> None:
        self.max_fields = max_fields
        self.max_decoded_bytes = max_decoded_bytes
        self.decoder = Decoder(max_header_list_size=max_decoded_bytes)
        #: block -> its request head, or why it is malformed
        self.kept: dict[bytes, RequestHead | str] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The field list; an H2Error (a connection error) when the block cannot be decoded
        or is over the bounds. Every block must be decoded, even one whose stream is gone:
        the dynamic table is the connection's."""
        if len(block) > SCAN_ABOVE:
            fields, bound = scan(block)
            if fields > self.max_fields or bound > self.max_decoded_bytes:
                raise connection_error(ENHANCE_YOUR_CALM, f"header block of {fields} fields "
                                       f"that may decode to {bound} bytes", "header_bomb")
        try:
            # raw=True: a list of (bytes, bytes), which hpack annotates as an Iterable
            fields = cast("list[tuple[bytes, bytes]]", self.decoder.decode(block, raw=True))
        except OversizedHeaderListError:
            raise connection_error(ENHANCE_YOUR_CALM, "header list over "
                                   f"{self.max_decoded_bytes} bytes", "header_bomb") from None
        except HPACKError as e:
            raise connection_error(COMPRESSION_ERROR, f"header block: {type(e).__name__}",
                                   "compression") from None
        if len(fields) > self.max_fields:
            raise connection_error(ENHANCE_YOUR_CALM, f"header block of {len(fields)} fields",
                                   "header_bomb")
        return fields

    def request(self, block: bytes) -> RequestHead:
        """The validated head of a request; raises Malformed (a stream error) or H2Error."""
        kept = self.kept.get(block)
        if kept is not None:
            if isinstance(kept, str):
                raise Malformed(kept)
            return kept
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        fields = self.decode(block)
        try:
            head: RequestHead | str = request_head(fields)
        except Malformed as e:
            head = str(e)
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            if len(block) <= KEPT_BLOCK_BYTES:
                if len(self.kept) >= KEPT_BLOCKS:
                    self.kept.clear()
                self.kept[block] = head
        elif self.kept:
            self.kept.clear()
        if isinstance(head, str):
            raise Malformed(head)
        return head

    def trailers(self, block: bytes) -> None:
        fields = self.decode(block)
        self.kept.clear()      # (trailers are rare; the table may have changed)
        check_trailers(fields)
