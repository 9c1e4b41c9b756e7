"""ModelMonitoring: the monitoring objects of one served model (docs/operations.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pulumi
import pulumi_kubernetes as k8s

from . import monitoring, specs
from .args import MonitoringArgs
from .inputs import is_plain, lift
from .monitoring import Scope

MONITORING_API_VERSION = "monitoring.coreos.com/v1"


@dataclass(frozen=True)
class ModelMonitoringArgs:
    monitoring: MonitoringArgs
    """What to declare (mode, thresholds, labels). Required."""
    scope: Scope
    """Whose series: the served name, namespace, GPU or not. Required."""
    workload_name: pulumi.Input[str]
    """Name of the Deployment or Rollout (its pods' name prefix, for the Pod alerts). Required."""


class ModelMonitoring(pulumi.ComponentResource):
    """prometheus-operator: PodMonitor + PrometheusRule + dashboard ConfigMap; annotations: rule
    file ConfigMap + dashboard ConfigMap; none: nothing. Every object is auto-named and takes
    its provider from the consumer (opts.providers).

    Outputs: `rules` (the rule groups, as declared).
    """

    rules: pulumi.Output[list]

    def __init__(self, name: str, args: ModelMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelMonitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        m, scope = args.monitoring, args.scope
        labels = specs.labels(scope.served_name) | m.label_map

        def meta(extra_labels: Optional[dict[str, str]] = None) -> specs.Json:
            return {"namespace": scope.namespace, "labels": labels | (extra_labels or {})}

        def known(namespace: str) -> Scope:
            """The scope with its namespace known (the builders write it into queries)."""
            return scope if is_plain(scope.namespace) else dataclasses.replace(scope, namespace=namespace)

        def scoped(build: Callable[[Scope], Any]) -> Any:
            return lift(lambda ns: build(known(ns)), scope.namespace)

        groups = pulumi.Output.all(args.workload_name, scope.namespace).apply(
            lambda v: monitoring.rule_groups(m, known(v[1]), v[0]))
        if m.mode == "prometheus-operator":
            k8s.apiextensions.CustomResource(
                f"{name}-podmonitor", api_version=MONITORING_API_VERSION, kind="PodMonitor", metadata=meta(),
                spec=scoped(lambda s: monitoring.pod_monitor_spec(m, s, specs.selector_labels(s.served_name))),
                opts=child)
            k8s.apiextensions.CustomResource(
                f"{name}-rules", api_version=MONITORING_API_VERSION, kind="PrometheusRule", metadata=meta(),
                spec={"groups": groups}, opts=child)
        elif m.mode == "annotations":
            k8s.core.v1.ConfigMap(
                f"{name}-rules", metadata=meta(),
                data=pulumi.Output.all(args.workload_name, scope.namespace).apply(
                    lambda v: {f"servedmodel-{scope.served_name}.rules.yml":
                               monitoring.rule_file(m, known(v[1]), v[0])}),
                opts=child)
        if m.mode != "none":
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard", metadata=meta(monitoring.dashboard_labels()),
                data=scoped(monitoring.dashboard_configmap_data), opts=child)
        self.rules = groups if m.mode != "none" else pulumi.Output.from_input([])
        self.register_outputs({"rules": self.rules})
