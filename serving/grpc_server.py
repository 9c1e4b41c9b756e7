"""The Open Inference Protocol (KServe V2) gRPC front end: `inference.GRPCInferenceService`
and the standard `grpc.health.v1.Health`, on our HTTP/2 layer (`h2/`) in the same event
loop as REST, so both share one `InferenceService` (batcher, limits, auth, metrics, access
log, drain).

Errors map to status codes as Triton's do (`h2.grpc.STATUS_OF_HTTP`); message sizes are limited
explicitly (SERVEDMODEL_MAX_BODY_BYTES both ways: RESOURCE_EXHAUSTED above it).
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from typing import Any, cast

from google.protobuf.message import DecodeError

from .auth import ANONYMOUS, AuthError, Identity, UnknownKey
from .batcher import Arrival
from .errors import ServingError, StartupError
from .grpc_health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthCheckRequest, HealthCheckResponse
from .h2 import Call, GrpcLimits, GrpcListener
from .h2.grpc import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    RETRY,
    STATUS_NAMES,
    STATUS_OF_HTTP,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
)
from .protocol import request_from_grpc, response_to_grpc
from .routes import RouteTable
from .service import EXTENSIONS, SERVER_NAME, SERVER_VERSION, InferenceService
from .settings import Settings
from .v2grpc import grpc_predict_v2_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
HEALTH = "/grpc.health.v1.Health/"
#: The one RPC whose calls feed the batcher.
INFER_METHOD = SERVICE + "ModelInfer"
#: Health service names: "" and the inference service follow readiness (a readiness probe);
#: "live" is SERVING while the process runs (a liveness probe must not fail during warm-up).
READINESS_SERVICES = ("", "inference.GRPCInferenceService")
LIVENESS_SERVICE = "live"
#: How often a Watch call looks at the server's state.
WATCH_SECONDS = 0.1
#: A gRPC status -> the HTTP-like status the metrics and access log count it as.
HTTP_OF_STATUS = {CANCELLED: 400, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 408, NOT_FOUND: 404,
                  RESOURCE_EXHAUSTED: 413, UNIMPLEMENTED: 400, INTERNAL: 400, UNAVAILABLE: 503,
                  UNAUTHENTICATED: 401, PERMISSION_DENIED: 403}
#: The calls a connection taken from the reserve over the connection cap may make: the
#: probes' (a Watch lasts, so it may not hold the reserve).
PROBE_METHODS = frozenset({HEALTH + "Check", SERVICE + "ServerLive", SERVICE + "ServerReady"})
#: Calls that last: counted apart from unary calls (SERVEDMODEL_MAX_STREAMING_CALLS).
STREAMING_METHODS = frozenset({HEALTH + "Watch"})
#: Calls that need no token (the probes' and the health service).
OPEN_METHODS = frozenset({HEALTH + "Check", HEALTH + "Watch", SERVICE + "ServerLive",
                          SERVICE + "ServerReady"})


#: `Call.identity` of a call whose token names a key the issuer's set is being refreshed for:
#: judged when the call runs (`Authenticator.authenticate_async` waits for the refresh).
PENDING = object()


def grpc_limits(s: Settings, max_message_bytes: int,
                max_connections: int | None = None) -> GrpcLimits:
    """The REST connection limits, in gRPC's terms (docs/protocol.md, "Limits");
    `max_connections`: the cap as the descriptor budget left it (`ensure_descriptors`)."""
    return replace(GrpcLimits.from_settings(s), max_message_bytes=max_message_bytes,
                   max_calls=s.max_connections,
                   max_connections=max_connections or s.max_connections,
                   max_streaming_calls=s.max_streaming_calls,
                   request_timeout=s.request_timeout_seconds)


def _log_record(path: str, status: int, code: int | None) -> dict:
    """A gRPC call's access-log line (its duration is filled in by `InferenceService.record`);
    `code`: the gRPC status of a failed call."""
    record = {"ts": round(time.time(), 3), "protocol": "grpc", "method": "POST", "path": path,
              "status": status, "ms": 0.0}
    if code is not None:
        record["grpc_code"] = STATUS_NAMES[code]
    return record


class _Health:
    """grpc.health.v1.Health: Check reads the server's state when asked; Watch sends it again
    each time it changes (looked at every WATCH_SECONDS)."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def status_of(self, name: str):
        if name == LIVENESS_SERVICE:
            return SERVING
        if name in READINESS_SERVICES:
            return SERVING if self.service.ready else NOT_SERVING
        return None

    @staticmethod
    def _request(call: Call) -> Any:  # a HealthCheckRequest, a class built at import: untyped
        try:
            return HealthCheckRequest.FromString(call.message)
        except DecodeError:
            call.finish(INVALID_ARGUMENT, "the request is not a grpc.health.v1."
                                          "HealthCheckRequest")
            return None

    async def check(self, call: Call) -> None:
        request = self._request(call)
        if request is None:
            return
        status = self.status_of(request.service)
        if status is None:
            call.finish(NOT_FOUND, f"unknown service {request.service[:64]!r}; known: "
                           f"{', '.join(repr(s) for s in READINESS_SERVICES)}, "
                           f"{LIVENESS_SERVICE!r}")
            return
        call.reply(HealthCheckResponse(status=status).SerializeToString())

    async def watch(self, call: Call) -> None:
        request = self._request(call)
        if request is None:
            return
        last = None
        while True:       # until the client cancels or the server stops
            status = self.status_of(request.service)
            if status is None:
                status = SERVICE_UNKNOWN
            if status != last:
                call.send_message(
                    HealthCheckResponse(status=status).SerializeToString())
                last = status
            await asyncio.sleep(WATCH_SECONDS)


