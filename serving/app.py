"""The Open Inference Protocol (KServe V2) REST front end: a raw ASGI callable, no framework.

`create_app(settings, model, manifest)` takes its dependencies as arguments. `model` is any
object with the hooks of `serving.hooks.ModelHooks`. This module only does HTTP: the route
table (`routes.py`), reading the body, and the REST encoding of the protocol
(`protocol.request_from_rest` / `response_to_rest`); everything else is the shared
`service.InferenceService`.
"""
from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from . import routes
from .audit import UNAUDITED_PATHS
from .auth import ANONYMOUS, AuthError
from .connections import CLIENT_GONE
from .errors import ServingError
from .hooks import ModelHooks
from .manifest import Manifest
from .openapi import build_openapi
from .protocol import JSON_HEADERS, request_from_rest, response_to_rest
from .service import EXTENSIONS, SERVER_NAME, SERVER_VERSION, InferenceService
from .settings import Settings

JSON = JSON_HEADERS
#: Request bodies (and response tensors) at least this big are decoded (encoded) in a
#: thread, not on the event loop.
DECODE_OFF_LOOP_BYTES = 1024 * 1024
CLOSE = [(b"connection", b"close")]
PROMETHEUS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


class App:
    def __init__(self, settings: Settings, model: ModelHooks, manifest: Manifest) -> None:
        self.settings = settings
        self.service = InferenceService(settings, model, manifest)
        svc = self.service
        self.routes = routes.RouteTable(svc.model_name, svc.model_version)
        self._metadata = orjson.dumps({
            "name": svc.model_name, "versions": [svc.model_version],
            "platform": manifest.platform, **manifest.signature})
        self._server_metadata = orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION,
                                              "extensions": list(EXTENSIONS)})
        self._openapi = orjson.dumps(build_openapi(manifest, settings.batching, svc.model_name))
        #: the gRPC front end over the same service, when SERVEDMODEL_GRPC_PORT is set
        self.grpc = None
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        if settings.grpc_port:
            from .grpc_server import GrpcFrontEnd  # protobuf is imported only when used

            self.grpc = GrpcFrontEnd(svc, settings.host, settings.grpc_port,
                                     settings.max_body_bytes)

    # -- lifecycle (the server drives these) ------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.service.ready

    @property
    def accepted(self) -> int:
        return self.service.accepted

    @property
    def draining(self) -> bool:
        return self.service.draining

    def begin_drain(self) -> None:
        self.service.begin_drain()

    @property
    def on_fatal(self):
        return self.service.on_fatal

    @on_fatal.setter
    def on_fatal(self, fn) -> None:
        self.service.on_fatal = fn

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.startup()
                    if self.grpc is not None:
                        await self.grpc.start()
                except Exception as e:
                    print(f"serving: {e}", file=sys.stderr, flush=True)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.grpc is not None:
                    # The drain has already waited for accepted calls; this is the last word
                    # for any still running.
                    await self.grpc.stop(grace=1.0)
                await self.service.shutdown()
                self._decoder.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        svc = self.service
        path, method = scope["path"], scope["method"]
        is_infer = False
        reason = None
        extra = None
        identity = None
        try:
            route = self.routes.match(path)
            if route.auth:
                # Before the model name: names cannot be probed without a token.
                identity = (await svc.auth.authenticate_async(_header(scope, b"authorization"))
                            if svc.auth.enabled else ANONYMOUS)
            if route is routes.MODEL:
                route = self.routes.resolve_model(path)
            is_infer = route is routes.MODEL_INFER
            _check_method(method, route.method)
            if is_infer:
                status, body, headers, extra = await self._infer(scope, receive)
            else:
                status, body, headers = self._get(route)
        except ServingError as e:
            status = e.status
            body = orjson.dumps({"error": e.message})
            headers = JSON + e.headers
            reason = e.reason
            if isinstance(e, AuthError):
                identity = e.identity        # who was refused (403), None when unknown (401)
        except Exception as e:  # a bug: answer 500 with a message rather than dropping the socket
            status = 500
            body = orjson.dumps({"error": f"internal error: {type(e).__name__}"})
            headers = JSON
            reason = "internal"
            print(f"serving: internal error on {method} {path}: {e!r}", file=sys.stderr)
        if svc.draining and is_infer:
            headers = headers + CLOSE
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        record = {"ts": round(time.time(), 3), "method": method, "path": path[:256],
                  "status": status, "ms": 0.0, "bytes_out": len(body)}
        if extra:
            record.update(extra)
        seconds = time.perf_counter() - t0
        svc.record("rest", is_infer, status, reason, seconds, record)
        if svc.audit.enabled and path not in UNAUDITED_PATHS:
            svc.audit.add(protocol="rest", method=method, path=path, status=status,
                          seconds=seconds, identity=identity, reason=reason,
                          traceparent=_header(scope, b"traceparent"),
                          rows=extra.get("rows") if extra else None,
                          bytes_in=extra.get("bytes_in") if extra else None,
                          bytes_out=len(body))

    def _get(self, route: routes.Route):
        name = route.name
        if name == "live":
            return 200, b'{"live":true}', JSON
        if name in ("ready", "model_ready"):
            if self.service.ready:
                return 200, b'{"ready":true}', JSON
            return 503, orjson.dumps({"ready": False, "error": f"not ready: "
                                      f"{self.service.not_ready_reason()}"}), JSON
        if name == "metrics":
            return 200, self.service.render_metrics(), PROMETHEUS
        if name == "server_metadata":
            return 200, self._server_metadata, JSON
        if name == "model_metadata":
            return 200, self._metadata, JSON
        return 200, self._openapi, JSON

    # -- inference --------------------------------------------------------------------------
    async def _infer(self, scope, receive):
        svc = self.service
        svc.admit()
        svc.accepted += 1
        counted = False
        budget = svc.body_budget()
        try:
            batcher = svc.batcher
            assert batcher is not None          # started before the app takes requests
            with batcher.expecting():
                body, header_len = await self._read_body(scope, receive, budget)
                # In flight from here: a client still sending (or stalling) its body is not
                # work the autoscaler should see.
                svc.inflight += 1
                counted = True
                if len(body) >= DECODE_OFF_LOOP_BYTES:
                    # Up to seconds of parsing for tens of MB of JSON: in a thread, so the
                    # event loop (probes, other requests) runs between the decoder's steps
                    # (each single C call, e.g. orjson's parse, still holds the GIL).
                    request = await asyncio.get_running_loop().run_in_executor(
                        self._decoder, request_from_rest, body, header_len, svc.validator)
                else:
                    request = request_from_rest(body, header_len, svc.validator)
            gone = scope.get("extensions", {}).get(CLIENT_GONE)
            response = await svc.infer(request, gone)
            if sum(o.data.nbytes for o in response.outputs) >= DECODE_OFF_LOOP_BYTES:
                out, headers = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, response_to_rest, response)
            else:
                out, headers = response_to_rest(response)
            return 200, out, headers, {"bytes_in": request.bytes_in, "rows": request.rows}
        finally:
            svc.accepted -= 1
            if counted:
                svc.inflight -= 1
            budget.release()

    async def _read_body(self, scope, receive, budget):
        limit = self.settings.max_body_bytes
        length = header_len = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"inference-header-content-length":
                header_len = value
            elif key == b"content-encoding" and value.strip().lower() not in (b"identity", b""):
                raise ServingError(415, f"Content-Encoding {value.decode('latin-1')!r} is not "
                                        f"supported; send an uncompressed body")
        if length is not None:
            n = int(length) if length.isdigit() else -1
            if n < 0:
                raise ServingError(400, "Content-Length must be a non-negative integer")
            if n > limit:
                raise ServingError(413, f"request body of {n} bytes is over the limit of "
                                        f"{limit} bytes (SERVEDMODEL_MAX_BODY_BYTES)",
                                   headers=CLOSE)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServingError(400, "client disconnected before sending the whole body",
                                   reason="disconnected")
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise ServingError(413, f"request body is over the limit of {limit} bytes "
                                            f"(SERVEDMODEL_MAX_BODY_BYTES)", headers=CLOSE)
                # Counted as the bytes arrive, not as declared: a connection that declares
                # 60 MB and sends nothing must not use up the budget of everyone else.
                budget.hold(len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if header_len is not None:
            # ASCII digits only: int() would also take "3_2_0", "+320" or " 320 ".
            h = int(header_len) if header_len.isdigit() else -1
            if not 0 < h <= len(body):
                raise ServingError(400, f"Inference-Header-Content-Length "
                                        f"{header_len.decode('latin-1')[:32]!r} must be an "
                                        f"integer between 1 and the body size ({len(body)})")
            header_len = h
        return body, header_len


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _check_method(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise ServingError(405, f"method {method} is not allowed here; use {allowed}",
                           headers=[(b"allow", allowed.encode())])


def create_app(settings: Settings, model: ModelHooks, manifest: Manifest) -> App:
    """The ASGI app for one model. `model` must offer the `ModelHooks`."""
    return App(settings, model, manifest)
