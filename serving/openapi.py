"""The OpenAPI 3.1 document of the endpoints, generated from a model's manifest.

`python -m serving openapi --context DIR` prints it; the server serves it at `/openapi.json`
and `/v2/models/{name}/openapi.json`; docs/openapi.json is a generated copy."""
from __future__ import annotations

from .manifest import Manifest
from .settings import Batching

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": _ERROR}}}


def _ok(desc: str, schema: dict) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _dims(t, max_batch_size: int) -> list[dict]:
    """One schema per dimension: the batch dimension 1..max_batch_size, fixed ones exact."""
    dims = []
    for i, d in enumerate(t.shape):
        if i == 0 and max_batch_size > 0:
            dims.append({"type": "integer", "minimum": 1, "maximum": max_batch_size})
        elif d >= 0:
            dims.append({"type": "integer", "enum": [d]})
        else:
            dims.append({"type": "integer", "minimum": 1})
    return dims


def _input_schema(t, max_batch_size: int) -> dict:
    number = {"type": "boolean"} if t.datatype == "BOOL" else (
        {"type": "integer"} if t.datatype[0] in "IU" else {"type": "number"})
    return {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "enum": [t.name]},
            "datatype": {"type": "string", "enum": [t.datatype]},
            "shape": {"type": "array", "minItems": len(t.shape), "maxItems": len(t.shape),
                      "prefixItems": _dims(t, max_batch_size), "items": False},
            "data": {"type": "array", "items": number,
                     "description": "row-major, flat or nested; as many elements as the "
                                    "shape declares"},
            "parameters": {"type": "object"},
        },
    }


def build_openapi(manifest: Manifest, batching: Batching, served_name: str) -> dict:
    """The document for `manifest` served under `served_name` with the resolved `batching`
    (the batch dimension's maximum is the one the server enforces)."""
    m = manifest
    max_batch = batching.max_batch_size
    input_schemas = [_input_schema(t, max_batch) for t in m.inputs]
    name_param = {"name": "model_name", "in": "path", "required": True,
                  "schema": {"type": "string", "enum": [served_name]}}
    version_param = {"name": "model_version", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": [m.version]}}
    common = {"401": _err("Missing or invalid bearer token (when auth is configured)"),
              "404": _err("Unknown model or version"),
              "400": _err("Invalid model name")}
    metadata = {"get": {"summary": "Model metadata", "operationId": "model_metadata",
                        "responses": {"200": _ok("Model metadata",
                                                 {"$ref": "#/components/schemas/ModelMetadata"}),
                                      **common}}}
    ready = {"get": {"summary": "Model readiness", "operationId": "model_ready",
                     "responses": {"200": _ok("Ready", {"type": "object"}),
                                   "503": _err("Not ready"), **common}}}
    infer = {"post": {
        "summary": "Inference (JSON tensors; the binary tensor extension is also accepted)",
        "operationId": "infer",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}},
        "responses": {
            "200": _ok("Inference result", {"$ref": "#/components/schemas/InferenceResponse"}),
            **common,
            "400": _err("Bad request: the message names what was wrong and what is accepted"),
            "413": _err("Body over the limit"),
            "415": _err("Unsupported Content-Encoding"),
            "503": _err("Overloaded (queue full or queue timeout), draining or not ready; "
                        "see Retry-After"),
        }}}
    tensor_meta = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    paths = {
        "/v2/health/live": {"get": {"summary": "Liveness", "operationId": "live", "security": [],
                                    "responses": {"200": _ok("Live", {"type": "object"})}}},
        "/v2/health/ready": {"get": {"summary": "Readiness", "operationId": "ready",
                                     "security": [],
                                     "responses": {"200": _ok("Ready", {"type": "object"}),
                                                   "503": _err("Not ready")}}},
        "/v2": {"get": {"summary": "Server metadata", "operationId": "server_metadata",
                        "responses": {"200": _ok("Server metadata", {"type": "object",
                                      "required": ["name", "version", "extensions"]}),
                                      "401": _err("Missing or invalid bearer token")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "security": [],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {
                                                       "schema": {"type": "string"}}}}}}},
        "/v2/models/{model_name}": {"parameters": [name_param], **metadata},
        "/v2/models/{model_name}/ready": {"parameters": [name_param], **ready},
        "/v2/models/{model_name}/infer": {"parameters": [name_param], **infer},
        "/v2/models/{model_name}/versions/{model_version}": {
            "parameters": [name_param, version_param], **_with_id(metadata, "_version")},
        "/v2/models/{model_name}/versions/{model_version}/ready": {
            "parameters": [name_param, version_param], **_with_id(ready, "_version")},
        "/v2/models/{model_name}/versions/{model_version}/infer": {
            "parameters": [name_param, version_param], **_with_id(infer, "_version")},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"ServedModel: {served_name}", "version": m.version,
                 "description": "Open Inference Protocol (KServe V2) REST endpoints of the "
                                f"model '{served_name}' version {m.version}. See docs/protocol.md."},
        "paths": paths,
        "security": [{}, {"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Only when SERVEDMODEL_AUTH_TOKEN "
                                                          "(or _FILE) is set"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "ModelMetadata": {"type": "object",
                                  "required": ["name", "versions", "platform", "inputs",
                                               "outputs"],
                                  "properties": {"name": {"type": "string"},
                                                 "versions": {"type": "array",
                                                              "items": {"type": "string"}},
                                                 "platform": {"type": "string"},
                                                 "inputs": {"type": "array", "items": tensor_meta},
                                                 "outputs": {"type": "array",
                                                             "items": tensor_meta}}},
                "InferenceRequest": {
                    "type": "object", "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1,
                                   "maxItems": len(m.inputs),
                                   "items": {"oneOf": input_schemas}
                                   if len(input_schemas) > 1 else input_schemas[0]},
                        "outputs": {"type": "array", "items": {
                            "type": "object", "required": ["name"], "properties": {
                                "name": {"type": "string", "enum": [t.name for t in m.outputs]},
                                "parameters": {"type": "object", "properties": {
                                    "binary_data": {"type": "boolean"}}}}}},
                    }},
                "InferenceResponse": {
                    "type": "object", "required": ["model_name", "outputs"],
                    "properties": {"model_name": {"type": "string"},
                                   "model_version": {"type": "string"},
                                   "id": {"type": "string"},
                                   "outputs": {"type": "array", "items": {
                                       "type": "object",
                                       "required": ["name", "datatype", "shape"],
                                       "properties": {"name": {"type": "string"},
                                                      "datatype": {"type": "string"},
                                                      "shape": {"type": "array",
                                                                "items": {"type": "integer"}},
                                                      "data": {"type": "array"}}}}}},
            },
        },
    }


def _with_id(op: dict, suffix: str) -> dict:
    return {method: {**spec, "operationId": spec["operationId"] + suffix}
            for method, spec in op.items()}
