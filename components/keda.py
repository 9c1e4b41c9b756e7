"""KEDA pod autoscaling: a ScaledObject (keda.sh/v1alpha1) on the server's own Prometheus
metrics, and for scale to zero the HTTP add-on's HTTPScaledObject (http.keda.sh/v1alpha1),
whose interceptor holds a request while the first pod starts. Pure spec builders over typed,
self-validating args.

Versions: KEDA 2.20 (chart `keda` 2.20.2) and the HTTP add-on 0.15 (chart `keda-add-ons-http`
0.15.0), docs/deploy.md; the tests validate every object strictly against those releases' CRDs.

With scale to zero, one ScaledObject owns the Deployment and has two triggers: the HTTP
add-on's external scaler (`external-push`, which wakes the Deployment from zero the moment the
interceptor holds a request) and the Prometheus query (which sizes it under load). The
HTTPScaledObject is annotated so the add-on does not create a second ScaledObject of its own
(two would fight over one HPA): it only routes and holds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi

from . import specs
from .inputs import check_input, known

API_SCALEDOBJECT = "keda.sh/v1alpha1"
API_HTTPSCALEDOBJECT = "http.keda.sh/v1alpha1"
# The HTTP add-on's operator skips creating its own ScaledObject for an HTTPScaledObject
# carrying this annotation (http-add-on operator/controllers/http/app.go, v0.15.0).
SKIP_SCALEDOBJECT_ANNOTATION = "httpscaledobject.keda.sh/skip-scaledobject-creation"
# Service names the keda-add-ons-http chart gives its external scaler and interceptor proxy.
EXTERNAL_SCALER_SERVICE = "keda-add-ons-http-external-scaler"
EXTERNAL_SCALER_PORT = 9090
INTERCEPTOR_SERVICE = "keda-add-ons-http-interceptor-proxy"
INTERCEPTOR_PORT = 8080
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The server's own metrics KEDA can scale on (read from Prometheus; no prometheus-adapter). The
# stack's autoscaling metric must be one of them with autoscaler keda (components/args/rules.py).
METRICS = ("inflight", "queue")
# The window of the queue-time rate: long enough to hold several scrapes.
QUEUE_WINDOW = "1m"


@dataclass(frozen=True)
class KedaArgs:
    """KEDA autoscaling of one model's Deployment. Validates itself (ValueError listing every problem)."""

    namespace: pulumi.Input[str]
    """The model's namespace (the Prometheus query selects its pods there; another resource's
    output too). Required."""
    prometheus_url: str
    """Prometheus the KEDA operator queries (http://...:9090). Required."""
    min_replicas: int
    """0 = scale to zero (needs `http`). Required."""
    max_replicas: int
    """Most replicas. Required."""
    metric: str = "inflight"
    """inflight (servedmodel_inflight_requests per pod) or queue (mean queue time). Default "inflight"."""
    target_inflight: int = 4
    """Per-pod in-flight requests target. Default 4."""
    target_queue_ms: int = 50
    """Mean queue time target (ms). Default 50."""
    polling_seconds: int = 15
    """How often KEDA evaluates the triggers. Default 15."""
    cooldown_seconds: int = 300
    """Idle time before the last replica goes (scale to zero only). Default 300."""
    http: bool = False
    """Put the HTTP add-on's interceptor in front (holds requests while a pod starts). Default False."""
    keda_namespace: str = "keda"
    """Where KEDA and the HTTP add-on run (their Services are addressed there). Default "keda"."""
    wait_seconds: int = 0
    """Interceptor's conditionWait: how long a request is held for the first ready pod; derived
    from the cold-start budget. Required (> 0) with `http`. Default 0."""
    hostname: pulumi.Input[str] = ""
    """The endpoint's public name (NetworkArgs.hostname, which checks it): with `http` the
    interceptor routes it too (it answers 404 to a Host it has no route for). "": in-cluster
    names only. Default ""."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r}: one of {', '.join(METRICS)} "
                            "(KEDA reads the server's own metrics)")
        if self.min_replicas < 0:
            problems.append(f"min_replicas {self.min_replicas}: 0 or more")
        if self.max_replicas < max(1, self.min_replicas):
            problems.append(f"max_replicas {self.max_replicas}: at least 1 and at least min_replicas "
                            f"({self.min_replicas})")
        if self.min_replicas == 0 and not self.http:
            problems.append("min_replicas 0 needs http (the interceptor that holds requests while a pod starts); "
                            "without it a request to an idle model is dropped")
        if self.http and self.wait_seconds < 1:
            problems.append(f"wait_seconds {self.wait_seconds}: the interceptor's wait must be 1 s or more with http")
        for name in ("target_inflight", "target_queue_ms", "polling_seconds"):
            if getattr(self, name) < 1:
                problems.append(f"{name} {getattr(self, name)}: 1 or more")
        if self.cooldown_seconds < 0:
            problems.append(f"cooldown_seconds {self.cooldown_seconds}: 0 or more")
        if not self.prometheus_url.startswith(("http://", "https://")):
            problems.append(f"prometheus_url {self.prometheus_url!r}: an http(s):// URL")
        for name in ("namespace", "keda_namespace"):
            kept, problem = check_input(
                getattr(self, name),
                lambda v, name=name: (None if isinstance(v, str) and _DNS_LABEL.match(v)
                                      else f"{name} {v!r}: a namespace name"),
                lambda _, text: pulumi.RunError(_problems_text([text])))
            object.__setattr__(self, name, kept)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError(_problems_text(problems))


def _problems_text(problems: list[str]) -> str:
    return f"invalid KEDA autoscaling ({len(problems)} problem(s)): " + "; ".join(problems)


def pods_selector(namespace: str, deployment_name: str) -> str:
    """PromQL label matchers for one Deployment's pods (prometheus-operator's PodMonitor and the
    usual pod scrape configs attach `namespace` and `pod`)."""
    return f'namespace="{namespace}",pod=~"{deployment_name}-[a-z0-9]+-[a-z0-9]+"'


def prometheus_trigger(args: KedaArgs, deployment_name: str) -> dict[str, Any]:
    """The Prometheus trigger on the server's own metrics (docs/protocol.md names them)."""
    sel = pods_selector(known(args.namespace), deployment_name)  # resolved first (elastic.py)
    if args.metric == "inflight":
        # Total in flight over the Deployment; AverageValue divides it by the replicas.
        query = f"sum({specs.INFLIGHT_METRIC}{{{sel}}})"
        threshold, metric_type = str(args.target_inflight), "AverageValue"
    else:
        # Mean queue time over the Deployment (seconds): already an average, compared as a Value.
        base = "servedmodel_queue_duration_seconds"
        query = (f"sum(rate({base}_sum{{{sel}}}[{QUEUE_WINDOW}])) / "
                 f"clamp_min(sum(rate({base}_count{{{sel}}}[{QUEUE_WINDOW}])), 1e-9)")
        threshold, metric_type = f"{args.target_queue_ms / 1000:g}", "Value"
    return {"type": "prometheus", "name": f"servedmodel-{args.metric}", "metricType": metric_type,
            "metadata": {"serverAddress": args.prometheus_url, "query": query, "threshold": threshold,
                         # Activation (0 -> 1) is the interceptor's job; the query only sizes.
                         "activationThreshold": "0", "ignoreNullValues": ignore_null_values(args)}}


