"""Pure builders of the model's monitoring as code: scrape config, rules and alerts, dashboard.

`servedmodel:monitoring`:
- `prometheus-operator`: a `PodMonitor` for the server's /metrics and a `PrometheusRule` with
  recording rules and alerts (monitoring.coreos.com/v1), plus the Grafana dashboard ConfigMap;
- `annotations`: the `prometheus.io/*` pod annotations (for annotation-driven scrape configs),
  the same rules as a rule file in a ConfigMap (for Prometheus setups that mount rule files),
  and the dashboard ConfigMap;
- `none`: nothing besides the pod annotations the server has always carried.

The server's metric names and failure reasons (docs/protocol.md, "Metrics") are named here
once; the canary analysis (components/canary.py) imports them. Every alert links to its
runbook section in docs/operations.md. Plain functions over frozen, self-validating args;
`promtool check rules` / `promtool test rules` and a real Prometheus check what they return
(tests/monitoring/).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import yaml

from .args.monitoring import MonitoringArgs
from .inputs import known
from .specs import INFLIGHT_METRIC

# The server's metrics (docs/protocol.md); every series has the label `model`.
REQUESTS = "servedmodel_requests_total"
FAILURES = "servedmodel_request_failures_total"
REQUEST_DURATION = "servedmodel_request_duration_seconds"
QUEUE_DURATION = "servedmodel_queue_duration_seconds"
COMPUTE_DURATION = "servedmodel_compute_duration_seconds"
BATCH_SIZE = "servedmodel_batch_size"
INFLIGHT = INFLIGHT_METRIC
QUEUE_DEPTH = "servedmodel_queue_depth"
MODEL_READY = "servedmodel_model_ready"
MODEL_INFO = "servedmodel_model_info"  # {model, version} = 1, joins a version onto every series
# `reason` values of FAILURES that are the version's fault (a 500: the model failed, or a bug),
# and those that mean the server shed load (503: queue full, or queued past the time budget).
# Caller mistakes (4xx) and draining/not-ready (rollout mechanics) judge nothing.
SERVER_FAILURE_REASONS = ("model_error", "internal")
SHED_REASONS = ("queue_full", "queue_timeout")

# Argo Rollouts labels each pod with `rollouts-pod-template-hash`; as a Prometheus target label
# (PodMonitor podTargetLabels, or the usual labelmap of annotation scrape configs) it reads:
HASH_LABEL = "rollouts_pod_template_hash"
HASH_POD_LABEL = "rollouts-pod-template-hash"
VERSION_POD_LABEL = "app.kubernetes.io/version"
# The Grafana sidecar (grafana helm chart, kube-prometheus-stack) loads ConfigMaps with this label.
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"

# Recording rules: per (namespace, model), over 5 minutes.
REC_REQUESTS = "servedmodel:requests:rate5m"
REC_FAILURE_RATIO = "servedmodel:request_failures:ratio_rate5m"
REC_SHED_RATIO = "servedmodel:request_shed:ratio_rate5m"
REC_LATENCY_P99 = "servedmodel:request_duration_seconds:p99_5m"
REC_QUEUE_P99 = "servedmodel:queue_duration_seconds:p99_5m"

# Alert name -> the docs/operations.md section (anchor) that is its runbook.
ALERTS = {
    "ServedModelHighFailureRatio": "servedmodelhighfailureratio",
    "ServedModelLatencyP99OverSLO": "servedmodellatencyp99overslo",
    "ServedModelShedding": "servedmodelshedding",
    "ServedModelQueueSaturated": "servedmodelqueuesaturated",
    "ServedModelPodsNotReady": "servedmodelpodsnotready",
    "ServedModelPodRestarting": "servedmodelpodrestarting",
    "ServedModelGpuXidErrors": "servedmodelgpuxiderrors",
}



def promql_selector(base: str, *more: str) -> str:
    """`{base,more...}`: label matchers joined into one PromQL selector."""
    return "{" + ",".join(m for m in (base, *more) if m) + "}"


@dataclass(frozen=True)
class Scope:
    """Whose series: one served model in one namespace (from the model and network args)."""

    served_name: str
    """The served name: the `model` label of every series (SERVEDMODEL_MODEL_NAME)."""
    namespace: pulumi.Input[str]
    """The model's namespace (the `namespace` target label). The builders here need it known:
    ModelMonitoring resolves one given as an Output before calling them."""
    gpu: bool = False
    """The pods use NVIDIA GPUs: the DCGM exporter's XID alert applies."""

    @property
    def selector(self) -> str:
        """The matchers of this model's series."""
        return f'namespace="{self.namespace}",model="{self.served_name}"'


