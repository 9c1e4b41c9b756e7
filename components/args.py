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

from components.specs import ROLLOUT_SURGE
from components.gpus import GPUS_PER_INSTANCE, unsupported_reason
from models.contract import DRAIN_SECONDS, PORT as SERVER_PORT
from models.loader import is_model_ref
from models.spec import COMPRESSIONS
from models.zoo import ZOO as _MODEL_ZOO  # name -> factory; importing it loads no torch

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

    def __post_init__(self) -> None:
        c = _Checker("model", self)
        if not is_dns_label(self.served_name, MAX_NAME):
            c.bad("served_name", f"must be a DNS label (lowercase letters, digits, '-') of at most {MAX_NAME} characters")
        if not is_model_ref(self.model):
            c.bad("model", f"unknown model; accepted: one of {', '.join(ZOO)} or 'path/to/file.py:factory'")
        c.choice("compression", COMPRESSIONS)
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
DEFAULT_STEPS = ("setWeight:20", "pause:2m", "setWeight:50", "pause:2m")
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
    """Canary steps: setWeight:N, pause:D, pause (indefinite). Default 20% 2m, 50% 2m."""
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
        c.raise_if_any("RolloutArgs")

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
    protect: bool = False
    """Protect the registry and the node pool from deletion (prod). Default False."""
    cache_dir: Optional[Path] = None
    """models.build cache; None uses $SERVEDMODEL_CACHE or ~/.cache/servedmodel. Default None."""

    def __post_init__(self) -> None:
        for f in fields(self):
            expected = {"model": ModelArgs, "resources": ResourcesArgs, "autoscaling": AutoscalingArgs,
                        "network": NetworkArgs, "server": ServerArgs, "registry": RegistryArgs,
                        "rollout": RolloutArgs, "monitoring": MonitoringArgs}.get(f.name)
            if expected is not None and not isinstance(getattr(self, f.name), expected):
                raise TypeError(f"ServedModelArgs.{f.name} must be a {expected.__name__}")
        problems = cross_group_problems(self.target, self.resources, self.autoscaling, self.node_pool)
        problems += delivery_problems(self.target, self.rollout, self.monitoring)
        if problems:
            raise ArgsError("ServedModelArgs", problems)

    @property
    def kubernetes(self) -> bool:
        return self.target == "kubernetes"


def cross_group_problems(target: Any, resources: Optional[ResourcesArgs], autoscaling: Optional[AutoscalingArgs],
                         node_pool: Optional[NodePoolArgs]) -> list[Problem]:
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
    if target == "kubernetes" and gpu and node_pool is not None and autoscaling is not None:
        out += capacity_problems(gpu, autoscaling.max_replicas, node_pool)
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
