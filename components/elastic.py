"""Elastic GPU capacity: the stack keys of issue 11, validated, and the components that declare
Karpenter's GPU pool and KEDA's scaling as custom resources.

- `parse_elastic` (pure, tested without mocks) reads the elastic keys and checks them against
  the rest of the stack (target, gpu, replicas, service type...): every scale-to-zero
  misconfiguration is a problem naming the keys involved.
- `KarpenterGpuPool` declares an EC2NodeClass + NodePool (components/karpenter.py specs).
- `KedaScaling` declares a ScaledObject and, for scale to zero, an HTTPScaledObject and the
  ExternalName Service through which clients reach the interceptor (components/keda.py specs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s

from components import karpenter, keda

NODE_PROVISIONERS = ("managed", "karpenter")
AUTOSCALERS = ("hpa", "keda")

# key -> (ElasticSettings field, kind), read like the other stack keys (components/settings.py).
ELASTIC_FIELDS: dict[str, tuple[str, str]] = {
    "nodeProvisioner": ("node_provisioner", "str"),
    "autoscaler": ("autoscaler", "str"),
    "minReplicas": ("min_replicas", "int"),
    "kedaHttp": ("keda_http", "bool"),
    "capacityTypes": ("capacity_types", "list"),
    "gpuLimit": ("gpu_limit", "int"),
    "consolidationPolicy": ("consolidation_policy", "str"),
    "consolidateAfter": ("consolidate_after", "str"),
    "disruptionBudgetNodes": ("disruption_budget_nodes", "str"),
    "karpenterNodeRole": ("karpenter_node_role", "str"),
    "karpenterAmiAlias": ("karpenter_ami_alias", "str"),
    "karpenterSubnetIds": ("karpenter_subnet_ids", "list"),
    "karpenterSecurityGroupIds": ("karpenter_security_group_ids", "list"),
    "kedaNamespace": ("keda_namespace", "str"),
    "prometheusUrl": ("prometheus_url", "str"),
    "kedaPollingSeconds": ("keda_polling_seconds", "int"),
    "kedaCooldownSeconds": ("keda_cooldown_seconds", "int"),
    "pullBandwidthMBps": ("pull_bandwidth_mbps", "int"),
    "nodeProvisionSeconds": ("node_provision_seconds", "int"),
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ElasticSettings:
    """The elastic keys, typed. Docs and defaults: Pulumi.yaml / docs/config.md."""

    node_provisioner: str
    autoscaler: str
    min_replicas: int
    keda_http: bool
    capacity_types: tuple[str, ...]
    gpu_limit: int
    consolidation_policy: str
    consolidate_after: str
    disruption_budget_nodes: str
    karpenter_node_role: str
    karpenter_ami_alias: str
    karpenter_subnet_ids: tuple[str, ...]
    karpenter_security_group_ids: tuple[str, ...]
    keda_namespace: str
    prometheus_url: str
    keda_polling_seconds: int
    keda_cooldown_seconds: int
    pull_bandwidth_mbps: int
    node_provision_seconds: int

    @property
    def karpenter(self) -> bool:
        return self.node_provisioner == "karpenter"

    @property
    def keda(self) -> bool:
        return self.autoscaler == "keda"

    def node_role(self, cluster_name: str) -> str:
        """The configured role, or the name Karpenter's getting-started guide gives it."""
        return self.karpenter_node_role or f"KarpenterNodeRole-{cluster_name}"


def gpu_limit_needed(gpu: int, max_replicas: int, surge: int) -> int:
    """GPUs the pool must be allowed to hold: every replica at the maximum plus the rollout surge."""
    return gpu * (max_replicas + surge)