def ignore_null_values(args: KedaArgs) -> str:
    """KEDA reads an empty result (or NaN) as 0 when true, as an error when false (kedacore/keda
    v2.20.2 pkg/scalers/prometheus_scaler.go; default true). While a replica always runs, an
    empty result means the scrape is lost (a renamed label, no PodMonitor): false makes that an
    error on the ScaledObject (KEDA keeps the replica count) instead of a silent "no load".
    At zero replicas there is no series at all, which must read as idle: true there (the
    settings refuse keda without a declared scrape, components/args/rules.py)."""
    return "true" if args.min_replicas == 0 else "false"


def external_push_trigger(args: KedaArgs, http_scaled_object_name: str) -> dict[str, Any]:
    """The HTTP add-on's scaler: pending requests at the interceptor wake the Deployment."""
    return {"type": "external-push", "name": "servedmodel-http",
            "metadata": {"scalerAddress": f"{EXTERNAL_SCALER_SERVICE}.{args.keda_namespace}:{EXTERNAL_SCALER_PORT}",
                         "httpScaledObject": http_scaled_object_name}}


def scaled_object_spec(args: KedaArgs, deployment_name: Any, http_scaled_object_name: Any = None) -> dict[str, Any]:
    """ScaledObject spec. `deployment_name` may be a resolved name or a Pulumi Output."""
    triggers = [prometheus_trigger(args, deployment_name)]
    if args.http:
        triggers.insert(0, external_push_trigger(args, http_scaled_object_name))
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
        "minReplicaCount": args.min_replicas,
        "maxReplicaCount": args.max_replicas,
        "pollingInterval": args.polling_seconds,
        "cooldownPeriod": args.cooldown_seconds,
        # The same scale-up-fast, scale-down-slowly behaviour as the plain HPA path.
        "advanced": {
            # The same scale-up-fast, scale-down-slowly behaviour as the plain HPA path.
            "horizontalPodAutoscalerConfig": {"behavior": specs.hpa_behavior()},
            # On the ScaledObject's delete KEDA's finalizer scales the workload back to the count
            # it had when KEDA took it over (status.originalReplicaCount), only with this set
            # (kedacore/keda v2.20.2 controllers/keda/scaledobject_finalizer.go). Without it a
            # switch `autoscaler: keda -> hpa` of a model scaled to zero leaves it at 0, where an
            # HPA never acts ("ScalingDisabled": kubernetes/kubernetes
            # pkg/controller/podautoscaler/horizontal.go).
            "restoreToOriginalReplicaCount": True,
        },
        "triggers": triggers,
    }
    return spec


def http_scaled_object_spec(args: KedaArgs, deployment_name: Any, service_name: Any,
                            hosts: list[Any]) -> dict[str, Any]:
    """HTTPScaledObject spec: the interceptor routes `hosts` to the model's Service and holds each
    request up to `wait_seconds` (conditionWait) while the Deployment scales from zero."""
    return {
        "hosts": hosts,
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name,
                           "service": service_name, "port": specs.SERVICE_PORT},
        "replicas": {"min": args.min_replicas, "max": args.max_replicas},
        "scalingMetric": {"concurrency": {"targetValue": args.target_inflight}},
        "scaledownPeriod": args.cooldown_seconds,
        "timeouts": {"conditionWait": f"{args.wait_seconds}s"},
    }


def interceptor_external_name(keda_namespace: str) -> str:
    """The interceptor proxy's in-cluster DNS name (an ExternalName Service points here)."""
    return f"{INTERCEPTOR_SERVICE}.{keda_namespace}.svc.cluster.local"