class _Inference:
    """The V2 RPCs. Each parses its request message, runs through `_call` (auth, errors,
    metrics, access log) and answers one message."""

    def __init__(self, service: InferenceService, routes: RouteTable, metadata,
                 max_message_bytes: int) -> None:
        self.service = service
        self.routes = routes
        self._model_metadata = metadata
        self.max_message_bytes = max_message_bytes

    def handlers(self) -> dict:
        def rpc(name: str, message, handler, *, infer: bool = False):
            async def run(call: Call) -> None:
                await self._call(name, call, message, handler, infer=infer)
            return SERVICE + name, run
        return dict((
            rpc("ServerLive", pb.ServerLiveRequest, self.server_live),
            rpc("ServerReady", pb.ServerReadyRequest, self.server_ready),
            rpc("ModelReady", pb.ModelReadyRequest, self.model_ready),
            rpc("ServerMetadata", pb.ServerMetadataRequest, self.server_metadata),
            rpc("ModelMetadata", pb.ModelMetadataRequest, self.model_metadata),
            rpc("ModelInfer", pb.ModelInferRequest, self.model_infer, infer=True),
        ))

    def authorize(self, call: Call) -> None:
        """The call's token, checked on its HEADERS (the connection layer calls this before
        it keeps any of the request's bytes) with the same `Authenticator` as REST: every
        method but `OPEN_METHODS` needs one, unknown methods included. The caller goes on the
        call (`call.identity`) for its audit record. A JWT signed with a key the issuer has
        just published (a refresh of its key set is under way) is judged when the call runs,
        after the refresh, so a key rotation does not fail the first calls."""
        auth = self.service.auth
        if call.method in OPEN_METHODS:
            return
        if not auth.enabled:
            call.identity = ANONYMOUS
            return
        try:
            call.identity = auth.authenticate(call.header(b"authorization"))
        except UnknownKey:
            if auth.keys is None or not auth.keys.refreshing:
                raise
            call.identity = PENDING
        except AuthError as e:
            call.identity = e.identity            # a 403 names whom it refused
            raise

    async def _call(self, rpc: str, call: Call, message, handler, *, infer: bool) -> None:
        """Run one RPC: the handler, metrics and the access log (auth ran on the call's
        HEADERS, `authorize`); a ServingError becomes the mapped status code with its
        message."""
        svc = self.service
        t0 = time.perf_counter()
        status, reason, extra, data, cancelled = 200, None, None, b"", None
        code, message_text = INTERNAL, ""  # each failure sets both
        try:
            if call.identity is PENDING:
                call.identity = None
                call.identity = await svc.auth.authenticate_async(call.header(b"authorization"))
            try:
                request = message.FromString(call.message)
            except DecodeError:
                raise ServingError(400, f"the request is not a valid inference."
                                        f"{message.__name__}") from None
            response, extra = await handler(request, call)
            data = response.SerializeToString()
            if len(data) > self.max_message_bytes:
                # The request's limit, the other way too (a client's own default is 4 MiB).
                raise ServingError(413, f"the response of {len(data)} bytes is larger than max "
                                        f"({self.max_message_bytes} bytes, "
                                        f"SERVEDMODEL_MAX_BODY_BYTES)",
                                   reason="response_too_large")
        except asyncio.CancelledError as e:
            # The client reset the call or closed its connection (or its deadline passed):
            # the layer cancels this task, which also cancels its place in the batcher's
            # queue (never computed). Counted and logged like any failed call.
            status, reason, code, cancelled = 400, "abandoned", CANCELLED, e
        except ServingError as e:
            status, reason, message_text = e.status, e.reason, e.message
            code = STATUS_OF_HTTP.get(e.status, INTERNAL)
            if isinstance(e, AuthError):
                call.identity = e.identity
        except Exception as e:  # a bug: answer INTERNAL with a message, keep serving
            status, reason, code = 500, "internal", INTERNAL
            message_text = f"internal error: {type(e).__name__}"
            print(f"serving: internal error in gRPC {rpc}: {e!r}", file=sys.stderr)
        record = _log_record(SERVICE + rpc, status, code if status != 200 else None)
        if extra:
            record.update(extra)
        seconds = time.perf_counter() - t0
        svc.record("grpc", infer, status, reason, seconds, record)
        if svc.audit.enabled and call.method not in OPEN_METHODS:    # probes: not audited
            svc.audit.add(protocol="grpc", method="POST", path=SERVICE + rpc, status=status,
                          seconds=seconds, identity=cast("Identity | None", call.identity), reason=reason,
                          grpc_code=STATUS_NAMES[code] if status != 200 else "OK",
                          traceparent=call.header(b"traceparent"),
                          rows=extra.get("rows") if extra else None,
                          bytes_in=extra.get("bytes_in") if extra else len(call.message),
                          bytes_out=len(data) if status == 200 else 0)
        if cancelled is not None:
            raise cancelled
        if status != 200:
            call.finish(code, message_text, RETRY if status == 503 else ())
            return
        call.reply(data)

    def refused(self, call: Call, code: int, message: str, reason: str) -> None:
        """A call the connection layer answered itself (a limit, a malformed call)."""
        status = HTTP_OF_STATUS.get(code, 400)
        svc = self.service
        svc.record("grpc", call.method == INFER_METHOD, status, reason, 0.0,
                   _log_record(call.method[:256], status, code))
        if svc.audit.enabled and call.method not in OPEN_METHODS:
            identity = call.identity if call.identity is not PENDING else None
            svc.audit.add(protocol="grpc", method="POST", path=call.method, status=status,
                          seconds=0.0, identity=cast("Identity | None", identity), reason=reason,
                          grpc_code=STATUS_NAMES[code], traceparent=call.header(b"traceparent"),
                          bytes_out=0)

    # -- health and metadata ----------------------------------------------------------------
    async def server_live(self, request, call):
        return pb.ServerLiveResponse(live=True), None

    async def server_ready(self, request, call):
        return pb.ServerReadyResponse(ready=self.service.ready), None

    async def model_ready(self, request, call):
        self.routes.check_model(request.name, request.version, bool(request.version))
        return pb.ModelReadyResponse(ready=self.service.ready), None

    async def server_metadata(self, request, call):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=list(EXTENSIONS)), None

    async def model_metadata(self, request, call):
        self.routes.check_model(request.name, request.version, bool(request.version))
        return self._model_metadata, None

    # -- inference --------------------------------------------------------------------------
    async def model_infer(self, request, call: Call):
        svc = self.service
        try:
            self.routes.check_model(request.model_name, request.model_version,
                                    bool(request.model_version))
            svc.admit()
        except ServingError:
            call.arrived()
            raise
        svc.accepted += 1           # a gRPC message arrives whole: accepted and in flight
        svc.inflight += 1
        try:
            try:
                req = request_from_grpc(request, svc.validator)
            finally:
                call.arrived()      # queued next (or refused): no longer on its way in
            response = await svc.infer(req, call.gone)
        finally:
            svc.accepted -= 1
            svc.inflight -= 1
        return (response_to_grpc(response, pb.ModelInferResponse),
                {"bytes_in": req.bytes_in, "rows": req.rows})


