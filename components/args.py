"""Typed, grouped arguments of `ServedModel`, each group validating itself on construction.

A program that serves a model builds these directly (see examples/); the stack program builds
them once from its config (components/settings.py). Every group collects all of its problems
and raises one `ArgsError` naming each field, the value and what is accepted; `ServedModelArgs`
adds the rules that span groups (GPUs need the kubernetes target and a pool that can hold the
rollout, a public endpoint needs a token and TLS).

A problem's text may name another field as `@{group.field}`: `Problem.render` writes it as the
field's path here, and the stack settings write it as the stack key (`servedmodel:maxReplicas`),
so one rule gives the right words to both kinds of callers.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pulumi

from .specs import ROLLOUT_SURGE
from .gpus import GPUS_PER_INSTANCE, instance_family, unsupported_reason
from servedmodel.models.contract import DRAIN_SECONDS, PORT as SERVER_PORT
from servedmodel.models.loader import is_model_ref
from servedmodel.models.spec import COMPRESSIONS
from servedmodel.models.zoo import ZOO as _MODEL_ZOO  # name -> factory; importing it loads no torch

ZOO = tuple(_MODEL_ZOO)
TARGETS = ("docker", "kubernetes")
AUTOSCALE_METRICS = ("inflight", "queue", "cpu")
SERVICE_TYPES = ("ClusterIP", "LoadBalancer")
AMI_TYPES = ("BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA")

# ServerArgs fields passed to the server as SERVEDMODEL_<NAME> when set.
BATCHING_SETTINGS = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "queue_timeout_ms")
MAX_NAME = 40  # leaves room for Pulumi's auto-name suffixes and the component suffixes
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_REF = re.compile(r"@\{([a-z_.]+)\}")
# An ACM certificate (TLS at the load balancer): arn:<partition>:acm:<region>:<account>:certificate/<id>
_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$")


@dataclass(frozen=True)
class Problem:
    """One bad value: the field's path (`autoscaling.max_replicas`), the value, what is accepted."""

    field: str
    value: Any
    accepted: str
    secret: bool = False  # never echo the value

    def render(self, name_of: Callable[[str], str] = lambda path: path) -> str:
        text = _REF.sub(lambda m: name_of(m.group(1)), self.accepted)
        shown = "[secret]" if self.secret else repr(self.value)
        return f"{name_of(self.field)} = {shown}: {text}"


class ArgsError(ValueError):
    """Every problem of one args object (or of several, when the stack settings collect them)."""

    def __init__(self, what: str, problems: Sequence[Problem]):
        self.what = what
        self.problems = list(problems)
        super().__init__(f"invalid {what} ({len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}):\n"
                         + "\n".join(f"  - {p.render()}" for p in self.problems))


class _Checker:
    """Collects the problems of one group; `raise_if_any` raises them together."""

    def __init__(self, group: str, obj: Any):
        self.group, self.obj, self.problems = group, obj, []

    def path(self, name: str) -> str:
        return f"{self.group}.{name}" if self.group else name

    def bad(self, name: str, accepted: str, value: Any = ..., secret: bool = False) -> None:
        self.problems.append(Problem(self.path(name), getattr(self.obj, name) if value is ... else value,
                                     accepted, secret))

    def integer(self, name: str, minimum: int, maximum: Optional[int] = None, optional: bool = False) -> bool:
        v = getattr(self.obj, name)
        if optional and v is None:
            return True
        if not isinstance(v, int) or isinstance(v, bool):
            self.bad(name, "must be an integer")
            return False
        if v < minimum or (maximum is not None and v > maximum):
            self.bad(name, f"must be between {minimum} and {maximum}" if maximum is not None
                     else f"must be {minimum} or more")
            return False
        return True

    def choice(self, name: str, accepted: Sequence[str]) -> bool:
        if getattr(self.obj, name) not in accepted:
            self.bad(name, f"accepted: one of {', '.join(accepted)}")
            return False
        return True

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise ArgsError(what, self.problems)


def is_dns_label(value: Any, max_len: int = 63) -> bool:
    return isinstance(value, str) and len(value) <= max_len and bool(_DNS_LABEL.match(value))


@dataclass(frozen=True)
class ModelArgs:
    """Which model to serve and under which name."""

    served_name: str
    """The endpoint name: resource names, labels, the key of the stack outputs. Required."""
    model: str
    """A zoo name or `path/to/file.py:factory` (the grammar of models/loader.py). Required."""
    compression: str = "none"
    """One of models.spec.COMPRESSIONS. Default "none"."""
    max_metric_drop: Optional[float] = None
    """The allowed drop of the task metric after compression (a share, 0..1), overriding the
    spec's allowance for every evaluation (models.build's max_metric_drop, the CLI's
    --max-metric-drop). None: the spec's own. Default None."""

    def __post_init__(self) -> None:
        c = _Checker("model", self)
        if not is_dns_label(self.served_name, MAX_NAME):
            c.bad("served_name", f"must be a DNS label (lowercase letters, digits, '-') of at most {MAX_NAME} characters")
        if not is_model_ref(self.model):
            c.bad("model", f"unknown model; accepted: one of {', '.join(ZOO)} or 'path/to/file.py:factory'")
        c.choice("compression", COMPRESSIONS)
        drop = self.max_metric_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float))
                                 or not 0 <= drop <= 1):  # NaN fails the comparison too
            c.bad("max_metric_drop", "must be a share between 0 and 1 (such as 0.01), or unset for the "
                                     "model spec's own allowance")
        c.raise_if_any("ModelArgs")


