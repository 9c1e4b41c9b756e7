"""The Open Inference Protocol (KServe V2) gRPC front end: `inference.GRPCInferenceService`
and the standard `grpc.health.v1.Health`, on grpc.aio in the same event loop as REST, so both
share one `InferenceService` (batcher, limits, auth, metrics, access log, drain).

Errors map to status codes as Triton's do (`STATUS_CODES`); message sizes are limited
explicitly (SERVEDMODEL_MAX_BODY_BYTES both ways; grpc answers RESOURCE_EXHAUSTED above it).
"""
from __future__ import annotations

import asyncio
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .errors import ServingError, StartupError
from .grpc_arrivals import CountArrivals, arrived
from .protocol import request_from_grpc, response_to_grpc
from .routes import RouteTable
from .service import EXTENSIONS, SERVER_NAME, SERVER_VERSION, InferenceService
from .v2grpc import grpc_predict_v2_pb2 as pb
from .v2grpc import grpc_predict_v2_pb2_grpc as pb_grpc

#: HTTP-like status of a ServingError -> gRPC status code.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: Health service names: "" and the inference service follow readiness (a readiness probe);
#: "live" is SERVING while the process runs (a liveness probe must not fail during warm-up).
READINESS_SERVICES = ("", "inference.GRPCInferenceService")
LIVENESS_SERVICE = "live"


def _auth_header(context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else value
    return None


class _Health(health_aio.HealthServicer):
    """grpc.health.v1.Health whose Check reads the server's state when asked; Watch follows it
    through `follow` (polled, ~0.1 s behind)."""

    def __init__(self, service: InferenceService) -> None:
        super().__init__()
        self.service = service

    def status_of(self, name: str):
        if name == LIVENESS_SERVICE:
            return health_pb2.HealthCheckResponse.SERVING
        if name in READINESS_SERVICES:
            return (health_pb2.HealthCheckResponse.SERVING if self.service.ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING)
        return None

    async def Check(self, request, context):
        status = self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service[:64]!r}; known: "
                                f"{', '.join(repr(s) for s in READINESS_SERVICES)}, "
                                f"{LIVENESS_SERVICE!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def follow(self) -> None:
        last = None
        while True:
            ready = self.service.ready
            if ready != last:
                for name in READINESS_SERVICES + (LIVENESS_SERVICE,):
                    await self.set(name, self.status_of(name))
                last = ready
            await asyncio.sleep(0.1)


class _Inference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, routes: RouteTable, metadata) -> None:
        self.service = service
        self.routes = routes
        self._model_metadata = metadata

    async def _call(self, rpc: str, context, handler, *, auth: bool, infer: bool = False):
        """Run one RPC: auth, the handler, metrics and the access log; a ServingError becomes
        the mapped status code with its message."""
        svc = self.service
        t0 = time.perf_counter()
        status, reason, extra, response, cancelled = 200, None, None, None, None
        try:
            if auth and svc.auth_required:
                svc.authorize(_auth_header(context))
            response, extra = await handler()
        except asyncio.CancelledError as e:
            # The client cancelled the call or closed its connection: grpc.aio cancels this
            # task, which also cancels its place in the batcher's queue (never computed).
            # Counted and logged like any failed call, then the cancellation goes on.
            status, reason, code, cancelled = 400, "abandoned", grpc.StatusCode.CANCELLED, e
        except ServingError as e:
            status, reason, message = e.status, e.reason, e.message
            code = STATUS_CODES.get(e.status, grpc.StatusCode.INTERNAL)
        except Exception as e:  # a bug: answer INTERNAL with a message, keep serving
            status, reason, code = 500, "internal", grpc.StatusCode.INTERNAL
            message = f"internal error: {type(e).__name__}"
            print(f"serving: internal error in gRPC {rpc}: {e!r}", file=sys.stderr)
        record = {"ts": round(time.time(), 3), "protocol": "grpc", "method": "POST",
                  "path": f"/inference.GRPCInferenceService/{rpc}", "status": status,
                  "ms": 0.0}
        if status != 200:
            record["grpc_code"] = code.name
        if extra:
            record.update(extra)
        svc.record("grpc", infer, status, reason, time.perf_counter() - t0, record)
        if cancelled is not None:
            raise cancelled
        if status != 200:
            if status == 503:
                context.set_trailing_metadata((("retry-after", "1"),))
            await context.abort(code, message)
        return response

    # -- health and metadata ----------------------------------------------------------------
    async def ServerLive(self, request, context):
        async def run():
            return pb.ServerLiveResponse(live=True), None
        return await self._call("ServerLive", context, run, auth=False)

    async def ServerReady(self, request, context):
        async def run():
            return pb.ServerReadyResponse(ready=self.service.ready), None
        return await self._call("ServerReady", context, run, auth=False)

    async def ModelReady(self, request, context):
        async def run():
            self.routes.check_model(request.name, request.version, bool(request.version))
            return pb.ModelReadyResponse(ready=self.service.ready), None
        return await self._call("ModelReady", context, run, auth=True)

    async def ServerMetadata(self, request, context):
        async def run():
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                             extensions=list(EXTENSIONS)), None
        return await self._call("ServerMetadata", context, run, auth=True)

    async def ModelMetadata(self, request, context):
        async def run():
            self.routes.check_model(request.name, request.version, bool(request.version))
            return self._model_metadata, None
        return await self._call("ModelMetadata", context, run, auth=True)

    # -- inference --------------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        svc = self.service

        async def run():
            self.routes.check_model(request.model_name, request.model_version,
                                    bool(request.model_version))
            svc.admit()
            svc.accepted += 1           # a gRPC message arrives whole: accepted and in flight
            svc.inflight += 1
            try:
                try:
                    req = request_from_grpc(request, svc.validator)
                finally:
                    arrived()           # queued next (or refused): no longer on its way in
                response = await svc.infer(req)
            finally:
                svc.accepted -= 1
                svc.inflight -= 1
            return (response_to_grpc(response, pb.ModelInferResponse),
                    {"bytes_in": req.bytes_in, "rows": req.rows})
        return await self._call("ModelInfer", context, run, auth=True, infer=True)