def pod_monitor_spec(args: MonitoringArgs, scope: Scope, pod_selector: dict[str, str]) -> dict[str, Any]:
    """PodMonitor: scrape the server's named port `http` on /metrics; keep the canary hash and
    the version as target labels (the analysis selects on the hash)."""
    return {
        "selector": {"matchLabels": dict(pod_selector)},
        "namespaceSelector": {"matchNames": [scope.namespace]},
        "podTargetLabels": [HASH_POD_LABEL, VERSION_POD_LABEL],
        "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": args.scrape_interval,
                                 "scheme": "http"}],
    }


def _by(expr: str) -> str:
    return f"sum by (namespace, model) ({expr})"


def _ratio(reasons: tuple[str, ...], sel: str) -> str:
    """Share of requests failing for `reasons` over 5m, 0 (not absent) while there are requests
    and none of these failures (a reason never seen has no series)."""
    reason_re = "|".join(reasons)
    matchers = promql_selector(sel, f'reason=~"{reason_re}"')
    failures = _by(f"rate({FAILURES}{matchers}[5m])")
    return f"({failures} or 0 * {REC_REQUESTS}{{{sel}}}) / {REC_REQUESTS}{{{sel}}}"


def recording_rules(scope: Scope) -> list[dict[str, Any]]:
    sel = scope.selector
    quantile = "histogram_quantile(0.99, sum by (namespace, model, le) (rate({}_bucket{{{}}}[5m])))"
    return [
        {"record": REC_REQUESTS, "expr": _by(f"rate({REQUESTS}{{{sel}}}[5m])")},
        {"record": REC_FAILURE_RATIO, "expr": _ratio(SERVER_FAILURE_REASONS, sel)},
        {"record": REC_SHED_RATIO, "expr": _ratio(SHED_REASONS, sel)},
        {"record": REC_LATENCY_P99, "expr": quantile.format(REQUEST_DURATION, sel)},
        {"record": REC_QUEUE_P99, "expr": quantile.format(QUEUE_DURATION, sel)},
    ]


