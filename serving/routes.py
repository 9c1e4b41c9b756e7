"""The REST route table: which path answers what, with which method, behind auth or not.

Fixed paths are looked up in a table; `/v2/models/{name}[/versions/{version}][/suffix]` is
parsed once, with the served name and version, into the same kind of `Route`."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ServingError

MODEL_PREFIX = "/v2/models/"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class Route:
    #: handler name: live, ready, metrics, server_metadata, openapi, model_metadata,
    #: model_ready, model_infer; "model" is the unresolved /v2/models/... prefix
    name: str
    method: str
    #: needs the bearer token when auth is configured (probes and metrics never do)
    auth: bool


LIVE = Route("live", "GET", False)
READY = Route("ready", "GET", False)
METRICS = Route("metrics", "GET", False)
SERVER_METADATA = Route("server_metadata", "GET", True)
OPENAPI = Route("openapi", "GET", True)
MODEL = Route("model", "", True)
MODEL_METADATA = Route("model_metadata", "GET", True)
MODEL_READY = Route("model_ready", "GET", True)
MODEL_INFER = Route("model_infer", "POST", True)

FIXED: dict[str, Route] = {
    "/v2/health/live": LIVE,
    "/v2/health/ready": READY,
    "/metrics": METRICS,
    "/v2": SERVER_METADATA,
    "/v2/": SERVER_METADATA,
    "/openapi.json": OPENAPI,
}
#: what follows /v2/models/{name}[/versions/{version}]
MODEL_SUFFIXES: dict[str, Route] = {
    "ready": MODEL_READY, "infer": MODEL_INFER, "openapi.json": OPENAPI,
}


def valid_model_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and _NAME_CHARS.issuperset(name)


class RouteTable:
    def __init__(self, model_name: str, model_version: str) -> None:
        self.model_name = model_name
        self.model_version = model_version

    def match(self, path: str) -> Route:
        """The route of `path`; model paths come back as MODEL (auth first, then
        `resolve_model`, so model names cannot be probed without a token)."""
        route = FIXED.get(path)
        if route is not None:
            return route
        if path.startswith(MODEL_PREFIX):
            return MODEL
        raise ServingError(404, f"no route {path[:128]}; see /openapi.json for the endpoints")

    def resolve_model(self, path: str) -> Route:
        parts = path[len(MODEL_PREFIX):].split("/")
        name, rest = parts[0], parts[1:]
        self.check_model(name, rest[1] if rest[:1] == ["versions"] and len(rest) > 1 else None,
                         versioned=rest[:1] == ["versions"])
        if rest[:1] == ["versions"]:
            rest = rest[2:]
        route = MODEL_METADATA if not rest else (
            MODEL_SUFFIXES.get(rest[0]) if len(rest) == 1 else None)
        if route is None:
            raise ServingError(404, f"no route {path[:128]}; model routes are "
                                    f"/v2/models/{name}[/versions/{{version}}][/ready|/infer]")
        return route

    def check_model(self, name: str, version: str | None, versioned: bool = False) -> None:
        """Raise 400 for a name no model can have, 404 for another model or version (shared
        by REST paths and gRPC fields; gRPC's empty version means the served one)."""
        if not valid_model_name(name):
            raise ServingError(400, f"invalid model name {name[:64]!r}: use letters, digits, "
                                    f"'_', '.' and '-'")
        if name != self.model_name:
            raise ServingError(404, f"unknown model '{name[:64]}'; this server serves "
                                    f"'{self.model_name}'")
        if versioned and version != self.model_version:
            raise ServingError(404, f"unknown version '{(version or '')[:64]}' of model "
                                    f"'{name}'; the served version is '{self.model_version}'")