class GrpcFrontEnd:
    """The gRPC server of one InferenceService, started and stopped by the app's lifespan."""

    def __init__(self, service: InferenceService, host: str, port: int,
                 max_message_bytes: int) -> None:
        self.service = service
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self.server: grpc.aio.Server | None = None
        self.bound_port: int | None = None
        self._follow: asyncio.Task | None = None

    def _metadata(self):
        m, svc = self.service.manifest, self.service

        def tensors(specs):
            return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype,
                                                            shape=list(t.shape)) for t in specs]
        return pb.ModelMetadataResponse(name=svc.model_name, versions=[svc.model_version],
                                        platform=m.platform, inputs=tensors(m.inputs),
                                        outputs=tensors(m.outputs))

    async def start(self) -> None:
        svc = self.service
        # Explicit limits both ways (grpc's own default is 4 MB in, unlimited out): the same
        # bound as a REST body; grpc answers RESOURCE_EXHAUSTED above it before any handler runs.
        limits = svc.settings
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # The REST connection limits, in gRPC's terms (docs/protocol.md, "Limits"):
            # metadata (headers) size, idle connections closed, a bounded number of calls per
            # connection; message bytes count against the same body budget as REST.
            # Both limits: between a soft and a hard limit grpc refuses at random.
            ("grpc.max_metadata_size", limits.max_header_bytes),
            ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
            ("grpc.max_connection_idle_ms", int(limits.keep_alive_seconds * 1000)),
            ("grpc.max_concurrent_streams", 100),
        ], maximum_concurrent_rpcs=limits.max_connections,
            # ModelInfer calls count for the batch window while on their way in
            interceptors=[CountArrivals(svc)])
        routes = RouteTable(svc.model_name, svc.model_version)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            _Inference(svc, routes, self._metadata()), self.server)
        health = _Health(svc)
        health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
        address = f"{self.host}:{self.port}"
        try:
            self.bound_port = self.server.add_insecure_port(address)
        except RuntimeError as e:
            raise StartupError(f"gRPC cannot listen on {address}: {e}") from None
        if not self.bound_port:
            raise StartupError(f"gRPC cannot listen on {address} (SERVEDMODEL_GRPC_PORT)")
        await self.server.start()
        self._follow = asyncio.get_running_loop().create_task(health.follow())

    async def stop(self, grace: float) -> None:
        """Stop listening; calls still running get `grace` seconds to finish."""
        if self._follow:
            self._follow.cancel()
        if self.server is not None:
            await self.server.stop(grace)