@dataclass(frozen=True)
class ResourcesArgs:
    """What one replica gets (requests == limits) and its scheduling priority."""

    cpu: str = "1"
    """CPU (Kubernetes quantity). Default "1"."""
    memory: str = "1Gi"
    """Memory (Kubernetes quantity). Default "1Gi"."""
    gpu: int = 0
    """NVIDIA GPUs; > 0 serves on CUDA from a GPU node pool. Default 0."""
    priority: int = 0
    """> 0 creates a PriorityClass with this value for the pods. Default 0."""

    def __post_init__(self) -> None:
        c = _Checker("resources", self)
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _QUANTITY.match(value):
                c.bad(name, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi")
        c.integer("gpu", 0)
        c.integer("priority", 0)
        c.raise_if_any("ResourcesArgs")

    @property
    def device(self) -> str:
        """The runtime the image packages: cuda when the replicas get GPUs."""
        return "cuda" if self.gpu > 0 else "cpu"


@dataclass(frozen=True)
class AutoscalingArgs:
    """Replica bounds; above `replicas` an autoscaling/v2 HPA owns the count."""

    replicas: int = 1
    """Minimum (and, without autoscaling, exact) replicas. Default 1."""
    max_replicas: int = 1
    """Maximum replicas. Default 1."""
    metric: str = "inflight"
    """inflight | queue | cpu. Default "inflight"."""
    target_inflight: int = 4
    """Per-pod in-flight requests the HPA aims for. Default 4."""
    target_queue_ms: int = 50
    """Per-pod mean queue time (ms) the HPA aims for. Default 50."""
    target_cpu_percent: int = 70
    """CPU utilisation (% of the request) the HPA aims for. Default 70."""

    def __post_init__(self) -> None:
        c = _Checker("autoscaling", self)
        bounds = [c.integer(name, 1) for name in ("replicas", "max_replicas")]
        for name in ("target_inflight", "target_queue_ms"):
            c.integer(name, 1)
        c.integer("target_cpu_percent", 1, 100)
        c.choice("metric", AUTOSCALE_METRICS)
        if all(bounds) and self.replicas > self.max_replicas:
            c.bad("replicas", f"must not exceed @{{autoscaling.max_replicas}} ({self.max_replicas}); min > max replicas")
        c.raise_if_any("AutoscalingArgs")

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas > self.replicas


@dataclass(frozen=True)
class NetworkArgs:
    """Where the model is reachable and who may reach it."""

    namespace: str = "default"
    """Existing Kubernetes namespace. Default "default"."""
    service_type: str = "ClusterIP"
    """ClusterIP or LoadBalancer (public). Default "ClusterIP"."""
    allow_load_balancer: bool = False
    """The explicit opt-in a LoadBalancer needs (annotated for the policy pack). Default False."""
    ingress_namespaces: tuple[str, ...] = ()
    """Namespaces the NetworkPolicy admits besides the model's own. Default ()."""
    ingress_cidrs: tuple[str, ...] = ()
    """CIDR blocks the NetworkPolicy admits. Default ()."""
    local_port: int = 8080
    """Host port on 127.0.0.1 (docker target). Default 8080."""
    auth_token: Optional[pulumi.Input[str]] = field(default=None, repr=False, compare=False)
    """Bearer token the server requires on model routes, a Pulumi secret. Default None."""
    tls_certificate_arn: str = ""
    """ACM certificate the public load balancer (an NLB) terminates TLS with; required with a
    LoadBalancer, together with `auth_token`. Default ""."""
    grpc_port: int = 0
    """The server's gRPC port (SERVEDMODEL_GRPC_PORT): a container port, a Service port named
    `grpc` (appProtocol grpc), gRPC probes and the NetworkPolicy rule. 0: gRPC off. Default 0."""
    hostname: str = ""
    """The endpoint's public DNS name; with scale to zero the KEDA interceptor routes it (the
    HTTPScaledObject's hosts). "": none. Default "". (Issue 18: the full setting, DNS record
    and url, is NetworkArgs' `hostname` of the endpoint-name change; this field is its stub.)"""

    def __post_init__(self) -> None:
        c = _Checker("network", self)
        if not is_dns_label(self.namespace):
            c.bad("namespace", "must be a DNS label (lowercase letters, digits, '-')")
        c.choice("service_type", SERVICE_TYPES)
        if not isinstance(self.allow_load_balancer, bool):
            c.bad("allow_load_balancer", "must be true or false")
        elif self.service_type == "LoadBalancer" and not self.allow_load_balancer:
            c.bad("service_type", "a LoadBalancer is public: set @{network.allow_load_balancer} to true to opt in, "
                                  "or use ClusterIP")
        public = self.service_type == "LoadBalancer"
        if public:
            missing = [ref for ref, given in (("@{network.auth_token}", self.auth_token is not None),
                                              ("@{network.tls_certificate_arn}", bool(self.tls_certificate_arn)))
                       if not given]
            if missing:
                c.bad("service_type", "a public endpoint needs both @{network.auth_token} (a secret) and "
                                      "@{network.tls_certificate_arn} (an ACM certificate the NLB terminates TLS with); "
                                      f"missing: {', '.join(missing)}")
        if self.tls_certificate_arn:
            if not isinstance(self.tls_certificate_arn, str) or not _ACM_ARN.match(self.tls_certificate_arn):
                c.bad("tls_certificate_arn", "must be an ACM certificate ARN such as "
                                             "arn:aws:acm:eu-west-1:123456789012:certificate/<id>")
            elif not public:
                c.bad("tls_certificate_arn", "TLS terminates at the load balancer: only with @{network.service_type} "
                                             "LoadBalancer (leave it empty for ClusterIP)")
        for ns in self.ingress_namespaces:
            if not is_dns_label(ns):
                c.bad("ingress_namespaces", "each entry must be a namespace name (DNS label)", value=ns)
        for cidr in self.ingress_cidrs:
            try:
                ipaddress.ip_network(cidr)
            except (TypeError, ValueError):
                c.bad("ingress_cidrs", "each entry must be a CIDR block such as 10.0.0.0/16", value=cidr)
        c.integer("local_port", 1024, 65535)
        if c.integer("grpc_port", 0, 65535) and self.grpc_port:
            if self.grpc_port < 1024:
                c.bad("grpc_port", "must be 0 (gRPC off) or a port between 1024 and 65535")
            elif self.grpc_port in (SERVER_PORT, self.local_port):
                c.bad("grpc_port", f"must differ from the server's HTTP port ({SERVER_PORT}) and from @{{network.local_port}}")
        c.raise_if_any("NetworkArgs")


@dataclass(frozen=True)
class ServerArgs:
    """The server's shutdown and batching settings (SERVEDMODEL_* variables).

    None leaves a setting to the server (its own default, or the model's manifest): the
    defaults live in serving/contract.py and the manifest, never restated here.
    """

    drain_seconds: int = DRAIN_SECONDS
    """Graceful drain after SIGTERM; the pod's grace period outlasts preStop + drain. Default: the server's."""
    pre_stop_seconds: int = 5
    """preStop sleep so endpoints stop routing before the drain. Default 5."""
    max_batch_size: Optional[int] = None
    """SERVEDMODEL_MAX_BATCH_SIZE: the dynamic batching cap. None: the manifest's. Default None."""
    max_queue_delay_ms: Optional[int] = None
    """SERVEDMODEL_MAX_QUEUE_DELAY_MS: the batching window. None: the manifest's. Default None."""
    max_queue_size: Optional[int] = None
    """SERVEDMODEL_MAX_QUEUE_SIZE: queued requests before shedding with 503. None: the server's. Default None."""
    queue_timeout_ms: Optional[int] = None
    """SERVEDMODEL_QUEUE_TIMEOUT_MS: a request that cannot start within it gets 503. None: the server's. Default None."""

    def __post_init__(self) -> None:
        c = _Checker("server", self)
        c.integer("drain_seconds", 0)
        c.integer("pre_stop_seconds", 0)
        c.integer("max_batch_size", 1, optional=True)
        c.integer("max_queue_delay_ms", 0, 10_000, optional=True)
        c.integer("max_queue_size", 1, optional=True)
        c.integer("queue_timeout_ms", 1, optional=True)
        c.raise_if_any("ServerArgs")

    def batching_env(self) -> dict[str, str]:
        """The SERVEDMODEL_* batching variables that are set (the rest stay the server's)."""
        return {name: str(getattr(self, name)) for name in BATCHING_SETTINGS if getattr(self, name) is not None}


@dataclass(frozen=True)
class NodePoolArgs:
    """An EKS managed GPU node group on an existing cluster (kubernetes target, gpu > 0)."""

    cluster_name: str
    """The existing EKS cluster the nodes join. Required."""
    instance_types: tuple[str, ...] = ("g5.xlarge",)
    """GPU instance types (keys of GPUS_PER_INSTANCE). Default ("g5.xlarge",)."""
    ami_type: str = "BOTTLEROCKET_x86_64_NVIDIA"
    """EKS AMI type. Default BOTTLEROCKET_x86_64_NVIDIA (ships the device plugin)."""
    min_size: int = 1
    """Minimum nodes. Default 1."""
    desired_size: int = 1
    """Initial desired nodes (the cluster autoscaler owns it afterwards). Default 1."""
    max_size: int = 2
    """Maximum nodes. Default 2."""
    subnet_ids: Optional[pulumi.Input[Sequence[str]]] = field(default=None, compare=False)
    """Subnets of the nodes; None uses the cluster's. Default None."""

    def __post_init__(self) -> None:
        c = _Checker("node_pool", self)
        if not isinstance(self.cluster_name, str) or not self.cluster_name:
            c.bad("cluster_name", "the name of an existing EKS cluster the nodes join")
        types = tuple(self.instance_types or ())
        for t in types:
            if unsupported_reason(t):
                c.bad("instance_types", f"{t}: {unsupported_reason(t)}; use a Turing or newer NVIDIA type "
                                        "(g4dn, g5, g6, g6e, p4d, p5)", value=t)
        unknown = [t for t in types if t not in GPUS_PER_INSTANCE and not unsupported_reason(t)]
        if not types or unknown:
            c.bad("instance_types", f"GPU instance types only; accepted: {', '.join(GPUS_PER_INSTANCE)}",
                  value=list(types))
        c.choice("ami_type", AMI_TYPES)
        sizes = [c.integer(name, 0) for name in ("min_size", "desired_size", "max_size")]
        if all(sizes) and (self.max_size < 1 or not self.min_size <= self.desired_size <= self.max_size):
            c.bad("desired_size", f"need 0 <= @{{node_pool.min_size}} ({self.min_size}) <= @{{node_pool.desired_size}} "
                                  f"({self.desired_size}) <= @{{node_pool.max_size}} ({self.max_size}), "
                                  f"@{{node_pool.max_size}} >= 1")
        c.raise_if_any("NodePoolArgs")

    @property
    def gpus_per_node(self) -> int:
        """GPUs the smallest of the pool's instance types has (the pool may get any of them)."""
        return min(GPUS_PER_INSTANCE[t] for t in self.instance_types)


@dataclass(frozen=True)
class RegistryArgs:
    """Where the image is pushed (kubernetes target)."""

    url: str = ""
    """Registry prefix (host/path); each model goes to <url>/<served name>. "" creates an ECR repository. Default ""."""
    username: str = ""
    """User for `url`; "" pushes without logging in. Default ""."""
    password: Optional[pulumi.Input[str]] = field(default=None, repr=False, compare=False)
    """Password for `url`, a Pulumi secret. Default None."""
    keep_versions: int = 10
    """Image versions the ECR lifecycle policy keeps (the rollback window). Default 10."""

    def __post_init__(self) -> None:
        c = _Checker("registry", self)
        if self.username and self.password is None:
            c.bad("username", "needs the secret @{registry.password} (pulumi config set --secret)")
        c.integer("keep_versions", 1)
        c.raise_if_any("RegistryArgs")


# --- how a new version reaches traffic, and how the model is watched ---------------------------
# (components/canary.py and components/monitoring.py build the objects from these groups)

ROLLOUT_STRATEGIES = ("rolling", "canary")
# 2 x 3m: the default analysis (5 measurements a minute apart after a first minute) fits in the
# pauses from its starting step, as RolloutArgs requires (issue 18).
DEFAULT_STEPS = ("setWeight:20", "pause:3m", "setWeight:50", "pause:3m")
MONITORING_MODES = ("prometheus-operator", "annotations", "none")
_LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# Argo's durations as this package accepts them: a whole number of s, m or h ("90s", "2m").
_DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h)$")
_ADDRESS = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(value: str) -> int:
    """'90s' -> 90, '2m' -> 120, '1h' -> 3600 (the grammar _DURATION accepts)."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def parse_step(step: str) -> dict[str, Any]:
    """One canary step in the config grammar -> the Rollout's step object.

    `setWeight:N` (N in 1..100: percent of the replicas that run the new version), `pause:D`
    (D a duration such as 90s, 2m, 1h) or `pause` (wait for `kubectl argo rollouts promote`).
    """
    kind, sep, value = step.partition(":")
    if kind == "setWeight" and sep and value.isdigit() and 1 <= int(value) <= 100:
        return {"setWeight": int(value)}
    if kind == "pause" and not sep:
        return {"pause": {}}
    if kind == "pause" and sep and _DURATION.match(value):
        return {"pause": {"duration": value}}
    raise ValueError(step)


@dataclass(frozen=True)
class RolloutArgs:
    """How a new model version reaches traffic. Validates itself (ArgsError).

    `rolling` (the default) is the Deployment's rolling update; `canary` an Argo Rollouts
    Rollout whose steps shift replicas to the new version while a background analysis judges
    the canary's pods on the server's metrics, and aborts (rolls back) when they are worse than
    the thresholds. The analysis fields are ignored by `rolling`.
    """

    strategy: str = "rolling"
    """rolling | canary. Default "rolling"."""
    steps: tuple[str, ...] = DEFAULT_STEPS
    """Canary steps: setWeight:N, pause:D, pause (indefinite). Default 20% 3m, 50% 3m. With
    `canary`, the timed pauses from the analysis' starting step must outlast the analysis
    ((analysis_count + 1) x analysis_interval): Argo promotes when the steps end, whatever the
    background analysis has not yet measured."""
    prometheus_address: str = ""
    """Prometheus HTTP address the Argo Rollouts controller queries (canary: required), e.g.
    http://prometheus-operated.monitoring.svc:9090. Default ""."""
    analysis_interval: str = "1m"
    """Time between measurements, and the window each measurement judges. Default "1m"."""
    analysis_count: int = 5
    """Measurements per metric. Default 5."""
    analysis_failure_limit: int = 1
    """Failed measurements a metric tolerates; one more aborts the rollout. Default 1."""
    max_failure_ratio: float = 0.01
    """Highest share of the canary's requests failing in the server (model_error, internal).
    Default 0.01."""
    max_p99_latency_ms: int = 500
    """Highest p99 request latency of the canary in ms. Default 500."""
    max_shed_ratio: float = 0.01
    """Highest share of the canary's requests shed (queue full, queue time over budget).
    Default 0.01."""
    query_timeout_seconds: int = 10
    """Prometheus query timeout. Default 10."""

    def __post_init__(self) -> None:
        c = _Checker("rollout", self)
        c.choice("strategy", ROLLOUT_STRATEGIES)
        steps = tuple(self.steps or ())
        bad = []
        for step in steps:
            try:
                parse_step(step)
            except (ValueError, AttributeError):
                bad.append(step)
        if not steps or bad:
            c.bad("steps", "a non-empty list of setWeight:N (N in 1..100), pause:D (D like 90s, 2m, 1h) or pause",
                  value=list(steps))
        elif not any(s.startswith("setWeight:") for s in steps):
            c.bad("steps", "needs a setWeight:N step: without one the canary never gets traffic to judge",
                  value=list(steps))
        if self.strategy == "canary" and not _ADDRESS.match(self.prometheus_address or ""):
            c.bad("prometheus_address", "the canary analysis needs Prometheus' http(s):// address, e.g. "
                                        "http://prometheus-operated.monitoring.svc:9090")
        elif self.prometheus_address and not _ADDRESS.match(self.prometheus_address):
            c.bad("prometheus_address", "must be an http(s):// URL")
        if not isinstance(self.analysis_interval, str) or not _DURATION.match(self.analysis_interval):
            c.bad("analysis_interval", "a duration such as 30s, 1m or 1h")
        counts = [c.integer("analysis_count", 1, 100), c.integer("analysis_failure_limit", 0)]
        if all(counts) and self.analysis_failure_limit >= self.analysis_count:
            c.bad("analysis_failure_limit", f"must be below @{{rollout.analysis_count}} ({self.analysis_count}): "
                                            "a higher limit can never abort")
        for name in ("max_failure_ratio", "max_shed_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                c.bad(name, "a share between 0 and 1, such as 0.01")
        c.integer("max_p99_latency_ms", 1)
        c.integer("query_timeout_seconds", 1, 300)
        if self.strategy == "canary" and not c.problems:
            self._check_analysis_fits_the_pauses(c)
        c.raise_if_any("RolloutArgs")

    def _check_analysis_fits_the_pauses(self, c: "_Checker") -> None:
        """A background analysis does not hold promotion: Argo promotes once the last step is
        done, and a run it then terminates counts as Successful whatever it had not measured yet
        (argoproj/argo-rollouts v1.9.1 rollout/canary.go and rollout/sync.go shouldFullPromote;
        analysis/analysis.go, a terminated run). So the timed pauses from the analysis' starting
        step must last as long as the analysis: its first measurement after one interval, then
        `analysis_count` of them one interval apart, plus one interval for the last query."""
        after = self.steps[self.analysis_starting_step:]
        if "pause" in after:
            return  # an indefinite pause waits for a person, and the analysis goes on meanwhile
        paused = sum(duration_seconds(s.split(":", 1)[1]) for s in after if s.startswith("pause:"))
        need = duration_seconds(self.analysis_interval) * (self.analysis_count + 1)
        if paused < need:
            c.bad("steps", f"the timed pauses from the analysis' first step (step {self.analysis_starting_step}) "
                           f"last {paused}s, less than the analysis needs ({need}s: @{{rollout.analysis_count}} "
                           f"{self.analysis_count} measurements every @{{rollout.analysis_interval}} "
                           f"{self.analysis_interval}, after a first wait of one interval); Argo Rollouts promotes "
                           "when the steps end, unjudged: lengthen the pauses or lower the count",
                  value=list(self.steps))

    @property
    def canary(self) -> bool:
        return self.strategy == "canary"

    @property
    def analysis_starting_step(self) -> int:
        """The analysis starts with the step after the first setWeight: the canary has pods (and
        traffic) by then, so the first measurement is not of an empty ReplicaSet."""
        first = next(i for i, s in enumerate(self.steps) if s.startswith("setWeight:"))
        return min(first + 1, len(self.steps) - 1)


@dataclass(frozen=True)
class MonitoringArgs:
    """What monitoring a served model gets, and its alert thresholds. Validates itself (ArgsError)."""

    mode: str = "none"
    """prometheus-operator | annotations | none. Default "none"."""
    labels: tuple[str, ...] = ()
    """key=value labels on the PodMonitor and PrometheusRule, for the Prometheus's
    podMonitorSelector/ruleSelector (e.g. release=kube-prometheus-stack). Default ()."""
    scrape_interval: str = "15s"
    """PodMonitor scrape interval. Default "15s"."""
    latency_slo_ms: int = 500
    """p99 latency SLO in ms (ServedModelLatencyP99OverSLO). Default 500."""
    alert_failure_ratio: float = 0.01
    """Server-side failure share that pages (ServedModelHighFailureRatio). Default 0.01."""
    alert_shed_ratio: float = 0.05
    """Shed share that warns (ServedModelShedding). Default 0.05."""
    alert_queue_p99_ms: int = 250
    """p99 queue wait in ms that warns of saturation (ServedModelQueueSaturated). Default 250."""
    runbook_url: str = "docs/operations.md"
    """Where docs/operations.md is read (e.g. its URL in your repository); each alert's
    runbook_url is this plus the alert's section anchor. Default "docs/operations.md"."""

    def __post_init__(self) -> None:
        c = _Checker("monitoring", self)
        c.choice("mode", MONITORING_MODES)
        for item in self.labels:
            key, sep, value = str(item).partition("=")
            if not sep or not _LABEL_NAME.match(key) or not _LABEL_VALUE.match(value):
                c.bad("labels", "each entry key=value, a Kubernetes label (e.g. release=kube-prometheus-stack)",
                      value=item)
        if not isinstance(self.scrape_interval, str) or not _DURATION.match(self.scrape_interval):
            c.bad("scrape_interval", "a duration such as 15s or 1m")
        for name in ("alert_failure_ratio", "alert_shed_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                c.bad(name, "a share strictly between 0 and 1, such as 0.05")
        c.integer("latency_slo_ms", 1)
        c.integer("alert_queue_p99_ms", 1)
        if not isinstance(self.runbook_url, str) or not self.runbook_url or any(ch.isspace() for ch in self.runbook_url):
            c.bad("runbook_url", "a URL or path without spaces (where docs/operations.md is read)")
        c.raise_if_any("MonitoringArgs")

    @property
    def label_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.labels)


@dataclass(frozen=True)
class ServedModelArgs:
    """Everything one ServedModel needs, grouped; never the whole stack config."""

    model: ModelArgs
    """Which model and its served name. Required."""
    out_dir: Path
    """Where models.build writes the build context (relative to the project directory). Required."""
    target: str = "docker"
    """docker (local container) or kubernetes (EKS). Default "docker"."""
    resources: ResourcesArgs = ResourcesArgs()
    autoscaling: AutoscalingArgs = AutoscalingArgs()
    network: NetworkArgs = NetworkArgs()
    server: ServerArgs = ServerArgs()
    registry: RegistryArgs = RegistryArgs()
    node_pool: Optional[NodePoolArgs] = None
    """The GPU node pool (kubernetes target with resources.gpu > 0). Default None."""
    rollout: RolloutArgs = RolloutArgs()
    """rolling (default) or a metric-gated canary with Argo Rollouts (kubernetes target)."""
    monitoring: MonitoringArgs = MonitoringArgs()
    """PodMonitor, rules and alerts, dashboard (kubernetes target). Default: none."""
    elastic: "ElasticArgs" = field(default_factory=lambda: ElasticArgs())
    """Karpenter / KEDA / scale to zero and the cold-start budget's inputs. Default: managed nodes, HPA."""
    protect: bool = False
    """Protect the registry and the node pool from deletion (prod). Default False."""
    cache_dir: Optional[Path] = None
    """models.build cache; None uses $SERVEDMODEL_CACHE or ~/.cache/servedmodel. Default None."""
    kubeconfig: Optional[pulumi.Input[str]] = field(default=None, repr=False, compare=False)
    """The cluster's kubeconfig (a secret), for the canary's RolloutWait, which reads the Rollout
    itself (components/rollout_wait.py); the program passes the one its Kubernetes provider
    uses. None: the Kubernetes client's own lookup (KUBECONFIG, ~/.kube/config, in-cluster).
    Default None."""

    def __post_init__(self) -> None:
        for f in fields(self):
            expected = {"model": ModelArgs, "resources": ResourcesArgs, "autoscaling": AutoscalingArgs,
                        "network": NetworkArgs, "server": ServerArgs, "registry": RegistryArgs,
                        "rollout": RolloutArgs, "monitoring": MonitoringArgs}.get(f.name)
            if expected is not None and not isinstance(getattr(self, f.name), expected):
                raise TypeError(f"ServedModelArgs.{f.name} must be a {expected.__name__}")
        if not isinstance(self.elastic, ElasticArgs):
            raise TypeError("ServedModelArgs.elastic must be a ElasticArgs")
        problems = cross_group_problems(self.target, self.resources, self.autoscaling, self.node_pool, self.elastic)
        problems += delivery_problems(self.target, self.rollout, self.monitoring)
        problems += elastic_problems(self.target, self.resources, self.autoscaling, self.network, self.node_pool,
                                     self.elastic)
        problems += canary_scaling_problems(self.rollout, self.elastic)
        problems += scaling_source_problems(self.elastic, self.monitoring, self.network)
        if problems:
            raise ArgsError("ServedModelArgs", problems)

    @property
    def kubernetes(self) -> bool:
        return self.target == "kubernetes"


def cross_group_problems(target: Any, resources: Optional[ResourcesArgs], autoscaling: Optional[AutoscalingArgs],
                         node_pool: Optional[NodePoolArgs], elastic: Optional["ElasticArgs"] = None) -> list[Problem]:
    """The rules that span groups (each group has checked itself already). A group that could
    not be built is None: the rules that need it are skipped, the others still run (the stack
    settings report every problem at once)."""
    out: list[Problem] = []
    if target not in TARGETS:
        return [Problem("target", target, f"accepted: one of {', '.join(TARGETS)}")]
    gpu = resources.gpu if resources is not None else 0
    if target == "docker" and gpu:
        out.append(Problem("resources.gpu", gpu, "GPUs are served on the kubernetes target only; use 0 on the docker target"))
    if target == "kubernetes" and gpu and node_pool is None:
        out.append(Problem("node_pool", None, "GPU replicas on the kubernetes target need a node pool (NodePoolArgs)"))
    # With Karpenter the node group's max_size does not bound the pool (its GPU limit does, elastic_problems).
    karpenter = elastic is not None and elastic.karpenter
    if target == "kubernetes" and gpu and node_pool is not None and autoscaling is not None and not karpenter:
        out += capacity_problems(gpu, autoscaling.max_replicas, node_pool)
    return out


def canary_scaling_problems(rollout: Optional[RolloutArgs], elastic: Optional["ElasticArgs"],
                            strategy: Any = None, autoscaler: Any = None) -> list[Problem]:
    """A canary's pods belong to an Argo Rollout, while KEDA's ScaledObject (and the HTTP add-on)
    is declared against the model's Deployment: the two are not combined yet, so the pair is
    refused rather than deployed with an autoscaler that scales nothing."""
    strategy = rollout.strategy if rollout is not None else strategy
    autoscaler = elastic.autoscaler if elastic is not None else autoscaler
    if strategy == "canary" and autoscaler == "keda":
        return [Problem("rollout", strategy, "a canary (Argo Rollouts) cannot be combined with autoscaler keda yet; "
                        "use rollout rolling with keda, or autoscaler hpa with a canary")]
    return []


def scaling_source_problems(elastic: Optional["ElasticArgs"], monitoring: Optional[MonitoringArgs],
                            network: Optional[NetworkArgs], autoscaler: Any = None, mode: Any = None,
                            keda_http: Any = None, grpc_port: Any = None) -> list[Problem]:
    """What KEDA needs from the rest of the stack (issue 18). A group that could not be built is
    None; its raw value still gets the rule.

    - KEDA's Prometheus trigger reads the server's metrics from a Prometheus that scrapes the
      pods. `monitoring: none` declares no scrape (and promises none): the query then reads
      nothing, and with scale to zero (where an empty result must read as idle,
      `ignoreNullValues: true`) the model would never scale above one replica, silently.
    - The HTTP add-on's interceptor routes HTTP/1.1 (and h2c only to a Service port with
      `appProtocol: kubernetes.io/h2c`: kedacore/http-add-on v0.15.0
      interceptor/handler/upstream.go); our gRPC port is a separate Service port the
      interceptor never sees, so at zero replicas a gRPC call finds nothing to answer it."""
    autoscaler = elastic.autoscaler if elastic is not None else autoscaler
    keda_http = elastic.keda_http if elastic is not None else keda_http
    mode = monitoring.mode if monitoring is not None else mode
    grpc_port = network.grpc_port if network is not None else grpc_port
    out: list[Problem] = []
    if autoscaler == "keda" and mode == "none":
        out.append(Problem("monitoring.mode", mode,
                           "@{elastic.autoscaler} keda scales on the server's metrics in Prometheus: declare how they are "
                           "scraped, prometheus-operator (a PodMonitor) or annotations (your Prometheus scrapes the "
                           "annotated pods); with none KEDA's query reads nothing"))
    if keda_http is True and isinstance(grpc_port, int) and grpc_port:
        out.append(Problem("network.grpc_port", grpc_port,
                           "gRPC does not pass the KEDA HTTP add-on's interceptor (@{elastic.keda_http}): at zero "
                           "replicas a gRPC call would find no pod; use 0 with keda_http, or keep a replica "
                           "(@{elastic.min_replicas} 1, without keda_http)"))
    return out


def delivery_problems(target: Any, rollout: Optional[RolloutArgs], monitoring: Optional[MonitoringArgs],
                      strategy: Any = None, mode: Any = None) -> list[Problem]:
    """A canary and the monitoring objects are Kubernetes objects: the docker target has neither.
    A group that could not be built is None; its raw `strategy`/`mode` still get the rule."""
    strategy = rollout.strategy if rollout is not None else strategy
    mode = monitoring.mode if monitoring is not None else mode
    out: list[Problem] = []
    if target != "kubernetes" and strategy == "canary":
        out.append(Problem("rollout.strategy", strategy,
                           "a canary needs the kubernetes target (Argo Rollouts); use rolling on the docker target"))
    if target != "kubernetes" and mode in MONITORING_MODES and mode != "none":
        out.append(Problem("monitoring.mode", mode,
                           "monitoring objects need the kubernetes target; use none on the docker target"))
    return out


def capacity_problems(gpu: int, max_replicas: int, pool: NodePoolArgs) -> list[Problem]:
    """A rollout at max_replicas must schedule: max_replicas + surge pods of `gpu` GPUs each on
    at most `pool.max_size` nodes (pods cannot span nodes: count whole replicas per node)."""
    per_node = pool.gpus_per_node
    if per_node < gpu:
        return [Problem("node_pool.instance_types", list(pool.instance_types),
                        f"each node must hold one replica's {gpu} GPU(s) (@{{resources.gpu}}); the smallest type has {per_node}")]
    per_node_replicas = per_node // gpu
    fit = pool.max_size * per_node_replicas
    need = max_replicas + ROLLOUT_SURGE
    if fit >= need:
        return []
    return [Problem("node_pool.max_size", pool.max_size,
                    f"{pool.max_size} node(s) fit {fit} replica(s) of {gpu} GPU(s); @{{autoscaling.max_replicas}} "
                    f"({max_replicas}) + {ROLLOUT_SURGE} rollout surge (maxUnavailable 0) need {need}; "
                    f"raise @{{node_pool.max_size}} to at least {-(-need // per_node_replicas)}")]


# ---- Elastic GPU capacity (issue 11): Karpenter nodes, KEDA pods, scale to zero ----

# GPU instance families the serving image can run: those of the known instance types
# (components/gpus.py, the one list the node group's validation uses). The Karpenter pool admits
# only these.
IMAGE_GPU_FAMILIES = tuple(sorted({instance_family(t) for t in GPUS_PER_INSTANCE}))
NODE_PROVISIONERS = ("managed", "karpenter")
AUTOSCALERS = ("hpa", "keda")
KEDA_METRICS = ("inflight", "queue")
CAPACITY_TYPES = ("on-demand", "spot")
CONSOLIDATION_POLICIES = ("WhenEmpty", "WhenEmptyOrUnderutilized")


@dataclass(frozen=True)
class KarpenterDefaults:
    """The Karpenter pool defaults, stated once: the stack's elastic group (ElasticArgs) and the
    component's own args (karpenter.KarpenterPoolArgs) both take them from here."""
    capacity_types: tuple[str, ...] = ("on-demand",)
    consolidation_policy: str = "WhenEmpty"
    consolidate_after: str = "5m"
    disruption_budget_nodes: str = "1"
    ami_alias: str = "bottlerocket@latest"


KARPENTER_DEFAULTS = KarpenterDefaults()
_KARPENTER_DURATION = re.compile(r"^(([0-9]+(s|m|h))+|Never)$")
_BUDGET_NODES = re.compile(r"^((100|[0-9]{1,2})%|[0-9]+)$")
_AMI_ALIAS = re.compile(r"^bottlerocket@(latest|v[0-9]+\.[0-9]+\.[0-9]+)$")
_AWS_ID = {"subnet": re.compile(r"^subnet-[0-9a-z]+$"), "sg": re.compile(r"^sg-[0-9a-z]+$")}


@dataclass(frozen=True)
class ElasticArgs:
    """Who provides GPU nodes (managed node group or Karpenter), who scales the pods (HPA or KEDA),
    scale to zero behind the KEDA HTTP add-on, and the cold-start budget's inputs."""

    node_provisioner: str = "managed"
    """managed (EKS node group, `node_pool`) or karpenter (NodePool + EC2NodeClass). Default "managed"."""
    autoscaler: str = "hpa"
    """hpa (autoscaling/v2) or keda (ScaledObject on the server's metrics in Prometheus). Default "hpa"."""
    min_replicas: int = 1
    """KEDA's minimum replicas; 0 = scale to zero (needs keda_http). Default 1."""
    keda_http: bool = False
    """The KEDA HTTP add-on's interceptor holds requests while a pod starts. Default False."""
    capacity_types: tuple[str, ...] = KARPENTER_DEFAULTS.capacity_types
    """Karpenter capacity types: on-demand and/or spot. Default ("on-demand",)."""
    gpu_limit: int = 0
    """Karpenter limit on nvidia.com/gpu; 0 = (max_replicas + surge) x gpu. Default 0."""
    consolidation_policy: str = KARPENTER_DEFAULTS.consolidation_policy
    """Karpenter consolidation policy. Default "WhenEmpty"."""
    consolidate_after: str = KARPENTER_DEFAULTS.consolidate_after
    """Karpenter consolidateAfter. Default "5m"."""
    disruption_budget_nodes: str = KARPENTER_DEFAULTS.disruption_budget_nodes
    """Karpenter disruption budget (count or %). Default "1"."""
    karpenter_node_role: str = ""
    """IAM role of Karpenter's nodes; "" = KarpenterNodeRole-<cluster>. Default ""."""
    karpenter_ami_alias: str = KARPENTER_DEFAULTS.ami_alias
    """EC2NodeClass AMI alias. Default "bottlerocket@latest"."""
    karpenter_subnet_ids: tuple[str, ...] = ()
    """Node subnets by id; () = discovery-tagged. Default ()."""
    karpenter_security_group_ids: tuple[str, ...] = ()
    """Node security groups by id; () = discovery-tagged. Default ()."""
    keda_namespace: str = "keda"
    """Where KEDA and the HTTP add-on run. Default "keda"."""
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus KEDA queries. Default "http://prometheus-operated.monitoring.svc:9090"."""
    keda_polling_seconds: int = 15
    """ScaledObject pollingInterval. Default 15."""
    keda_cooldown_seconds: int = 300
    """ScaledObject cooldownPeriod (idle time before scaling to zero). Default 300."""
    pull_bandwidth_mbps: int = 50
    """Effective image pull rate (MB/s) for the cold-start budget. Default 50."""
    node_provision_seconds: int = 0
    """New GPU node time for the cold-start budget; 0 = the per-family table. Default 0."""

    def __post_init__(self) -> None:
        c = _Checker("elastic", self)
        c.choice("node_provisioner", NODE_PROVISIONERS)
        keda_ok = c.choice("autoscaler", AUTOSCALERS)
        if not isinstance(self.keda_http, bool):
            c.bad("keda_http", "must be true or false")
        if c.integer("min_replicas", 0) and keda_ok:
            if self.min_replicas == 0 and self.autoscaler != "keda":
                c.bad("min_replicas", "0 (scale to zero) needs @{elastic.autoscaler} keda; an HPA never goes below 1")
            elif self.min_replicas == 0 and not self.keda_http:
                c.bad("min_replicas", "0 (scale to zero) needs @{elastic.keda_http} true: without the HTTP add-on's "
                                      "interceptor holding requests, a request to an idle model is dropped")
            elif self.autoscaler == "hpa" and self.min_replicas != 1:
                c.bad("min_replicas", "applies to @{elastic.autoscaler} keda; with hpa the minimum is "
                                      "@{autoscaling.replicas} (leave this at 1)")
        if self.keda_http is True and keda_ok and self.autoscaler != "keda":
            c.bad("keda_http", "the HTTP add-on scales through KEDA: needs @{elastic.autoscaler} keda")
        caps = tuple(self.capacity_types or ())
        if not caps or any(x not in CAPACITY_TYPES for x in caps) or len(set(caps)) != len(caps):
            c.bad("capacity_types", f"one or both of {', '.join(CAPACITY_TYPES)}", value=list(caps))
        c.integer("gpu_limit", 0)
        c.choice("consolidation_policy", CONSOLIDATION_POLICIES)
        if not isinstance(self.consolidate_after, str) or not _KARPENTER_DURATION.match(self.consolidate_after):
            c.bad("consolidate_after", "a Karpenter duration such as 30s, 5m, 1h30m or Never")
        if not isinstance(self.disruption_budget_nodes, str) or not _BUDGET_NODES.match(self.disruption_budget_nodes):
            c.bad("disruption_budget_nodes", "a node count (1) or a percentage (10%)")
        if not isinstance(self.karpenter_ami_alias, str) or not _AMI_ALIAS.match(self.karpenter_ami_alias):
            c.bad("karpenter_ami_alias", "bottlerocket@latest or a pinned bottlerocket@vX.Y.Z "
                                         "(Karpenter picks the NVIDIA variant for GPU instances)")
        for name, kind in (("karpenter_subnet_ids", "subnet"), ("karpenter_security_group_ids", "sg")):
            wrong = [i for i in getattr(self, name) or () if not _AWS_ID[kind].match(str(i))]
            if wrong:
                c.bad(name, f"ids such as {kind}-0123abcd; empty = the subnets/groups tagged "
                            f"karpenter.sh/discovery=<cluster name>", value=wrong)
        if not is_dns_label(self.keda_namespace):
            c.bad("keda_namespace", "the namespace KEDA and the HTTP add-on run in (a DNS label)")
        if not isinstance(self.prometheus_url, str) or not self.prometheus_url.startswith(("http://", "https://")):
            c.bad("prometheus_url", "the http(s):// URL of the Prometheus that scrapes the model's pods")
        c.integer("keda_polling_seconds", 1)
        c.integer("keda_cooldown_seconds", 0)
        c.integer("pull_bandwidth_mbps", 1)
        c.integer("node_provision_seconds", 0)
        c.raise_if_any("ElasticArgs")

    @property
    def karpenter(self) -> bool:
        return self.node_provisioner == "karpenter"

    @property
    def keda(self) -> bool:
        return self.autoscaler == "keda"

    def node_role(self, cluster_name: str) -> str:
        """The configured role, or the name Karpenter's installation guide gives it."""
        return self.karpenter_node_role or f"KarpenterNodeRole-{cluster_name}"


def gpu_limit_needed(gpu: int, max_replicas: int) -> int:
    """GPUs a Karpenter pool must be allowed to hold: every replica at the maximum plus the surge."""
    return gpu * (max_replicas + ROLLOUT_SURGE)


def instance_families(instance_types: Sequence[str]) -> tuple[str, ...]:
    """`("g5.xlarge", "g5.2xlarge", "g6.xlarge")` -> `("g5", "g6")`."""
    return tuple(sorted({instance_family(t) for t in instance_types}))


def elastic_problems(target: Any, resources: Optional[ResourcesArgs], autoscaling: Optional[AutoscalingArgs],
                     network: Optional[NetworkArgs], node_pool: Optional[NodePoolArgs],
                     elastic: Optional[ElasticArgs]) -> list[Problem]:
    """The elastic rules that span groups (ElasticArgs checked itself already)."""
    if elastic is None:
        return []
    out: list[Problem] = []
    kubernetes, gpu = target == "kubernetes", resources.gpu if resources is not None else 0
    if elastic.karpenter and not (kubernetes and gpu > 0):
        out.append(Problem("elastic.node_provisioner", elastic.node_provisioner,
                           "karpenter provisions GPU nodes: it needs @{target} kubernetes and @{resources.gpu} > 0"))
    if elastic.keda:
        if not kubernetes:
            out.append(Problem("elastic.autoscaler", elastic.autoscaler, "keda needs @{target} kubernetes"))
        if autoscaling is not None and autoscaling.metric not in KEDA_METRICS:
            out.append(Problem("autoscaling.metric", autoscaling.metric,
                               f"with @{{elastic.autoscaler}} keda: one of {', '.join(KEDA_METRICS)} "
                               "(KEDA reads the server's own metrics from Prometheus)"))
        if autoscaling is not None and elastic.min_replicas > autoscaling.max_replicas:
            out.append(Problem("elastic.min_replicas", elastic.min_replicas,
                               f"must not exceed @{{autoscaling.max_replicas}} ({autoscaling.max_replicas})"))
    if elastic.keda_http and network is not None and network.service_type == "LoadBalancer":
        out.append(Problem("elastic.keda_http", elastic.keda_http,
                           "a LoadBalancer Service sends traffic past the interceptor: use @{network.service_type} "
                           "ClusterIP and route your ingress to the interceptor (docs/deploy.md)"))
    if elastic.karpenter and kubernetes and gpu > 0 and node_pool is not None:
        unsupported = [f for f in instance_families(node_pool.instance_types) if f not in IMAGE_GPU_FAMILIES]
        if unsupported:
            out.append(Problem("node_pool.instance_types", list(node_pool.instance_types),
                               f"families {unsupported} cannot run the serving image; with karpenter the pool admits "
                               f"the families of these types; accepted: {', '.join(IMAGE_GPU_FAMILIES)}"))
        if autoscaling is not None and elastic.gpu_limit:
            need = gpu_limit_needed(gpu, autoscaling.max_replicas)
            if elastic.gpu_limit < need:
                out.append(Problem("elastic.gpu_limit", elastic.gpu_limit,
                                   f"below the replicas' needs: (@{{autoscaling.max_replicas}} ({autoscaling.max_replicas}) "
                                   f"+ {ROLLOUT_SURGE} rollout surge) x @{{resources.gpu}} ({gpu}) = {need} GPUs; "
                                   f"raise it to at least {need} or use 0"))
    return out
