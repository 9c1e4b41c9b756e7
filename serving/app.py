"""The Open Inference Protocol (KServe V2) REST app: a raw ASGI callable, no framework.

`create_app(settings, model, manifest)` takes its dependencies as arguments. `model` is any
object with the hooks of `serving.model.OnnxModel` (`ready`, `warm_up()`, `predict(feeds)`).
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import json
import os
import sys
import time

import orjson

from .batcher import Batcher
from .codec import MAX_DEPTH, V2_TO_NUMPY, decode_binary, decode_json, element_count, encode_json
from .errors import ServingError
from .manifest import Manifest
from .memory import RELEASE_AFTER_BYTES, RELEASE_AFTER_CONNECTIONS, Allocator
from .metrics import Metrics
from .openapi import build_openapi
from .settings import Settings

SERVER_NAME = "servedmodel"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

JSON = [(b"content-type", b"application/json")]
OCTET = b"application/octet-stream"
CLOSE = [(b"connection", b"close")]


def _json_depth_ok(value: object, depth: int = 0) -> bool:
    """True when `value` (a small parameters object) nests no deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_json_depth_ok(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_json_depth_ok(v, depth + 1) for v in value)
    return True


def _loads_with_nonfinite(data, error: Exception):
    """Python's json writes NaN/Infinity/-Infinity tokens (so tritonclient sends them for
    non-finite inputs); orjson refuses them. Accept them through the slower stdlib parser."""
    raw = bytes(data)
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError, UnicodeDecodeError):
            pass
    raise ServingError(400, f"request body is not valid JSON (or nests deeper than "
                            f"{MAX_DEPTH} levels): {error}")


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


