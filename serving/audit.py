"""The audit stream: one JSON line per request to the model routes, REST and gRPC, answered or
refused (401, 403, 400, 404, 413, 503, ...), naming the caller and never a secret.

A record holds who called (`client`, `auth`, and a JWT's `sub`/`azp`), what they called
(`model`, `model_version`, `protocol`, `method`, `path`), the request's ids (`request_id`,
made here; `trace_id` from a W3C `traceparent`), how it ended (`status`, `grpc_code`, `reason`)
and its size and time (`rows`, `bytes_in`, `bytes_out`, `ms`). No token, no header value
(the trace id is checked to be 32 hex digits), no tensor data. Probes and metrics scrapes are
not audited: they are open, name no caller, and the kubelet sends them every few seconds.

SERVEDMODEL_AUDIT_LOG: a file (opened at start for appending, mode 0600; a file that cannot be
opened stops the server before it listens) or `-` for stdout, where every record carries
`"log": "audit"` so a log shipper can route the stream apart from the access log. Records are
written in batches (every FLUSH_SECONDS or FLUSH_RECORDS), with one write call each, and the
server writes what is left on SIGTERM after the drain, and at exit (`close`).
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import time
from datetime import UTC, datetime

import orjson

from .auth import Identity
from .errors import StartupError

FLUSH_SECONDS = 0.25
FLUSH_RECORDS = 256
#: Paths (REST) and RPCs (gRPC) that are never audited: probes and scraping.
UNAUDITED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NOBODY = {"client": None, "auth": None}
#: Seconds between two stderr lines about a failing audit write.
COMPLAIN_SECONDS = 60.0


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id of a W3C traceparent value, or None (absent, malformed, all zeros)."""
    if not traceparent:
        return None
    m = _TRACEPARENT.match(traceparent.strip())
    if m is None or m.group(1) == b"0" * 32:
        return None
    return m.group(1).decode()


class AuditLog:
    """Where the records go; `enabled` False when SERVEDMODEL_AUDIT_LOG is unset."""

    def __init__(self, target: str | None, model: str, version: str) -> None:
        self.target = target
        self.enabled = target is not None
        self.model, self.version = model, version
        self._lines: list[bytes] = []
        self._fd: int | None = None
        self._complained = float("-inf")
        self.written = 0
        self.failed = 0
        # Request ids: random per process, then a counter (unique, and cheaper than uuid4).
        self._prefix = os.urandom(6).hex()
        self._counter = 0
        if target == "-":
            self._fd = 1
        elif target is not None:
            try:
                self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o600)
            except OSError as e:
                raise StartupError(f"SERVEDMODEL_AUDIT_LOG {target} cannot be opened for "
                                   f"appending: {e.strerror}") from None
        if self.enabled:
            atexit.register(self.close)

    def request_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"

    def add(self, *, protocol: str, method: str, path: str, status: int, seconds: float,
            identity: Identity | None, request_id: str | None = None,
            traceparent: bytes | None = None, grpc_code: str | None = None,
            reason: str | None = None, rows: int | None = None, bytes_in: int | None = None,
            bytes_out: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {"log": "audit",
                  "time": datetime.fromtimestamp(now, UTC).isoformat(
                      timespec="milliseconds").replace("+00:00", "Z"),
                  "request_id": request_id or self.request_id(),
                  "trace_id": trace_id(traceparent),
                  # None: not authenticated (refused, or a path that needs no auth)
                  **(identity.audit_fields() if identity is not None else _NOBODY),
                  "model": self.model, "model_version": self.version,
                  "protocol": protocol, "method": method, "path": path[:256],
                  "status": status, "grpc_code": grpc_code, "reason": reason,
                  "rows": rows, "bytes_in": bytes_in, "bytes_out": bytes_out,
                  "ms": round(seconds * 1000, 3)}
        self._lines.append(orjson.dumps(record) + b"\n")
        if len(self._lines) >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if not self._lines or self._fd is None:
            return
        data, lines = b"".join(self._lines), len(self._lines)
        self._lines = []
        view = memoryview(data)
        try:
            while view:                       # a pipe or a full disk may take part of it
                n = os.write(self._fd, view)
                view = view[n:]
            self.written += lines
        except OSError as e:
            self.failed += lines
            now = time.monotonic()
            if now - self._complained >= COMPLAIN_SECONDS:
                self._complained = now
                print(f"serving: audit records could not be written to {self.target}: "
                      f"{e.strerror} ({self.failed} lost so far)", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Write what is left and sync a file; called after the drain (the server's SIGTERM
        path) and again at exit, for anything recorded after it. The descriptor stays open
        until the process ends."""
        self.flush()
        if self._fd is not None and self._fd != 1:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
