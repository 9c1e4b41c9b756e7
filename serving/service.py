"""The inference service behind every front end: the model, its batcher, readiness, drain,
auth, metrics and the access log. REST (`app.py`) and gRPC (`grpc_server.py`) only translate
their wire format to and from `protocol.InferRequest` / `InferResponse` and call `infer`."""
from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Callable

import orjson

from .audit import AuditLog
from .auth import Authenticator
from .batcher import Batcher
from .errors import ServingError
from .hooks import BatchTuning, ModelHooks, PeakMemory
from .manifest import Manifest
from .memory import RELEASE_AFTER_BYTES, RELEASE_AFTER_CONNECTIONS, Allocator
from .metrics import Metrics
from .protocol import InferRequest, InferResponse, RequestValidator
from .settings import Settings

SERVER_NAME = "servedmodel"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data",)
RETRY_AFTER = [(b"retry-after", b"1")]


class AccessLog:
    """One JSON line per request on stdout, written in batches so a request costs little."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.lines: list[bytes] = []

    def add(self, record: dict) -> None:
        if self.enabled:
            self.lines.append(orjson.dumps(record) + b"\n")
            if len(self.lines) >= 256:
                self.flush()

    def flush(self) -> None:
        if self.lines:
            data, self.lines = b"".join(self.lines), []
            try:
                os.write(1, data)
            except OSError:
                pass


def outcome_of(status: int) -> str:
    """The `outcome` label of servedmodel_requests_total for an HTTP-like status."""
    return ("success" if status == 200 else "shed" if status == 503 else
            "client_error" if status < 500 else "server_error")


class InferenceService:
    def __init__(self, settings: Settings, model: ModelHooks, manifest: Manifest) -> None:
        self.settings = settings
        self.model = model
        self.manifest = manifest
        self.model_name = settings.model_name or manifest.name
        self.model_version = manifest.version
        self.metrics = Metrics(self.model_name, self.model_version)
        self.log = AccessLog(settings.log_level in ("debug", "info"))
        #: who may call (serving/auth.py), and the record of who did (serving/audit.py)
        self.auth = Authenticator(settings.auth)
        self.audit = AuditLog(settings.audit_log, self.model_name, self.model_version)
        self.validator = RequestValidator(
            manifest, max_rows=settings.batching.max_batch_size,
            max_tensor_bytes=settings.max_body_bytes,
            max_elements=settings.max_request_elements,
            dim_names=getattr(model, "input_dim_names", None) or {})
        self.batcher: Batcher | None = None
        self.draining = False
        self.failed: str | None = None
        #: inference requests accepted and not yet answered (drain waits for them)
        self.accepted = 0
        #: of those, the ones whose body has arrived (the in-flight gauge the autoscaler reads)
        self.inflight = 0
        self.allocator = Allocator()
        self.on_fatal = None              # set by the server: called with a message
        self._background: list[asyncio.Task] = []

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return (not self.draining and self.failed is None and bool(self.model.ready)
                and self.auth.ready)

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        if self.failed:
            return self.failed
        if not self.auth.ready:
            return (f"the OIDC issuer's signing keys are not loaded yet "
                    f"({(self.auth.keys.last_error if self.auth.keys else None) or 'fetching'})")
        return "the model is loading or warming up"

    async def startup(self) -> None:
        self.batcher = Batcher(self.model, self.settings.batching, self.metrics)
        self.batcher.start()
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._flush_logs()))
        self._background.append(loop.create_task(self._release_memory()))
        self.allocator.tune()
        if self.auth.keys is not None:
            # In the background and in a thread: the server listens (live, not ready) meanwhile.
            self.auth.keys.start()
        if not self.model.ready:
            self._background.append(loop.create_task(self._warm_up()))

    async def _warm_up(self) -> None:
        batcher = self.batcher
        assert batcher is not None      # start() made it
        try:
            await batcher.run_blocking(self.model.warm_up)
        except Exception as e:
            self.failed = f"warm-up failed: {type(e).__name__}: {e}"
            if self.on_fatal:
                self.on_fatal(self.failed)
            return
        tuning = self.model if isinstance(self.model, BatchTuning) else None
        if tuning is not None and tuning.preferred_batch_size:
            batcher.prefer(tuning.preferred_batch_size, bool(tuning.run_inline),
                                tuning.warmup_items_per_second)
        if self.log.enabled:
            rates = tuning.warmup_items_per_second if tuning is not None else {}
            self.log.add({"event": "ready", "preferred_batch_size": batcher.max_rows,
                          "inline": batcher.inline,
                          "spinning": tuning.spinning if tuning is not None else None,
                          "warmup_items_per_second": {str(b): round(r, 1)
                                                      for b, r in rates.items()}})
        # Everything allocated so far lives as long as the process: keep it out of the cyclic
        # collector's scans, and scan less often (request handling makes few cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(7000, 20, 20)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.log.flush()
            self.audit.flush()

    async def _release_memory(self) -> None:
        """After a peak (many bytes or connections since the last release, or a model run
        bigger than any warm-up run), once the server has been idle for a second, give memory
        back: a flood or one huge request must not leave the process at its peak RSS."""
        m = self.metrics
        last_bytes, last_conns = m.received_bytes, m.connections_total
        quiet = 0
        while True:
            await asyncio.sleep(0.5)
            busy = m.buffered_bytes > 0 or self.accepted > 0
            quiet = 0 if busy else quiet + 1
            if quiet < 2:
                continue
            model = self.model
            peak = model if isinstance(model, PeakMemory) and model.holds_peak_memory else None
            if peak is None and (m.received_bytes - last_bytes < RELEASE_AFTER_BYTES
                             and m.connections_total - last_conns < RELEASE_AFTER_CONNECTIONS):
                continue
            last_bytes, last_conns = m.received_bytes, m.connections_total
            if peak is not None:
                assert self.batcher is not None     # start() made it
                try:
                    await self.batcher.run_blocking(peak.release_peak_memory)
                except Exception as e:      # the memory stays; serving goes on
                    print(f"serving: giving back a peak run's memory failed: "
                          f"{type(e).__name__}: {str(e)[:300]}", file=sys.stderr, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, self.allocator.release)

    async def shutdown(self) -> None:
        for t in self._background:
            t.cancel()
        if self.batcher:
            await self.batcher.stop()
        if self.auth.keys is not None:
            await self.auth.keys.stop()
        self.log.flush()
        self.audit.close()

    def begin_drain(self) -> None:
        self.draining = True

    def render_metrics(self) -> bytes:
        b = self.batcher
        return self.metrics.render(inflight=self.inflight, queue_depth=b.queued if b else 0,
                                   ready=self.ready)

    def body_budget(self) -> BodyBudget:
        return BodyBudget(self.metrics, self.settings.max_buffered_bytes)

    # -- inference --------------------------------------------------------------------------
    def admit(self) -> None:
        """Refuse a new inference request while draining or not ready (503, Retry-After)."""
        if self.draining:
            raise ServingError(503, "the server is shutting down; retry on another replica",
                               reason="draining", headers=RETRY_AFTER)
        if not self.model.ready or self.failed:
            raise ServingError(503, "the model is not ready yet", reason="not_ready",
                               headers=RETRY_AFTER)

    async def infer(self, request: InferRequest,
                    gone: Callable[[], bool] | None = None) -> InferResponse:
        """Queue a validated request on the batcher; its outputs as an InferResponse. `gone`:
        whether the client has gone away (then the request is dropped, not computed)."""
        batcher = self.batcher
        assert batcher is not None      # start() made it
        results = await batcher.submit(request.feeds, request.rows, request.sig, gone)
        return self.validator.response(self.model_name, self.model_version, request, results)

    def record(self, protocol: str, is_infer: bool, status: int, reason: str | None,
               seconds: float, log: dict) -> None:
        """Count one answered request and add its access-log line."""
        if reason is not None:
            self.metrics.failure(protocol, reason)   # every route: 401s and 404s count too
        if is_infer:
            self.metrics.request(protocol, outcome_of(status), seconds)
        if self.log.enabled:
            log["ms"] = round(seconds * 1000, 3)
            self.log.add(log)


class BodyBudget:
    """One request's share of SERVEDMODEL_MAX_BUFFERED_BYTES, the request body bytes all
    requests together may hold: over it a request is shed (503) instead of growing memory."""

    def __init__(self, metrics: Metrics, limit: int) -> None:
        self.metrics, self.limit, self.held = metrics, limit, 0

    def hold(self, n: int) -> None:
        total = self.metrics.buffered_bytes
        if total + n > self.limit:
            raise ServingError(503, f"the server holds {total} bytes of request bodies (max "
                                    f"{self.limit}, SERVEDMODEL_MAX_BUFFERED_BYTES); retry later",
                               reason="buffer_full",
                               headers=RETRY_AFTER + [(b"connection", b"close")])
        self.metrics.buffered_bytes += n
        self.held += n

    def release(self) -> None:
        self.metrics.buffered_bytes -= self.held
        self.held = 0