class App:
    def __init__(self, settings: Settings, model, manifest: Manifest) -> None:
        self.settings = settings
        self.model = model
        self.manifest = manifest
        self.metrics = Metrics(manifest.name)
        self.log = AccessLog(settings.log_level in ("debug", "info"))
        self.batcher: Batcher | None = None
        self.draining = False
        self.failed: str | None = None
        self.accepted = 0                 # infer requests accepted and not yet answered
        self.on_fatal = None              # set by the server: called with a message
        self._token = settings.auth_token.encode() if settings.auth_token else None
        self._inputs = {t.name: t for t in manifest.inputs}
        self._outputs = {t.name: t for t in manifest.outputs}
        self._batched = manifest.max_batch_size > 0
        self._all_outputs = [t.name for t in manifest.outputs]
        self._metadata = orjson.dumps({
            "name": manifest.name, "versions": [manifest.version], "platform": manifest.platform,
            **manifest.signature})
        self._server_metadata = orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION,
                                              "extensions": EXTENSIONS})
        self._openapi = orjson.dumps(build_openapi(manifest))
        self._background: list[asyncio.Task] = []
        self.allocator = Allocator()

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self.draining and self.failed is None and bool(self.model.ready)

    async def startup(self) -> None:
        s = self.settings
        self.batcher = Batcher(self.model, max_batch_size=s.max_batch_size,
                               max_queue_delay_ms=s.max_queue_delay_ms,
                               max_queue_size=s.max_queue_size,
                               queue_timeout_ms=s.queue_timeout_ms, metrics=self.metrics)
        self.batcher.start()
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._flush_logs()))
        self._background.append(loop.create_task(self._release_memory()))
        self.allocator.tune()
        if not self.model.ready:
            self._background.append(loop.create_task(self._warm_up()))
        else:
            self.metrics.ready = 1

    async def _warm_up(self) -> None:
        try:
            await self.batcher.run_blocking(self.model.warm_up)
        except Exception as e:
            self.failed = f"warm-up failed: {type(e).__name__}: {e}"
            if self.on_fatal:
                self.on_fatal(self.failed)
            return
        preferred = getattr(self.model, "preferred_batch_size", None)
        if preferred:
            self.batcher.prefer(preferred, bool(getattr(self.model, "run_inline", False)))
        if self.log.enabled:
            rates = getattr(self.model, "warmup_items_per_second", {})
            self.log.add({"event": "ready", "preferred_batch_size": self.batcher.max_rows,
                          "inline": self.batcher.inline,
                          "spinning": getattr(self.model, "spinning", None),
                          "warmup_items_per_second": {str(b): round(r, 1)
                                                      for b, r in rates.items()}})
        self.metrics.ready = 0 if self.draining else 1
        # Everything allocated so far lives as long as the process: keep it out of the cyclic
        # collector's scans, and scan less often (request handling makes few cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(7000, 20, 20)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.log.flush()

    async def _release_memory(self) -> None:
        """After a peak (many bytes or connections since the last release) and once nothing
        is buffered, give memory back: a flood must not leave the process at its peak RSS."""
        m = self.metrics
        last_bytes, last_conns = m.received_bytes, m.connections_total
        quiet = 0
        while True:
            await asyncio.sleep(0.5)
            busy = m.buffered_bytes > 0 or m.inflight > 0 or self.accepted > 0
            quiet = 0 if busy else quiet + 1
            if quiet < 2 or (m.received_bytes - last_bytes < RELEASE_AFTER_BYTES
                             and m.connections_total - last_conns < RELEASE_AFTER_CONNECTIONS):
                continue
            last_bytes, last_conns = m.received_bytes, m.connections_total
            await asyncio.get_running_loop().run_in_executor(None, self.allocator.release)

    async def shutdown(self) -> None:
        for t in self._background:
            t.cancel()
        if self.batcher:
            await self.batcher.stop()
        self.log.flush()

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.ready = 0

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
                    await self.startup()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        is_infer = False
        status, nbytes, extra = 500, 0, None
        try:
            if path == "/v2/health/live":
                status, body, headers = self._simple(method, 200, b'{"live":true}')
            elif path == "/v2/health/ready":
                status, body, headers = self._readiness(method)
            elif path == "/metrics":
                self._method(method, "GET")
                status, body, headers = 200, self.metrics.render(), [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            elif path == "/v2" or path == "/v2/":
                self._authorize(scope)
                status, body, headers = self._simple(method, 200, self._server_metadata)
            elif path == "/openapi.json":
                self._authorize(scope)
                status, body, headers = self._simple(method, 200, self._openapi)
            elif path.startswith("/v2/models/"):
                self._authorize(scope)          # first: no probing model names without a token
                route = self._model_route(path)
                if route == "infer":
                    is_infer = True
                    self._method(method, "POST")
                    status, body, headers, extra = await self._infer(scope, receive)
                elif route == "ready":
                    self._method(method, "GET")
                    status, body, headers = self._readiness(method)
                elif route == "metadata":
                    status, body, headers = self._simple(method, 200, self._metadata)
                else:
                    status, body, headers = self._simple(method, 200, self._openapi)
            else:
                raise ServingError(404, f"no route {path[:128]}; see /openapi.json for the endpoints")
        except ServingError as e:
            status = e.status
            body = orjson.dumps({"error": e.message})
            headers = JSON + e.headers
            self.metrics.failure(e.reason)      # every route: 401s and 404s are counted too
        except Exception as e:  # a bug: answer 500 with a message rather than dropping the socket
            status = 500
            body = orjson.dumps({"error": f"internal error: {type(e).__name__}"})
            headers = JSON
            self.metrics.failure("internal")
            print(f"serving: internal error on {method} {path}: {e!r}", file=sys.stderr)
        if self.draining and is_infer:
            headers = headers + CLOSE
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - t0
        if is_infer:
            outcome = ("success" if status == 200 else "shed" if status == 503 else
                       "client_error" if status < 500 else "server_error")
            self.metrics.request(outcome, elapsed)
        if self.log.enabled:
            record = {"ts": round(time.time(), 3), "method": method, "path": path[:256],
                      "status": status, "ms": round(elapsed * 1000, 3), "bytes_out": len(body)}
            if extra:
                record.update(extra)
            self.log.add(record)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise ServingError(405, f"method {method} is not allowed here; use {allowed}",
                               headers=[(b"allow", allowed.encode())])

    def _simple(self, method: str, status: int, body: bytes):
        self._method(method, "GET")
        return status, body, JSON

    def _readiness(self, method: str):
        self._method(method, "GET")
        if self.ready:
            return 200, b'{"ready":true}', JSON
        why = ("draining: the server is shutting down" if self.draining else
               self.failed or "the model is loading or warming up")
        return 503, orjson.dumps({"ready": False, "error": f"not ready: {why}"}), JSON

    def _authorize(self, scope) -> None:
        if self._token is None:
            return
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token):
                    return
                raise ServingError(401, "invalid bearer token", headers=[
                    (b"www-authenticate", b'Bearer realm="servedmodel", error="invalid_token"')])
        raise ServingError(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                           headers=[(b"www-authenticate", b'Bearer realm="servedmodel"')])

    def _model_route(self, path: str) -> str:
        parts = path[len("/v2/models/"):].split("/")
        name, rest = parts[0], parts[1:]
        if not name or name in (".", "..") or not _NAME_CHARS.issuperset(name):
            raise ServingError(400, f"invalid model name {name[:64]!r}: use letters, digits, "
                                    f"'_', '.' and '-'")
        if name != self.manifest.name:
            raise ServingError(404, f"unknown model '{name[:64]}'; this server serves "
                                    f"'{self.manifest.name}'")
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != self.manifest.version:
                version = rest[1][:64] if len(rest) > 1 else ""
                raise ServingError(404, f"unknown version '{version}' of model '{name}'; the "
                                        f"served version is '{self.manifest.version}'")
            rest = rest[2:]
        if not rest:
            return "metadata"
        if len(rest) == 1 and rest[0] in ("infer", "ready", "openapi.json"):
            return rest[0]
        raise ServingError(404, f"no route {path[:128]}; model routes are /v2/models/{name}"
                                f"[/versions/{{version}}][/ready|/infer]")

    # -- inference --------------------------------------------------------------------------
    async def _infer(self, scope, receive):
        if self.draining:
            raise ServingError(503, "the server is shutting down; retry on another replica",
                               reason="draining", headers=[(b"retry-after", b"1")])
        if not self.model.ready or self.failed:
            raise ServingError(503, "the model is not ready yet", reason="not_ready",
                               headers=[(b"retry-after", b"1")])
        self.accepted += 1
        batcher = self.batcher
        batcher.arriving += 1
        arriving = True
        counted = False
        held = [0]                  # body bytes reserved in the buffer budget
        try:
            body, header_len = await self._read_body(scope, receive, held)
            # In flight from here: a client still sending (or stalling) its body is not work
            # the autoscaler should see.
            self.metrics.inflight += 1
            counted = True
            feeds, rows, sig, wanted, binary_all, request_id = self._parse(body, header_len)
            batcher.arriving -= 1
            arriving = False
            outputs = await batcher.submit(feeds, rows, sig)
            status, out, headers = self._respond(outputs, wanted, binary_all, request_id)
            return status, out, headers, {"bytes_in": len(body), "rows": rows}
        finally:
            if arriving:
                batcher.arriving -= 1
            self.accepted -= 1
            if counted:
                self.metrics.inflight -= 1
            self.metrics.buffered_bytes -= held[0]

    def _reserve(self, n: int, held: list[int]) -> None:
        """Count `n` more body bytes against SERVEDMODEL_MAX_BUFFERED_BYTES, shared by every
        request: over it, the request is shed (503) instead of growing memory."""
        budget = self.settings.max_buffered_bytes
        if self.metrics.buffered_bytes + n > budget:
            raise ServingError(503, f"the server holds {self.metrics.buffered_bytes} bytes of "
                                    f"request bodies (max {budget}, "
                                    f"SERVEDMODEL_MAX_BUFFERED_BYTES); retry later",
                               reason="buffer_full", headers=[(b"retry-after", b"1")] + CLOSE)
        self.metrics.buffered_bytes += n
        held[0] += n

    async def _read_body(self, scope, receive, held: list[int]):
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
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                raise ServingError(400, "Content-Length must be a non-negative integer")
            if n > limit:
                raise ServingError(413, f"request body of {n} bytes is over the limit of "
                                        f"{limit} bytes (SERVEDMODEL_MAX_BODY_BYTES)",
                                   headers=CLOSE)
            self._reserve(n, held)          # the whole declared body, before reading it
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
                if total > held[0]:         # chunked, or more than Content-Length said
                    self._reserve(total - held[0], held)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if header_len is not None:
            try:
                h = int(header_len)
            except ValueError:
                h = -1
            if not 0 < h <= len(body):
                raise ServingError(400, f"Inference-Header-Content-Length "
                                        f"{header_len.decode('latin-1')[:32]!r} must be an "
                                        f"integer between 1 and the body size ({len(body)})")
            header_len = h
        return body, header_len

    def _parse(self, body: bytes, header_len: int | None):
        """Validate the request against the model; return feeds and what to answer with."""
        if header_len is None:
            json_part, binary = body, b""
        else:
            view = memoryview(body)
            json_part, binary = view[:header_len], view[header_len:]
        if not json_part:
            raise ServingError(400, "request body is empty; send an inference request JSON "
                                    "object with 'inputs'")
        try:
            doc = orjson.loads(json_part)
        except orjson.JSONDecodeError as e:
            doc = _loads_with_nonfinite(json_part, e)
        if not isinstance(doc, dict):
            raise ServingError(400, "request must be a JSON object with 'inputs'")
        request_id = doc.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ServingError(400, "'id' must be a string")
        params = doc.get("parameters")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise ServingError(400, "'parameters' must be an object")
        elif not _json_depth_ok(params):
            raise ServingError(400, f"'parameters' nests deeper than {MAX_DEPTH} levels")
        binary_all = params.get("binary_data_output", False)
        if not isinstance(binary_all, bool):
            raise ServingError(400, "parameters.binary_data_output must be true or false")

        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ServingError(400, f"'inputs' must be a non-empty list; the model takes "
                                    f"{', '.join(self._inputs)}")
        batched = self._batched
        max_rows = self.settings.max_batch_size
        limit = self.settings.max_body_bytes
        feeds = {}
        rows = None
        offset = 0
        for i, entry in enumerate(inputs):
            if not isinstance(entry, dict):
                raise ServingError(400, f"inputs[{i}] must be an object")
            name = entry.get("name")
            if not isinstance(name, str):
                raise ServingError(400, f"inputs[{i}].name must be a string")
            spec = self._inputs.get(name)
            if spec is None:
                raise ServingError(400, f"unknown input '{name[:64]}'; the model takes "
                                        f"{', '.join(self._inputs)}")
            if name in feeds:
                raise ServingError(400, f"input '{name}' is given twice")
            datatype = entry.get("datatype")
            if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
                raise ServingError(400, f"input '{name}': datatype {str(datatype)[:32]!r} is not "
                                        f"a V2 datatype; the model takes {spec.datatype}")
            iparams = entry.get("parameters") or {}
            if not isinstance(iparams, dict):
                raise ServingError(400, f"input '{name}': 'parameters' must be an object")
            size = iparams.get("binary_data_size")
            has_data = "data" in entry
            if datatype in ("FP16", "BF16") and has_data:
                raise ServingError(400, f"input '{name}': {datatype} cannot be sent as JSON "
                                        f"data; use the binary tensor extension")
            if datatype != spec.datatype:
                raise ServingError(400, f"input '{name}' has datatype {datatype}; the model "
                                        f"takes {spec.datatype}")
            shape = entry.get("shape")
            if not isinstance(shape, list) or not all(
                    type(d) is int for d in shape):
                raise ServingError(400, f"input '{name}': shape must be a list of integers, "
                                        f"the model takes {list(spec.shape)}")
            if len(shape) != len(spec.shape):
                raise ServingError(400, f"input '{name}': shape {shape[:8]} has rank "
                                        f"{len(shape)}; the model takes {list(spec.shape)}")
            for d, want in zip(shape, spec.shape):
                if d < 0:
                    raise ServingError(400, f"input '{name}': shape {shape} has a negative "
                                            f"dimension")
                if want >= 0 and d != want:
                    raise ServingError(400, f"input '{name}': shape {shape} does not match "
                                            f"the model's {list(spec.shape)}")
            if batched:
                if shape[0] == 0:
                    raise ServingError(400, f"input '{name}': empty batch (dimension 0 is 0)")
                if shape[0] > max_rows:
                    raise ServingError(400, f"input '{name}': batch of {shape[0]} is over "
                                            f"max_batch_size {max_rows}")
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise ServingError(400, f"input '{name}': batch dimension {shape[0]} "
                                            f"differs from the other inputs' {rows}")
            if 0 in shape:
                raise ServingError(400, f"input '{name}': shape {shape} has a zero dimension; "
                                        f"empty tensors are not accepted")
            dtype = V2_TO_NUMPY[datatype]
            count = element_count(shape)
            if count * dtype.itemsize > limit:
                raise ServingError(400, f"input '{name}': shape {shape[:8]} declares "
                                        f"{count * dtype.itemsize} bytes, over the body limit "
                                        f"of {limit}")
            if size is not None:
                if has_data:
                    raise ServingError(400, f"input '{name}': give either 'data' or "
                                            f"parameters.binary_data_size, not both")
                if type(size) is not int or size < 0:
                    raise ServingError(400, f"input '{name}': binary_data_size must be a "
                                            f"non-negative integer")
                if header_len is None:
                    raise ServingError(400, f"input '{name}': binary_data_size given but the "
                                            f"request has no Inference-Header-Content-Length "
                                            f"header")
                feeds[name] = decode_binary(name, binary, offset, size, dtype, shape)
                offset += size
            elif has_data:
                feeds[name] = decode_json(name, entry["data"], datatype, dtype, shape)
            else:
                raise ServingError(400, f"input '{name}' has neither 'data' nor "
                                        f"parameters.binary_data_size")
        if len(feeds) != len(self._inputs):
            missing = [n for n in self._inputs if n not in feeds]
            raise ServingError(400, f"missing input(s) {', '.join(missing)}; the model takes "
                                    f"{', '.join(self._inputs)}")
        if offset != len(binary):
            raise ServingError(400, f"the binary section has {len(binary)} bytes but the "
                                    f"inputs' binary_data_size add up to {offset}")

        wanted = self._requested_outputs(doc.get("outputs"), binary_all)
        if batched:
            sig = tuple(a.shape[1:] for a in feeds.values()) if len(feeds) == 1 else tuple(
                (n, feeds[n].shape[1:]) for n in self._inputs)
        else:
            sig, rows = None, 1
        return feeds, rows, sig, wanted, binary_all, request_id

    def _requested_outputs(self, outputs, binary_all: bool):
        if outputs is None:
            return [(n, binary_all) for n in self._all_outputs]
        if not isinstance(outputs, list):
            raise ServingError(400, "'outputs' must be a list")
        wanted, seen = [], set()
        for i, entry in enumerate(outputs):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ServingError(400, f"outputs[{i}] must be an object with a string 'name'")
            name = entry["name"]
            if name not in self._outputs:
                raise ServingError(400, f"unknown output '{name[:64]}'; the model has "
                                        f"{', '.join(self._outputs)}")
            if name in seen:
                raise ServingError(400, f"output '{name}' is requested twice")
            seen.add(name)
            oparams = entry.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise ServingError(400, f"output '{name}': 'parameters' must be an object")
            if oparams.get("classification"):
                raise ServingError(400, f"output '{name}': the classification extension is "
                                        f"not supported")
            binary = oparams.get("binary_data", binary_all)
            if not isinstance(binary, bool):
                raise ServingError(400, f"output '{name}': binary_data must be true or false")
            wanted.append((name, binary))
        return wanted

    def _respond(self, outputs, wanted, binary_all, request_id):
        entries, blobs = [], []
        for name, binary in wanted:
            arr = outputs[name]
            entry = {"name": name, "datatype": self._outputs[name].datatype,
                     "shape": list(arr.shape)}
            if binary:
                blob = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = encode_json(arr)
            entries.append(entry)
        doc = {"model_name": self.manifest.name, "model_version": self.manifest.version,
               "outputs": entries}
        if request_id is not None:
            doc["id"] = request_id
        header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return 200, header, JSON
        return 200, header + b"".join(blobs), [
            (b"content-type", OCTET),
            (b"inference-header-content-length", str(len(header)).encode())]


def create_app(settings: Settings, model, manifest: Manifest) -> App:
    """The ASGI app for one model. `model` must offer `ready`, `warm_up()` and `predict()`."""
    return App(settings, model, manifest)