def _alert(args: MonitoringArgs, scope: Scope, name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_,
            "labels": {"severity": severity, "servedmodel": scope.served_name},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": f"{args.runbook_url}#{ALERTS[name]}"}}


def alert_rules(args: MonitoringArgs, scope: Scope, workload_name: str) -> list[dict[str, Any]]:
    """The alerts; `workload_name` is the Deployment's or Rollout's name (its pods' name prefix,
    for the kube-state-metrics alerts)."""
    sel, n = scope.selector, scope.served_name
    pods = f'namespace="{scope.namespace}",pod=~"{workload_name}-.*"'
    slo_s = args.latency_slo_ms / 1000
    queue_s = args.alert_queue_p99_ms / 1000
    rules = [
        _alert(args, scope, "ServedModelHighFailureRatio", f"{REC_FAILURE_RATIO}{{{sel}}} > {args.alert_failure_ratio}",
               "5m", "critical", f"{n}: more than {args.alert_failure_ratio:.1%} of requests fail in the server",
               "Inference requests of {{ $labels.model }} in {{ $labels.namespace }} end in "
               "model_error or internal (HTTP 500); see the failure-ratio recording rule."),
        _alert(args, scope, "ServedModelLatencyP99OverSLO", f"{REC_LATENCY_P99}{{{sel}}} > {slo_s}",
               "10m", "warning", f"{n}: p99 request latency over the {args.latency_slo_ms} ms SLO",
               "p99 request latency of {{ $labels.model }} in {{ $labels.namespace }} is over "
               f"{args.latency_slo_ms} ms."),
        _alert(args, scope, "ServedModelShedding", f"{REC_SHED_RATIO}{{{sel}}} > {args.alert_shed_ratio}",
               "5m", "warning", f"{n}: the server sheds more than {args.alert_shed_ratio:.0%} of requests",
               "Requests of {{ $labels.model }} in {{ $labels.namespace }} get 503 "
               "(queue full or queue time over budget)."),
        _alert(args, scope, "ServedModelQueueSaturated", f"{REC_QUEUE_P99}{{{sel}}} > {queue_s}",
               "10m", "warning", f"{n}: requests wait more than {args.alert_queue_p99_ms} ms in the queue (p99)",
               "Requests of {{ $labels.model }} in {{ $labels.namespace }} wait in the batching "
               "queue: the replicas are saturated; shedding follows."),
        _alert(args, scope, "ServedModelPodsNotReady",
               f'sum by (namespace) (kube_pod_status_ready{{{pods},condition="false"}}) > 0',
               "10m", "warning", f"{n}: pods not ready for 10 minutes",
               "Pods of " + n + " in {{ $labels.namespace }} have not been ready for 10 minutes."),
        _alert(args, scope, "ServedModelPodRestarting",
               f'sum by (namespace, pod) (increase(kube_pod_container_status_restarts_total'
               f'{{{pods},container="server"}}[15m])) > 2',
               "0m", "warning", f"{n}: a pod restarted more than twice in 15 minutes",
               "{{ $labels.pod }} in {{ $labels.namespace }} restarted more than twice in 15 minutes."),
    ]
    if scope.gpu:
        rules.append(_alert(
            args, scope, "ServedModelGpuXidErrors", xid_expr(known(scope.namespace), workload_name),
            "0m", "critical", f"{n}: the GPU of a pod reports an XID error",
            "The GPU of {{ $labels.pod }} in {{ $labels.namespace }} reported an XID error "
            "(NVIDIA DCGM exporter; DCGM_FI_DEV_XID_ERRORS holds the last XID code, not a count)."))
    return rules


# The DCGM exporter's XID gauge: "Value of the last XID error encountered" (NVIDIA/dcgm-exporter
# etc/default-counters.csv): the last XID *code* of the GPU, not a count, so `> 0` holds from
# the first XID until the series goes (the pod leaves the GPU).
XID_METRIC = "DCGM_FI_DEV_XID_ERRORS"


def xid_expr(namespace: str, workload_name: str) -> str:
    """The XID alert's expression, for both label shapes the exporter's series arrive in.

    dcgm-exporter (Kubernetes mode) labels each GPU series with the workload's `namespace` and
    `pod` (NVIDIA/dcgm-exporter internal/pkg/transformation/kubernetes.go). Its chart's
    ServiceMonitor scrapes with `honorLabels: false` by default (deployment/values.yaml), so
    Prometheus keeps the *target's* namespace/pod (the exporter's own) and renames the series'
    to `exported_namespace`/`exported_pod` (prometheus/prometheus scrape/scrape.go,
    resolveConflictingExposedLabels; prometheus-operator v0.93.0 promcfg.go writes honorLabels as
    honor_labels). With `honorLabels: true` they arrive as namespace/pod. The first shape is
    relabelled back (label_replace) so `by (namespace, pod)` and the annotation name the model's
    pod either way."""
    pods = f'=~"{workload_name}-.*"'
    exported = f'{XID_METRIC}{{exported_namespace="{namespace}",exported_pod{pods}}}'
    relabelled = (f'label_replace(label_replace({exported}, "namespace", "$1", "exported_namespace", "(.+)"), '
                  f'"pod", "$1", "exported_pod", "(.+)")')
    honoured = f'{XID_METRIC}{{namespace="{namespace}",pod{pods}}}'
    return f"max by (namespace, pod) ({relabelled} or {honoured}) > 0"


def rule_groups(args: MonitoringArgs, scope: Scope, workload_name: str) -> list[dict[str, Any]]:
    """The PrometheusRule's groups (also a valid Prometheus rule file's `groups`)."""
    return [
        {"name": f"servedmodel-{scope.served_name}.rules", "rules": recording_rules(scope)},
        {"name": f"servedmodel-{scope.served_name}.alerts", "rules": alert_rules(args, scope, workload_name)},
    ]


def rule_file(args: MonitoringArgs, scope: Scope, workload_name: str) -> str:
    """The same groups as a Prometheus rule file (annotations mode, promtool)."""
    return yaml.safe_dump({"groups": rule_groups(args, scope, workload_name)}, sort_keys=False)


# --- Grafana dashboard ----------------------------------------------------------------------

def dashboard_queries(scope: Scope) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(legend, PromQL)]: what each panel plots, per version."""
    sel = "{" + scope.selector + "}"
    info = f"{MODEL_INFO}{sel}"

    def rate(metric: str, extra: str = "") -> str:
        return f"rate({metric}{{{scope.selector}{extra}}}[5m])"

    def versioned(metric: str, extra: str = "") -> str:
        return f"{rate(metric, extra)} * on (job, instance) group_left (version) {info}"

    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (version, le) ({versioned(metric + '_bucket')}))"

    return {
        "Throughput (requests/s) by version and outcome": [
            ("{{version}} {{outcome}}", f"sum by (version, outcome) ({versioned(REQUESTS)})")],
        "Request latency quantiles by version": [
            (f"{{{{version}}}} p{int(q * 100)}", quantile(q, REQUEST_DURATION)) for q in (0.5, 0.9, 0.99)],
        "Queue wait vs compute time (p99) by version": [
            ("{{version}} queue", quantile(0.99, QUEUE_DURATION)),
            ("{{version}} compute (per batch)", quantile(0.99, COMPUTE_DURATION))],
        "Batch size (rows per batch) by version": [
            ("{{version}} mean", f"sum by (version) ({versioned(BATCH_SIZE + '_sum')})"
                                 f" / sum by (version) ({versioned(BATCH_SIZE + '_count')})"),
            ("{{version}} p90", quantile(0.9, BATCH_SIZE))],
        "Shed and failed requests/s by version and reason": [
            ("{{version}} {{reason}}", f"sum by (version, reason) ({versioned(FAILURES)})")],
        "In flight and queued by version": [
            ("{{version}} in flight",
             f"sum by (version) ({INFLIGHT}{sel} * on (job, instance) group_left (version) {info})"),
            ("{{version}} queued",
             f"sum by (version) ({QUEUE_DEPTH}{sel} * on (job, instance) group_left (version) {info})")],
        "Ready replicas by version": [
            ("{{version}}", f"sum by (version) ({MODEL_READY}{sel} * on (job, instance) group_left (version) {info})")],
    }


def dashboard(scope: Scope) -> dict[str, Any]:
    """The Grafana dashboard (JSON model, schemaVersion 39): one time-series panel per entry of
    dashboard_queries, two per row, on a Prometheus datasource chosen by a variable."""
    units = {"Throughput": "reqps", "Request latency": "s", "Queue wait": "s", "Batch size": "short",
             "Shed and failed": "reqps", "In flight": "short", "Ready": "short"}
    panels = []
    for i, (title, targets) in enumerate(dashboard_queries(scope).items()):
        unit = next(u for prefix, u in units.items() if title.startswith(prefix))
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (legend, expr) in enumerate(targets)],
        })
    return {
        "uid": f"servedmodel-{scope.namespace}-{scope.served_name}"[:40],
        "title": f"ServedModel {scope.served_name} ({scope.namespace})",
        "tags": ["servedmodel"], "timezone": "browser", "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


def dashboard_configmap_data(scope: Scope) -> dict[str, str]:
    return {f"servedmodel-{scope.served_name}.json": json.dumps(dashboard(scope), indent=1, sort_keys=True)}


def dashboard_labels() -> dict[str, str]:
    return {GRAFANA_DASHBOARD_LABEL: "1"}