def parse_elastic(raw: Mapping[str, Any], v: Mapping[str, Any], problems: list[str],
                  problem: Callable[[str, Any, str], str], *, supported_families: tuple[str, ...],
                  surge: int) -> Optional[ElasticSettings]:
    """Validate the elastic keys. `raw`: key -> value (typed already, defaults merged); `v`: the
    rest of the stack's checked values by key (target, gpu, replicas, maxReplicas,
    autoscaleMetric, serviceType, nodeInstanceTypes). Problems are appended; None when any."""
    start = len(problems)
    e = {field: raw.get(key) for key, (field, _) in ELASTIC_FIELDS.items()}

    def bad(key: str, accepted: str) -> None:
        problems.append(problem(key, raw.get(key), accepted))

    kubernetes, gpu = v.get("target") == "kubernetes", v.get("gpu") or 0
    if e["node_provisioner"] not in NODE_PROVISIONERS:
        bad("nodeProvisioner", f"accepted: one of {', '.join(NODE_PROVISIONERS)}")
    elif e["node_provisioner"] == "karpenter" and not (kubernetes and gpu > 0):
        bad("nodeProvisioner", "karpenter provisions GPU nodes: it needs servedmodel:target kubernetes and servedmodel:gpu > 0")
    if e["autoscaler"] not in AUTOSCALERS:
        bad("autoscaler", f"accepted: one of {', '.join(AUTOSCALERS)}")
    elif e["autoscaler"] == "keda":
        if not kubernetes:
            bad("autoscaler", "keda needs servedmodel:target kubernetes")
        if v.get("autoscaleMetric") not in keda.METRICS:
            problems.append(problem("autoscaleMetric", v.get("autoscaleMetric"),
                                    f"with servedmodel:autoscaler keda: one of {', '.join(keda.METRICS)} "
                                    "(KEDA reads the server's own metrics from Prometheus)"))

    mn, mx = e["min_replicas"], v.get("maxReplicas")
    if mn is not None:
        if mn < 0:
            bad("minReplicas", "must be 0 or more")
        elif mn == 0 and e["autoscaler"] != "keda":
            bad("minReplicas", "0 (scale to zero) needs servedmodel:autoscaler keda; an HPA never goes below 1")
        elif mn == 0 and not e["keda_http"]:
            bad("minReplicas", "0 (scale to zero) needs servedmodel:kedaHttp true: without the HTTP add-on's "
                               "interceptor holding requests, a request to an idle model is dropped")
        elif e["autoscaler"] == "hpa" and mn != 1:
            bad("minReplicas", "applies to servedmodel:autoscaler keda; with hpa the minimum is servedmodel:replicas "
                               "(leave minReplicas at 1)")
        elif mx is not None and mn > mx:
            bad("minReplicas", f"must not exceed servedmodel:maxReplicas ({mx})")
    if e["keda_http"]:
        if e["autoscaler"] != "keda":
            bad("kedaHttp", "the HTTP add-on scales through KEDA: needs servedmodel:autoscaler keda")
        if v.get("serviceType") == "LoadBalancer":
            bad("kedaHttp", "a LoadBalancer Service would send traffic past the interceptor; use servedmodel:serviceType "
                            "ClusterIP and route your ingress to the interceptor (docs/deploy.md)")

    if e["node_provisioner"] == "karpenter" and kubernetes and gpu > 0:
        types = v.get("nodeInstanceTypes") or ()
        families = tuple(sorted({t.split(".", 1)[0] for t in types}))
        unsupported = [f for f in families if f not in supported_families]
        if unsupported:
            problems.append(problem("nodeInstanceTypes", list(types),
                                    f"families {unsupported} cannot run the serving image; with karpenter the pool "
                                    f"admits the families of these types; accepted: {', '.join(supported_families)}"))
        caps = e["capacity_types"] or ()
        if not caps or any(c not in karpenter.CAPACITY_TYPES for c in caps) or len(set(caps)) != len(caps):
            bad("capacityTypes", f"one or both of {', '.join(karpenter.CAPACITY_TYPES)}")
        limit = e["gpu_limit"]
        if limit is not None and mx:
            need = gpu_limit_needed(gpu, mx, surge)
            if limit < 0:
                bad("gpuLimit", "must be 0 (= what the replicas need) or more")
            elif 0 < limit < need:
                bad("gpuLimit", f"below the replicas' needs: servedmodel:maxReplicas ({mx}) + {surge} rollout surge "
                                f"x servedmodel:gpu ({gpu}) = {need} GPUs; raise it to at least {need} or use 0")
        if e["consolidation_policy"] not in karpenter.CONSOLIDATION_POLICIES:
            bad("consolidationPolicy", f"accepted: one of {', '.join(karpenter.CONSOLIDATION_POLICIES)}")
        if not isinstance(e["consolidate_after"], str) or not karpenter._DURATION.match(e["consolidate_after"]):
            bad("consolidateAfter", "a Karpenter duration such as 30s, 5m, 1h30m or Never")
        if not isinstance(e["disruption_budget_nodes"], str) or not karpenter._BUDGET_NODES.match(e["disruption_budget_nodes"]):
            bad("disruptionBudgetNodes", "a node count (1) or a percentage (10%)")
        if not isinstance(e["karpenter_ami_alias"], str) or not karpenter._ALIAS.match(e["karpenter_ami_alias"]):
            bad("karpenterAmiAlias", "bottlerocket@latest or a pinned bottlerocket@vX.Y.Z (the NVIDIA variant is chosen per instance)")
        for key, kind in (("karpenterSubnetIds", "subnet"), ("karpenterSecurityGroupIds", "sg")):
            wrong = [i for i in raw.get(key) or () if not karpenter._ID[kind].match(i)]
            if wrong:
                problems.append(problem(key, wrong, f"ids such as {kind}-0123abcd; empty = discovery tag "
                                                    f"{karpenter.DISCOVERY_TAG}=<clusterName>"))
    if e["autoscaler"] == "keda":
        if not isinstance(e["keda_namespace"], str) or not _DNS_LABEL.match(e["keda_namespace"]):
            bad("kedaNamespace", "the namespace KEDA and the HTTP add-on run in (a DNS label)")
        if not isinstance(e["prometheus_url"], str) or not e["prometheus_url"].startswith(("http://", "https://")):
            bad("prometheusUrl", "the http(s):// URL of the Prometheus that scrapes the model's pods")
        if e["keda_polling_seconds"] is not None and e["keda_polling_seconds"] < 1:
            bad("kedaPollingSeconds", "must be 1 or more")
        if e["keda_cooldown_seconds"] is not None and e["keda_cooldown_seconds"] < 0:
            bad("kedaCooldownSeconds", "must be 0 or more")
    if e["pull_bandwidth_mbps"] is not None and e["pull_bandwidth_mbps"] < 1:
        bad("pullBandwidthMBps", "must be 1 or more (MB/s a node pulls the image at)")
    if e["node_provision_seconds"] is not None and e["node_provision_seconds"] < 0:
        bad("nodeProvisionSeconds", "must be 0 (use the per-family table) or more")
    if len(problems) > start or any(val is None for val in e.values()):
        return None
    for field in ("capacity_types", "karpenter_subnet_ids", "karpenter_security_group_ids"):
        e[field] = tuple(e[field])
    return ElasticSettings(**e)


