"""Settings: a frozen dataclass from CLI flags, `SERVEDMODEL_*` environment variables, the
manifest and built-in defaults, in that order of precedence (docs/architecture.md, section 3)."""
from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import contract
from .auth import AuthSettings, OidcSettings, load_clients
from .errors import StartupError
from .jwks import check_url
from .manifest import Manifest
from .routes import valid_model_name

PREFIX = contract.ENV_PREFIX
#: Shedding defaults (reasons in serving/contract.py, their one definition).
DEFAULT_QUEUE_TIMEOUT_MS = float(contract.QUEUE_TIMEOUT_MS)
DEFAULT_MAX_QUEUE_SIZE = contract.MAX_QUEUE_SIZE
LOG_LEVELS = ("debug", "info", "warning")


@dataclass(frozen=True)
class Batching:
    """Batching and queueing, resolved once from the manifest and the environment
    (`resolve_batching`). The batcher, the request validator, the warm-up and the OpenAPI
    document all read this one object."""
    #: rows per batch, and the most rows one request may carry; 0: the model has no batch
    #: dimension (its manifest says max_batch_size 0) and requests run one at a time
    max_batch_size: int = 0
    #: how long the batcher waits for more requests to fill a batch
    max_queue_delay_ms: float = 0.0
    #: the batch sizes the warm-up runs and times (each <= max_batch_size; 1 and the max too)
    warmup_batch_sizes: tuple[int, ...] = (1,)
    #: most requests waiting in the queue (a backstop; the queue-time budget sheds first)
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    #: the queue-time budget: a request that cannot start within it is refused (503)
    queue_timeout_ms: float = DEFAULT_QUEUE_TIMEOUT_MS

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 0


@dataclass(frozen=True)
class Settings:
    context: Path = Path("/app")
    host: str = "127.0.0.1"
    port: int = contract.PORT
    #: the gRPC port; None: no gRPC front end
    grpc_port: int | None = None
    device: str = "cpu"
    #: bytes the CUDA provider's memory arena may hold (device=cuda only); None: no cap. Set on
    #: a time-sliced GPU, where nothing else keeps one model from taking another's memory.
    gpu_mem_limit: int | None = None
    #: the name the server answers under (/v2/models/<model_name>); the manifest's by default
    model_name: str = ""
    batching: Batching = Batching()
    max_body_bytes: int = contract.MAX_BODY_BYTES
    intra_op_threads: int = 1          # the cgroup CPU limit when not set
    intra_op_spinning: bool | None = None   # None: auto (on unless the model runs inline)
    drain_seconds: float = float(contract.DRAIN_SECONDS)
    # The connection layer (serving/connections.py, docs/protocol.md "Limits").
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 30.0
    max_connections: int = 1000
    probe_connections: int = 8
    #: gRPC streaming calls (Health/Watch) at once, apart from unary calls
    max_streaming_calls: int = 100
    #: seconds a gRPC request message may take to arrive whole (from its HEADERS)
    request_timeout_seconds: float = 60.0
    max_buffered_bytes: int = 256 * 1024 * 1024   # 4 x max_body_bytes when not set
    #: tensor elements one request may carry, all inputs together; 0: no limit but the body
    max_request_elements: int = 0                  # the manifest's limits when not set
    #: who may call the model routes: named clients (token hashes; SERVEDMODEL_AUTH_TOKEN is
    #: client "default") and OIDC (serving/auth.py); nothing configured: no auth
    auth: AuthSettings = AuthSettings()
    #: where audit records go: a file path, "-" for stdout, None: nowhere (serving/audit.py)
    audit_log: str | None = None
    #: the local key of an encrypted model (32 bytes, raw or base64); kms models need none
    model_key_file: Path | None = None
    log_level: str = "info"