class GrpcFrontEnd:
    """The gRPC server of one InferenceService, started and stopped by the app's lifespan."""

    def __init__(self, service: InferenceService, host: str, port: int,
                 max_message_bytes: int) -> None:
        self.service = service
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        #: the connection cap, once the descriptor budget has set it (`server.serve`)
        self.max_connections: int | None = None
        self.listener: GrpcListener | None = None
        self.bound_port: int | None = None

    def _metadata(self):
        m, svc = self.service.manifest, self.service

        def tensors(specs):
            return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype,
                                                            shape=list(t.shape)) for t in specs]
        return pb.ModelMetadataResponse(name=svc.model_name, versions=[svc.model_version],
                                        platform=m.platform, inputs=tensors(m.inputs),
                                        outputs=tensors(m.outputs))

    def _arriving(self, call: Call):
        """ModelInfer calls count for the batch window (`Batcher.arriving`) from their headers
        until their message is decoded, as a REST request does while its body is read."""
        batcher = self.service.batcher
        if call.method == INFER_METHOD and batcher is not None:
            return Arrival(batcher).done
        return None

    async def start(self) -> None:
        svc = self.service
        inference = _Inference(svc, RouteTable(svc.model_name, svc.model_version),
                               self._metadata(), self.max_message_bytes)
        health = _Health(svc)
        handlers = inference.handlers()
        handlers[HEALTH + "Check"] = health.check
        handlers[HEALTH + "Watch"] = health.watch
        limits = grpc_limits(svc.settings, self.max_message_bytes, self.max_connections)
        self.listener = GrpcListener(limits, handlers, metrics=svc.metrics,
                                     budget=svc.body_budget, authorize=inference.authorize,
                                     arriving=self._arriving, refused=inference.refused,
                                     probe_methods=PROBE_METHODS,
                                     streaming_methods=STREAMING_METHODS)
        address = f"{self.host}:{self.port}"
        try:
            self.bound_port = await self.listener.start(self.host, self.port)
        except OSError as e:
            raise StartupError(f"gRPC cannot listen on {address}: {e.strerror or e}") from None

    async def stop(self, grace: float) -> None:
        """Stop listening; calls still running get `grace` seconds to finish."""
        if self.listener is not None:
            await self.listener.stop(grace)