class KarpenterGpuPool(pulumi.ComponentResource):
    """EC2NodeClass + NodePool for one model's GPU pool (cluster-scoped custom resources).

    Outputs: `pool_label` (what pods select), `node_pool_name`.
    """

    pool_label: pulumi.Output[str]
    node_pool_name: pulumi.Output[str]

    def __init__(self, name: str, args: karpenter.KarpenterPoolArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:KarpenterGpuPool", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-nodeclass", api_version=karpenter.API_NODECLASS, kind="EC2NodeClass",
            metadata={"labels": {"app.kubernetes.io/managed-by": "pulumi"}},
            spec=karpenter.node_class_spec(args), opts=child)
        pool = k8s.apiextensions.CustomResource(
            f"{name}-nodepool", api_version=karpenter.API_NODEPOOL, kind="NodePool",
            metadata={"labels": {"app.kubernetes.io/managed-by": "pulumi"}},
            spec=karpenter.node_pool_spec(args, node_class.metadata["name"]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[node_class]))
        self.pool_label = pulumi.Output.from_input(args.pool_label)
        self.node_pool_name = pool.metadata["name"]
        self.register_outputs({"pool_label": self.pool_label, "node_pool_name": self.node_pool_name})


class KedaScaling(pulumi.ComponentResource):
    """ScaledObject for one model's Deployment; with `http`, the HTTPScaledObject and the
    ExternalName Service that sends clients to the interceptor (which holds requests while the
    Deployment scales from zero).

    Outputs: `url` (the held route when `http`, else None).
    """

    url: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: keda.KedaArgs, *, deployment_name: pulumi.Input[str],
                 service_name: pulumi.Input[str], labels: dict[str, str],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:KedaScaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta = {"namespace": args.namespace, "labels": labels}
        self.url = None
        http_name: Any = None
        if args.http:
            hold = k8s.core.v1.Service(
                f"{name}-hold", metadata=meta,
                spec={"type": "ExternalName", "externalName": keda.interceptor_external_name(args.keda_namespace),
                      "ports": [{"name": "http", "port": keda.INTERCEPTOR_PORT, "protocol": "TCP"}]},
                opts=child)
            fqdn = pulumi.Output.concat(hold.metadata.name, ".", args.namespace, ".svc.cluster.local")
            hosts = [fqdn, pulumi.Output.concat(hold.metadata.name, ".", args.namespace, ".svc"),
                     pulumi.Output.concat(hold.metadata.name, ".", args.namespace)]
            hso = k8s.apiextensions.CustomResource(
                f"{name}-http", api_version=keda.API_HTTPSCALEDOBJECT, kind="HTTPScaledObject",
                metadata=meta | {"annotations": {keda.SKIP_SCALEDOBJECT_ANNOTATION: "true"}},
                spec=keda.http_scaled_object_spec(args, deployment_name, service_name, hosts), opts=child)
            http_name = hso.metadata["name"]
            self.url = pulumi.Output.concat("http://", fqdn, f":{keda.INTERCEPTOR_PORT}")
        deployment = pulumi.Output.from_input(deployment_name)
        k8s.apiextensions.CustomResource(
            f"{name}-scaler", api_version=keda.API_SCALEDOBJECT, kind="ScaledObject", metadata=meta,
            spec=pulumi.Output.all(deployment, http_name).apply(
                lambda names: keda.scaled_object_spec(args, names[0], names[1])),
            opts=child)
        self.register_outputs({"url": self.url})
