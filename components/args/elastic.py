"""ElasticArgs: elastic GPU capacity (issue 11): Karpenter nodes, KEDA pods, scale to zero.

Karpenter's grammar and pool defaults come from components/karpenter.py, KEDA's metrics from
components/keda.py: one statement each, shared with the components that build the objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pulumi

from ..inputs import given, lift
from ..karpenter import (
    AMI_ALIAS,
    BUDGET_NODES,
    CAPACITY_TYPES,
    CONSOLIDATION_POLICIES,
    DURATION,
    KARPENTER_DEFAULTS,
    ROLE_NAME,
    wrong_ids,
)
from .checking import ArgsGroup, Checker, dns_label, integer, matching, one_of
from .setting import setting

NODE_PROVISIONERS = ("managed", "karpenter")
AUTOSCALERS = ("hpa", "keda")


def _capacity_types(value: Any) -> Optional[list[tuple[Any, str]]]:
    caps: tuple[Any, ...] = tuple(value or ())
    if not caps or any(x not in CAPACITY_TYPES for x in caps) or len(set(caps)) != len(caps):
        return [(list(caps), f"one or both of {', '.join(CAPACITY_TYPES)}")]
    return None


def _ids(kind: str) -> Any:
    def check(value: Any) -> Optional[list[tuple[Any, str]]]:
        wrong = wrong_ids(kind, value)
        if wrong:
            return [(wrong, f"ids such as {kind}-0123abcd; empty = the subnets/groups tagged "
                            f"karpenter.sh/discovery=<cluster name>")]
        return None
    return check


def _role_name(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and ROLE_NAME.match(value)):
        return "an IAM role name such as KarpenterNodeRole-<cluster> (not an ARN), or empty for that name"
    return None


def _http_url(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return "the http(s):// URL of the Prometheus that scrapes the model's pods"
    return None


@dataclass(frozen=True)
class ElasticArgs(ArgsGroup):
    """Who provides GPU nodes (managed node group or Karpenter), who scales the pods (HPA or KEDA),
    scale to zero behind the KEDA HTTP add-on, and the cold-start budget's inputs.

    `karpenter_node_role` and the Karpenter subnet and security-group ids accept another
    resource's outputs (their checks then run when the values are known)."""

    GROUP = "elastic"
    STACK_GROUP = "elastic"

    node_provisioner: str = setting(
        "managed", "Who provides GPU nodes - \"managed\" (an EKS managed node group, servedmodel:node* keys) or "
                   "\"karpenter\" (a Karpenter NodePool + EC2NodeClass per model, nodes from zero; needs Karpenter "
                   "installed, docs/deploy.md). Pods select the pool by label and tolerate its taint either way.",
        check=one_of(NODE_PROVISIONERS))
    autoscaler: str = setting(
        "hpa", "Who scales the pods - \"hpa\" (autoscaling/v2, @{autoscaling.metric}) or \"keda\" (a KEDA "
               "ScaledObject querying the server's own metrics in Prometheus - inflight or queue - no "
               "prometheus-adapter; needs KEDA installed).", check=one_of(AUTOSCALERS))
    min_replicas: int = setting(
        1, "KEDA's minimum replicas (@{elastic.autoscaler} keda). 0 scales the model to zero and needs "
           "@{elastic.keda_http} true. With hpa the minimum is @{autoscaling.replicas}; leave this at 1.",
        check=integer(0))
    keda_http: bool = setting(
        False, "Put the KEDA HTTP add-on's interceptor in front of the model (an HTTPScaledObject and an ExternalName "
               "Service, the model's url becomes the held route) so a request to an idle model waits for the first "
               "pod instead of failing. Needs @{elastic.autoscaler} keda and a ClusterIP Service; refused with "
               "@{network.grpc_port} (gRPC does not pass the interceptor).")
    capacity_types: tuple[str, ...] = setting(
        KARPENTER_DEFAULTS.capacity_types, "Karpenter capacity types the GPU pool may launch - \"on-demand\" and/or "
                                           "\"spot\".", check=_capacity_types)
    gpu_limit: int = setting(
        0, "Karpenter NodePool limit on nvidia.com/gpu (the most GPUs the pool holds at once). 0 = what the replicas "
           "need, (maxReplicas + 1 rollout surge) x gpu; a lower value is refused.", check=integer(0))
    consolidation_policy: str = setting(
        KARPENTER_DEFAULTS.consolidation_policy,
        "Karpenter consolidation - \"WhenEmpty\" (only nodes without model pods go) or \"WhenEmptyOrUnderutilized\" "
        "(also repacks pods to fewer nodes, restarting them).", check=one_of(CONSOLIDATION_POLICIES))
    consolidate_after: str = setting(
        KARPENTER_DEFAULTS.consolidate_after, "How long a GPU node stays empty (or underused) before Karpenter "
                                              "removes it (30s, 5m, 1h30m or Never).",
        check=matching(DURATION, "a Karpenter duration such as 30s, 5m, 1h30m or Never"))
    disruption_budget_nodes: str = setting(
        KARPENTER_DEFAULTS.disruption_budget_nodes, "Karpenter disruption budget - at most this many nodes (or a "
                                                    "percentage such as 10%) of the pool disrupted at once.",
        check=matching(BUDGET_NODES, "a node count (1) or a percentage (10%)"))
    karpenter_node_role: pulumi.Input[str] = setting(
        "", "IAM role name of the nodes Karpenter launches; empty = KarpenterNodeRole-<clusterName>, the name "
            "Karpenter's installation guide creates.", check=_role_name)
    karpenter_ami_alias: str = setting(
        KARPENTER_DEFAULTS.ami_alias, "EC2NodeClass AMI alias - Bottlerocket, whose NVIDIA variant Karpenter picks "
                                      "for GPU instances (driver and device plugin included). Pin bottlerocket@vX.Y.Z "
                                      "for repeatable nodes.",
        check=matching(AMI_ALIAS, "bottlerocket@latest or a pinned bottlerocket@vX.Y.Z "
                                  "(Karpenter picks the NVIDIA variant for GPU instances)"))
    karpenter_subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]] = setting(
        (), "Subnets of Karpenter's GPU nodes by id; empty = the subnets tagged karpenter.sh/discovery=<clusterName>.",
        check=_ids("subnet"))
    karpenter_security_group_ids: pulumi.Input[Sequence[pulumi.Input[str]]] = setting(
        (), "Security groups of Karpenter's GPU nodes by id; empty = those tagged "
            "karpenter.sh/discovery=<clusterName>.", check=_ids("sg"))
    keda_namespace: str = setting(
        "keda", "Namespace KEDA and its HTTP add-on are installed in (the external scaler and interceptor Services "
                "are addressed there; the model's NetworkPolicy admits it with kedaHttp).",
        check=dns_label("the namespace KEDA and the HTTP add-on run in (a DNS label)"))
    prometheus_url: str = setting(
        "http://prometheus-operated.monitoring.svc:9090",
        "HTTP address of the Prometheus that scrapes the model's pods (with namespace and pod labels) - KEDA "
        "queries it for the server's metrics (autoscaler keda) and the Argo Rollouts controller for the canary "
        "analysis (rollout canary).", check=_http_url)
    keda_polling_seconds: int = setting(15, "How often KEDA evaluates the triggers (ScaledObject pollingInterval).",
                                        check=integer(1))
    keda_cooldown_seconds: int = setting(300, "Seconds without traffic before KEDA removes the last replica (scale "
                                              "to zero; ScaledObject cooldownPeriod).", check=integer(0))
    pull_bandwidth_mbps: int = setting(
        50, "Effective image pull rate of a node in MB/s (download + unpack), for the cold-start budget's "
            "pullSeconds.", key="pullBandwidthMBps", name="pullBandwidthMBps", check=integer(1))
    node_provision_seconds: int = setting(
        0, "Seconds a new GPU node takes to be Ready, for the cold-start budget; 0 = the per-family table in "
           "docs/deploy.md.", check=integer(0))

    def rules(self, c: Checker) -> None:
        if c.ok("min_replicas", "autoscaler"):
            if self.min_replicas == 0 and self.autoscaler != "keda":
                c.bad("min_replicas", "0 (scale to zero) needs @{elastic.autoscaler} keda; an HPA never goes below 1")
            elif self.min_replicas == 0 and not self.keda_http:
                c.bad("min_replicas", "0 (scale to zero) needs @{elastic.keda_http} true: without the HTTP add-on's "
                                      "interceptor holding requests, a request to an idle model is dropped")
            elif self.autoscaler == "hpa" and self.min_replicas != 1:
                c.bad("min_replicas", "applies to @{elastic.autoscaler} keda; with hpa the minimum is "
                                      "@{autoscaling.replicas} (leave this at 1)")
        if self.keda_http is True and c.ok("autoscaler") and self.autoscaler != "keda":
            c.bad("keda_http", "the HTTP add-on scales through KEDA: needs @{elastic.autoscaler} keda")

    @property
    def karpenter(self) -> bool:
        return self.node_provisioner == "karpenter"

    @property
    def keda(self) -> bool:
        return self.autoscaler == "keda"

    def node_role(self, cluster_name: pulumi.Input[str]) -> pulumi.Input[str]:
        """The configured role, or the name Karpenter's installation guide gives it (once the
        cluster's name is known, when it is an Output)."""
        if given(self.karpenter_node_role):
            return self.karpenter_node_role
        return lift(lambda name: f"KarpenterNodeRole-{name}", cluster_name)