def cgroup_cpu_limit() -> int:
    """CPUs this process may use: the cgroup quota (v2 cpu.max, v1 cfs), else the affinity mask."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    quota = None
    try:
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        return max(1, min(available, int(quota + 0.999)))
    return max(1, available)


#: Variables Kubernetes sets for a Service whose name starts with "servedmodel" (service links:
#: SERVEDMODEL_SERVICE_HOST, SERVEDMODEL_X_PORT_8080_TCP_ADDR, ...). Not settings, so they pass;
#: the components turn service links off (enableServiceLinks: false) all the same.
_SERVICE_LINK = re.compile(r"^SERVEDMODEL(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|"
                           r"PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$")


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A problem for each SERVEDMODEL_* variable the server does not know, naming the nearest
    known one: a misspelt setting must stop the server, not be ignored (fail closed)."""
    known = [PREFIX + name for name in contract.SERVER_VARIABLES]
    passing = set(known) | {PREFIX + name for name in contract.OTHER_TOOLS_VARIABLES}
    problems = []
    for var in sorted(env):
        if not var.startswith(PREFIX) or var in passing or _SERVICE_LINK.match(var):
            continue
        near = difflib.get_close_matches(var, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "see docs/architecture.md, section 3"
        problems.append(f"{var} is not a setting of this server ({hint})")
    return problems


def resolve_auth(env: Mapping[str, str], problems: list[str]) -> AuthSettings:
    """Named clients (SERVEDMODEL_CLIENTS_FILE, plus SERVEDMODEL_AUTH_TOKEN[_FILE] as client
    "default") and OIDC (SERVEDMODEL_OIDC_*). Only hashes of tokens are kept."""
    token = env.get(PREFIX + "AUTH_TOKEN") or None
    token_file = env.get(PREFIX + "AUTH_TOKEN_FILE")
    if token_file:
        try:
            token = Path(token_file).read_text().strip() or None
            if token is None:
                problems.append(f"SERVEDMODEL_AUTH_TOKEN_FILE {token_file} is empty")
        except OSError as e:
            problems.append(f"SERVEDMODEL_AUTH_TOKEN_FILE {token_file} cannot be read: "
                            f"{e.strerror}")
    clients: tuple = ()
    clients_file = env.get(PREFIX + "CLIENTS_FILE")
    if clients_file:
        try:
            clients = load_clients(clients_file)
        except StartupError as e:
            problems.append(str(e))
    elif PREFIX + "CLIENTS_FILE" in env:
        problems.append("SERVEDMODEL_CLIENTS_FILE is empty: unset it, or name the clients file")
    if token is not None:
        if contract.DEFAULT_CLIENT in dict(clients):
            problems.append(f"SERVEDMODEL_CLIENTS_FILE names a client {contract.DEFAULT_CLIENT!r}"
                            f", the name SERVEDMODEL_AUTH_TOKEN authenticates as: rename one")
        else:
            digest = hashlib.sha256(token.encode()).digest()
            clients = ((contract.DEFAULT_CLIENT, (digest,)),) + tuple(clients)
    issuer = env.get(PREFIX + "OIDC_ISSUER") or None
    audience = env.get(PREFIX + "OIDC_AUDIENCE") or None
    scope = env.get(PREFIX + "OIDC_SCOPE") or None
    jwks_url = env.get(PREFIX + "OIDC_JWKS_URL") or None
    oidc = None
    if issuer or audience or scope or jwks_url:
        if not issuer or not audience:
            problems.append("OIDC needs both SERVEDMODEL_OIDC_ISSUER (the issuer URL, as in the "
                            "tokens' iss) and SERVEDMODEL_OIDC_AUDIENCE (this API, as in aud)")
        else:
            for var, url in (("SERVEDMODEL_OIDC_ISSUER", issuer),
                             ("SERVEDMODEL_OIDC_JWKS_URL", jwks_url)):
                problem = url and check_url(var, url)
                if problem:
                    problems.append(problem)
            if scope is not None and not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", scope):
                problems.append(f"SERVEDMODEL_OIDC_SCOPE={scope!r} must be one scope, group or "
                                f"role name (no spaces or quotes)")
            oidc = OidcSettings(issuer=issuer, audience=audience, scope=scope, jwks_url=jwks_url)
    return AuthSettings(clients=tuple(clients), oidc=oidc)


def resolve_audit_log(env: Mapping[str, str], problems: list[str]) -> str | None:
    value = env.get(PREFIX + "AUDIT_LOG") or None
    if value is None or value == "-":
        return value
    parent = Path(value).parent
    if Path(value).is_dir() or not parent.is_dir():
        problems.append(f"SERVEDMODEL_AUDIT_LOG={value!r} must be a file in an existing folder, "
                        f"or '-' for stdout")
    return value


def context_from(flags: Mapping[str, object], env: Mapping[str, str]) -> Path:
    value = flags.get("context") or env.get(PREFIX + "CONTEXT") or "/app"
    return Path(str(value))


def resolve_batching(manifest: Manifest, pick, integer) -> Batching:
    """Batching from the manifest and the environment, checked as a whole. `pick(name,
    default, parse, check, accepted)` reads one setting and records its problems."""
    batched = manifest.max_batch_size > 0
    if batched:
        # 0 is refused rather than read as "no batching": a model with a batch dimension would
        # then take no request at all (every batch of n >= 1 rows would be over the limit).
        max_batch = pick("max_batch_size", manifest.max_batch_size, integer, lambda v: v >= 1,
                         "an integer >= 1 for this model (it has a batch dimension; 1 runs "
                         "every request alone, one row each)")
    else:
        max_batch = pick("max_batch_size", 0, integer, lambda v: v == 0,
                         "0 for this model: its manifest has max_batch_size 0 (no batch "
                         "dimension), so batching cannot be enabled")
    delay = pick("max_queue_delay_ms", manifest.max_queue_delay_ms, float,
                 lambda v: 0 <= v <= 10_000, "a number of milliseconds 0-10000")
    warmup = tuple(sorted({b for b in manifest.warmup_batch_sizes if b <= max(1, max_batch)}
                          | {1, max(1, max_batch)}))
    return Batching(
        max_batch_size=max_batch, max_queue_delay_ms=delay, warmup_batch_sizes=warmup,
        max_queue_size=pick("max_queue_size", DEFAULT_MAX_QUEUE_SIZE, integer,
                            lambda v: v >= 1, "an integer >= 1"),
        queue_timeout_ms=pick("queue_timeout_ms", DEFAULT_QUEUE_TIMEOUT_MS, float,
                              lambda v: 0 < v <= 600_000, "a number of milliseconds 0-600000 "
                                                          "(above 0)"))


def load_settings(manifest: Manifest, flags: Mapping[str, object] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting; raise StartupError naming every bad one at once."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    problems: list[str] = []

    def pick(name: str, default: object, parse, check, accepted: str):
        var = PREFIX + name.upper()
        if name in flags:
            raw, source = flags[name], f"--{name.replace('_', '-')}"
        elif var in env and env[var] != "":
            raw, source = env[var], var
        else:
            return default
        try:
            value = parse(raw)
        except (TypeError, ValueError):
            problems.append(f"{source}={raw!r} must be {accepted}")
            return default
        if not check(value):
            problems.append(f"{source}={raw!r} must be {accepted}")
            return default
        return value

    def integer(v):
        if isinstance(v, float) and not v.is_integer():
            raise ValueError
        return int(v)

    def auto_boolean(v):
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower()
        if text == "auto":
            return None
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError

    max_body = pick("max_body_bytes", Settings.max_body_bytes, integer, lambda v: v >= 1024,
                    "an integer number of bytes >= 1024")
    max_buffered = pick("max_buffered_bytes", 4 * max_body, integer, lambda v: v >= max_body,
                        f"an integer number of bytes >= the body limit ({max_body})")
    problems.extend(unknown_variables(env))
    key_file = env.get(PREFIX + "MODEL_KEY_FILE") or None
    device = pick("device", manifest.device, str, lambda v: v in ("cpu", "cuda"), "'cpu' or 'cuda'")
    gpu_mem_limit = pick("gpu_mem_limit", None, integer, lambda v: v >= 1,
                         "a positive integer number of bytes (e.g. 4294967296 for 4Gi)")
    if gpu_mem_limit is not None and device != "cuda":
        # A cap on a CPU server caps nothing: the deployment meant something else.
        problems.append(f"{PREFIX}GPU_MEM_LIMIT={gpu_mem_limit} caps the CUDA provider's memory, "
                        f"but the device is {device!r} (set {PREFIX}DEVICE=cuda, or unset it)")
    settings = Settings(
        context=context_from(flags, env),
        host=pick("host", "127.0.0.1", str, bool, "a host name or address"),
        port=pick("port", contract.PORT, integer, lambda v: 0 <= v <= 65535,
                  "a port number 0-65535"),
        # 0 reads as "off" too, so a deployment can pass the stack's 0 = off through unchanged.
        grpc_port=pick("grpc_port", 0, integer, lambda v: 0 <= v <= 65535,
                       "a port number 1-65535, or 0/unset for no gRPC") or None,
        device=device,
        gpu_mem_limit=gpu_mem_limit,
        model_name=pick("model_name", manifest.name, str, valid_model_name,
                        "a model name of letters, digits, '_', '.' and '-'"),
        batching=resolve_batching(manifest, pick, integer),
        max_body_bytes=max_body,
        intra_op_threads=pick("intra_op_threads", cgroup_cpu_limit(), integer,
                              lambda v: v >= 1, "an integer >= 1"),
        intra_op_spinning=pick("intra_op_spinning", None, auto_boolean, lambda v: True,
                               "'auto', 1 or 0"),
        drain_seconds=pick("drain_seconds", float(contract.DRAIN_SECONDS), float, lambda v: v >= 0,
                           "a number of seconds >= 0"),
        max_header_bytes=pick("max_header_bytes", Settings.max_header_bytes, integer,
                              lambda v: v >= 1024, "an integer number of bytes >= 1024"),
        max_headers=pick("max_headers", Settings.max_headers, integer, lambda v: v >= 8,
                         "an integer >= 8"),
        header_timeout_seconds=pick("header_timeout_seconds", Settings.header_timeout_seconds,
                                    float, lambda v: 0 < v <= 3600,
                                    "a number of seconds > 0 and <= 3600"),
        body_timeout_seconds=pick("body_timeout_seconds", Settings.body_timeout_seconds, float,
                                  lambda v: 0 < v <= 3600, "a number of seconds > 0 and <= 3600"),
        keep_alive_seconds=pick("keep_alive_seconds", Settings.keep_alive_seconds, float,
                                lambda v: 0 < v <= 3600, "a number of seconds > 0 and <= 3600"),
        max_connections=pick("max_connections", Settings.max_connections, integer,
                             lambda v: v >= 1, "an integer >= 1"),
        probe_connections=pick("probe_connections", Settings.probe_connections, integer,
                               lambda v: v >= 1, "an integer >= 1"),
        max_streaming_calls=pick("max_streaming_calls", Settings.max_streaming_calls, integer,
                                 lambda v: v >= 0, "an integer >= 0 (0: no streaming calls)"),
        request_timeout_seconds=pick("request_timeout_seconds",
                                     Settings.request_timeout_seconds, float,
                                     lambda v: 0 < v <= 3600,
                                     "a number of seconds > 0 and <= 3600"),
        max_buffered_bytes=max_buffered,
        max_request_elements=pick("max_request_elements", manifest.max_request_elements or 0,
                                  integer, lambda v: v >= 0, "an integer >= 0 (0: no limit)"),
        auth=resolve_auth(env, problems),
        audit_log=resolve_audit_log(env, problems),
        model_key_file=Path(key_file) if key_file else None,
        log_level=pick("log_level", "info", lambda v: str(v).lower(), lambda v: v in LOG_LEVELS,
                       "one of " + ", ".join(LOG_LEVELS)),
    )
    if problems:
        raise StartupError("invalid settings: " + "; ".join(problems))
    return settings
