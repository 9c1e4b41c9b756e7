"""ModelMonitoring: the monitoring objects of one served model (docs/operations.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from . import monitoring, specs
from .monitoring import MonitoringArgs, Scope

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

        def meta(extra_labels: Optional[dict[str, str]] = None) -> dict[str, Any]:
            return {"namespace": scope.namespace, "labels": labels | (extra_labels or {})}

        groups = pulumi.Output.from_input(args.workload_name).apply(lambda w: monitoring.rule_groups(m, scope, w))
        if m.mode == "prometheus-operator":
            k8s.apiextensions.CustomResource(
                f"{name}-podmonitor", api_version=MONITORING_API_VERSION, kind="PodMonitor", metadata=meta(),
                spec=monitoring.pod_monitor_spec(m, scope, specs.selector_labels(scope.served_name)), opts=child)
            k8s.apiextensions.CustomResource(
                f"{name}-rules", api_version=MONITORING_API_VERSION, kind="PrometheusRule", metadata=meta(),
                spec={"groups": groups}, opts=child)
        elif m.mode == "annotations":
            k8s.core.v1.ConfigMap(
                f"{name}-rules", metadata=meta(),
                data=pulumi.Output.from_input(args.workload_name).apply(
                    lambda w: {f"servedmodel-{scope.served_name}.rules.yml": monitoring.rule_file(m, scope, w)}),
                opts=child)
        if m.mode != "none":
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard", metadata=meta(monitoring.dashboard_labels()),
                data=monitoring.dashboard_configmap_data(scope), opts=child)
        self.rules = groups if m.mode != "none" else pulumi.Output.from_input([])
        self.register_outputs({"rules": self.rules})
