"""The rules that span groups, over fully built groups only.

Each rule names the groups it reads; `cross_group_problems(groups)` runs every rule whose groups
are all present. `ServedModelArgs` passes all of its groups; the stack settings pass the groups
that built (a group that failed reported its own problems, and the rules that need it are
skipped rather than run on raw values). `target` counts as a group (it is built when valid);
`node_pool` is None when no pool is needed.

Adding a rule: write a function of the groups it reads, returning Problems, and register it with
`@rule("group", ...)`; name fields in its text as `@{group.field}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from ..gpus import IMAGE_GPU_FAMILIES, SUPPORTED_GPU_FAMILIES, instance_families, unsupported_reason
from ..inputs import given
from ..karpenter import gpu_limit_needed
from ..keda import METRICS as KEDA_METRICS
from ..platforms import ami_arch, ami_device
from ..specs import NLB_DEREGISTRATION_LAG_SECONDS, ROLLOUT_SURGE
from .autoscaling import AutoscalingArgs
from .checking import Problem
from .elastic import ElasticArgs
from .encryption import EncryptionArgs
from .monitoring import MONITORING_MODES, MonitoringArgs
from .network import NetworkArgs
from .node_pool import NodePoolArgs
from .resources import ResourcesArgs
from .rollout import RolloutArgs
from .server import ServerArgs

__all__ = ["RULES", "Rule", "cross_group_problems", "draining_problems", "rule"]


@dataclass(frozen=True)
class Rule:
    needs: tuple[str, ...]
    check: Callable[..., list[Problem]]


RULES: list[Rule] = []


def rule(*needs: str) -> Callable[[Callable[..., list[Problem]]], Callable[..., list[Problem]]]:
    """Register a rule over the named groups (ServedModelArgs field names, `target` included)."""
    def register(check: Callable[..., list[Problem]]) -> Callable[..., list[Problem]]:
        RULES.append(Rule(tuple(needs), check))
        return check
    return register


def cross_group_problems(groups: Mapping[str, Any]) -> list[Problem]:
    """The problems of every rule whose groups are all in `groups` (built)."""
    out: list[Problem] = []
    for r in RULES:
        if all(name in groups for name in r.needs):
            out += r.check(*(groups[name] for name in r.needs))
    return out


# ---- where the model runs ------------------------------------------------------------------------

@rule("target", "resources")
def _gpus_need_kubernetes(target: str, resources: ResourcesArgs) -> list[Problem]:
    if target == "docker" and resources.gpu:
        return [Problem("resources.gpu", resources.gpu,
                        "GPUs are served on the kubernetes target only; use 0 on the docker target")]
    return []


@rule("target", "resources", "node_pool")
def _gpus_need_a_pool(target: str, resources: ResourcesArgs, node_pool: Optional[NodePoolArgs]) -> list[Problem]:
    if target == "kubernetes" and resources.gpu and node_pool is None:
        return [Problem("node_pool", None, "GPU replicas on the kubernetes target need a node pool (NodePoolArgs)")]
    return []


@rule("resources", "node_pool")
def _gpu_pool_families(resources: ResourcesArgs, node_pool: Optional[NodePoolArgs]) -> list[Problem]:
    """GPU families whose GPUs the image's CUDA cannot use are refused, saying why (gpus.py).
    Everything else about a type is EC2's to say (components/capacity.py): whether it has an
    NVIDIA GPU at all, and its architecture (a Graviton g5g is refused because EC2 says arm64)."""
    if node_pool is None or resources.gpu <= 0:
        return []
    return [Problem("node_pool.instance_types", t, f"{unsupported_reason(t)}; use a Turing or newer NVIDIA type "
                                                   f"({', '.join(SUPPORTED_GPU_FAMILIES)})")
            for t in node_pool.instance_types if unsupported_reason(t)]


@rule("resources", "node_pool")
def _cpu_pool_needs_types(resources: ResourcesArgs, node_pool: Optional[NodePoolArgs]) -> list[Problem]:
    if node_pool is not None and resources.gpu == 0 and not node_pool.instance_types:
        return [Problem("node_pool.instance_types", [], "a CPU model's own pool needs its instance types (such as "
                                                        "c7g.xlarge); without a pool its pods run on the cluster's "
                                                        "nodes (pass no NodePoolArgs)")]
    return []


@rule("resources", "node_pool")
def _ami_type_matches_the_model(resources: ResourcesArgs, node_pool: Optional[NodePoolArgs]) -> list[Problem]:
    """An AMI type runs one device kind on one architecture (platforms.AMI_TYPES_FOR); the one
    the stack names must be the model's. What EC2 says of the types is checked with EC2's figures
    (components/capacity.py)."""
    if node_pool is None or not node_pool.ami_type:
        return []
    ami, out = node_pool.ami_type, []
    if ami_device(ami) != resources.device:
        out.append(Problem("node_pool.ami_type", ami, (
            f"an AMI for {'GPU' if ami_device(ami) == 'cuda' else 'CPU'} nodes, but the model "
            f"{'has' if resources.gpu else 'has no'} GPUs (@{{resources.gpu}} {resources.gpu}); leave it empty for "
            "the Bottlerocket AMI of the model's device and architecture")))
    elif resources.arch and ami_arch(ami) != resources.arch:
        out.append(Problem("node_pool.ami_type", ami, f"runs {ami_arch(ami)} nodes, but @{{resources.arch}} is "
                                                      f"{resources.arch}; leave it empty for the Bottlerocket AMI of "
                                                      "that architecture"))
    return out


@rule("target", "resources")
def _arch_is_for_kubernetes(target: str, resources: ResourcesArgs) -> list[Problem]:
    if target == "docker" and resources.arch:
        return [Problem("resources.arch", resources.arch, "the docker target builds and runs the image for the "
                                                          "host's architecture: leave it empty there")]
    return []


# Whether a replica, and the rollout at max replicas, fit the pool's nodes, and whether each
# instance type's architecture is the image's, needs EC2's figures of each instance type:
# components/capacity.py checks it with them (the program's invokes).


@rule("target", "network")
def _hostname_needs_kubernetes(target: str, network: NetworkArgs) -> list[Problem]:
    if target != "kubernetes" and given(network.hostname):
        return [Problem("network.hostname", network.hostname,
                        "names a public load balancer: the kubernetes target only (leave it empty on docker)")]
    return []


@rule("network", "server")
def draining_problems(network: NetworkArgs, server: ServerArgs) -> list[Problem]:
    """Issue 18, finding 8: a pod behind the NLB (pod IP targets) keeps receiving new connections
    for about two minutes after its target starts deregistering
    (specs.NLB_DEREGISTRATION_LAG_SECONDS): its preStop sleep must outlast that, or a rollout and
    every scale-down drop requests."""
    lag = NLB_DEREGISTRATION_LAG_SECONDS
    if network.service_type == "LoadBalancer" and server.pre_stop_seconds < lag:
        return [Problem("server.pre_stop_seconds", server.pre_stop_seconds,
                        f"behind the public NLB (@{{network.service_type}} LoadBalancer) must be {lag} or more: "
                        f"the NLB sends new connections to a deregistering pod for about {lag} s, and a pod "
                        "that stops serving before that drops them (docs/deploy.md, Draining)")]
    return []


@rule("target", "encryption")
def _encryption_fits_the_target(target: str, encryption: EncryptionArgs) -> list[Problem]:
    """Issue 21: a kms-encrypted model is unwrapped by the pod's own AWS identity (EKS Pod
    Identity), which a local container has not; a local key is a file on the machine that runs
    `up`, which a cluster's nodes have not."""
    if encryption.mode == "kms" and target == "docker":
        return [Problem("encryption.mode", encryption.mode,
                        "kms is unwrapped by the pod's own AWS identity on @{target} kubernetes; use local (a key file "
                        "mounted into the container) or none on docker")]
    if encryption.mode is None and target == "docker" and given(encryption.kms_key_arn):
        return [Problem("encryption.kms_key_arn", encryption.kms_key_arn,
                        "a KMS key is for @{encryption.mode} kms on @{target} kubernetes; the docker target's model is "
                        "sealed with a local key: leave it empty")]
    if encryption.mode == "local" and target == "kubernetes":
        return [Problem("encryption.mode", encryption.mode,
                        "a local key is a file on this machine, which the cluster's nodes cannot read; use kms (the "
                        "default on kubernetes) or none")]
    return []


# ---- how versions reach traffic, and what watches them ---------------------------------------------

@rule("target", "rollout")
def _canary_needs_kubernetes(target: str, rollout: RolloutArgs) -> list[Problem]:
    if target != "kubernetes" and rollout.strategy == "canary":
        return [Problem("rollout.strategy", rollout.strategy,
                        "a canary needs the kubernetes target (Argo Rollouts); use rolling on the docker target")]
    return []


@rule("target", "monitoring")
def _monitoring_needs_kubernetes(target: str, monitoring: MonitoringArgs) -> list[Problem]:
    if target != "kubernetes" and monitoring.mode in MONITORING_MODES and monitoring.mode != "none":
        return [Problem("monitoring.mode", monitoring.mode,
                        "monitoring objects need the kubernetes target; use none on the docker target")]
    return []


@rule("rollout", "elastic")
def _canary_not_with_keda(rollout: RolloutArgs, elastic: ElasticArgs) -> list[Problem]:
    """A canary's pods belong to an Argo Rollout, while KEDA's ScaledObject (and the HTTP add-on)
    is declared against the model's Deployment: the two are not combined yet, so the pair is
    refused rather than deployed with an autoscaler that scales nothing."""
    if rollout.strategy == "canary" and elastic.autoscaler == "keda":
        return [Problem("rollout.strategy", rollout.strategy, "a canary (Argo Rollouts) cannot be combined with "
                        "autoscaler keda yet; use rollout rolling with keda, or autoscaler hpa with a canary")]
    return []


# ---- elastic GPU capacity (issue 11): Karpenter nodes, KEDA pods, scale to zero --------------------

@rule("target", "resources", "node_pool", "elastic")
def _karpenter_needs_a_pool_on_kubernetes(target: str, resources: ResourcesArgs, node_pool: Optional[NodePoolArgs],
                                          elastic: ElasticArgs) -> list[Problem]:
    pool = resources.gpu > 0 or (node_pool is not None and bool(node_pool.instance_types))
    if elastic.karpenter and not (target == "kubernetes" and pool):
        return [Problem("elastic.node_provisioner", elastic.node_provisioner,
                        "karpenter provisions the model's node pool: it needs @{target} kubernetes and "
                        "@{resources.gpu} > 0 or @{node_pool.instance_types} (a CPU pool)")]
    return []


@rule("target", "elastic")
def _keda_needs_kubernetes(target: str, elastic: ElasticArgs) -> list[Problem]:
    if elastic.keda and target != "kubernetes":
        return [Problem("elastic.autoscaler", elastic.autoscaler, "keda needs @{target} kubernetes")]
    return []


@rule("autoscaling", "elastic")
def _keda_metric_and_bounds(autoscaling: AutoscalingArgs, elastic: ElasticArgs) -> list[Problem]:
    out: list[Problem] = []
    if elastic.keda and autoscaling.metric not in KEDA_METRICS:
        out.append(Problem("autoscaling.metric", autoscaling.metric,
                           f"with @{{elastic.autoscaler}} keda: one of {', '.join(KEDA_METRICS)} "
                           "(KEDA reads the server's own metrics from Prometheus)"))
    if elastic.keda and elastic.min_replicas > autoscaling.max_replicas:
        out.append(Problem("elastic.min_replicas", elastic.min_replicas,
                           f"must not exceed @{{autoscaling.max_replicas}} ({autoscaling.max_replicas})"))
    return out


@rule("elastic", "monitoring")
def _keda_needs_a_scrape(elastic: ElasticArgs, monitoring: MonitoringArgs) -> list[Problem]:
    """KEDA's Prometheus trigger reads the server's metrics from a Prometheus that scrapes the
    pods. `monitoring: none` declares no scrape (and promises none): the query then reads
    nothing, and with scale to zero (where an empty result must read as idle,
    `ignoreNullValues: true`) the model would never scale above one replica, silently."""
    if elastic.keda and monitoring.mode == "none":
        return [Problem("monitoring.mode", monitoring.mode,
                        "@{elastic.autoscaler} keda scales on the server's metrics in Prometheus: declare how they are "
                        "scraped, prometheus-operator (a PodMonitor) or annotations (your Prometheus scrapes the "
                        "annotated pods); with none KEDA's query reads nothing")]
    return []


@rule("network", "elastic")
def _grpc_does_not_pass_the_interceptor(network: NetworkArgs, elastic: ElasticArgs) -> list[Problem]:
    """The HTTP add-on's interceptor routes HTTP/1.1 (and h2c only to a Service port with
    `appProtocol: kubernetes.io/h2c`: kedacore/http-add-on v0.15.0 interceptor/handler/upstream.go);
    our gRPC port is a separate Service port the interceptor never sees, so at zero replicas a
    gRPC call finds nothing to answer it."""
    if elastic.keda_http is True and isinstance(network.grpc_port, int) and network.grpc_port:
        return [Problem("network.grpc_port", network.grpc_port,
                        "gRPC does not pass the KEDA HTTP add-on's interceptor (@{elastic.keda_http}): at zero "
                        "replicas a gRPC call would find no pod; use 0 with keda_http, or keep a replica "
                        "(@{elastic.min_replicas} 1, without keda_http)")]
    return []


@rule("network", "elastic")
def _hostname_names_a_public_entry(network: NetworkArgs, elastic: ElasticArgs) -> list[Problem]:
    """A hostname names the public entry: the load balancer (https, TLS at the NLB), or with scale
    to zero the KEDA HTTP add-on's interceptor, which routes by Host and must list the public
    name (kedacore/http-add-on v0.15.0 pkg/routing/table.go; issue 18 finding 11) behind the
    ingress that sends it there."""
    if given(network.hostname) and network.service_type != "LoadBalancer" and elastic.keda_http is not True:
        return [Problem("network.hostname", network.hostname,
                        "names the public endpoint: only with @{network.service_type} LoadBalancer (https at the "
                        "load balancer), or with @{elastic.keda_http} (the interceptor routes it behind your ingress)")]
    return []


@rule("network", "elastic")
def _interceptor_needs_cluster_ip(network: NetworkArgs, elastic: ElasticArgs) -> list[Problem]:
    if elastic.keda_http and network.service_type == "LoadBalancer":
        return [Problem("elastic.keda_http", elastic.keda_http,
                        "a LoadBalancer Service sends traffic past the interceptor: use @{network.service_type} "
                        "ClusterIP and route your ingress to the interceptor (docs/deploy.md)")]
    return []


@rule("target", "resources", "node_pool", "elastic")
def _karpenter_admits_image_families(target: str, resources: ResourcesArgs, node_pool: Optional[NodePoolArgs],
                                     elastic: ElasticArgs) -> list[Problem]:
    if elastic.karpenter and target == "kubernetes" and resources.gpu > 0 and node_pool is not None:
        unsupported = [f for f in instance_families(node_pool.instance_types) if f not in IMAGE_GPU_FAMILIES]
        if unsupported:
            return [Problem("node_pool.instance_types", list(node_pool.instance_types),
                            f"families {unsupported} cannot run the serving image; with karpenter the pool admits "
                            f"the families of these types; accepted: {', '.join(IMAGE_GPU_FAMILIES)}")]
    return []


@rule("target", "resources", "autoscaling", "node_pool", "elastic")
def _karpenter_gpu_limit_holds_the_rollout(target: str, resources: ResourcesArgs, autoscaling: AutoscalingArgs,
                                           node_pool: Optional[NodePoolArgs], elastic: ElasticArgs) -> list[Problem]:
    gpu = resources.gpu
    if elastic.karpenter and target == "kubernetes" and gpu > 0 and node_pool is not None and elastic.gpu_limit:
        need = gpu_limit_needed(gpu, autoscaling.max_replicas)
        if elastic.gpu_limit < need:
            return [Problem("elastic.gpu_limit", elastic.gpu_limit,
                            f"below the replicas' needs: (@{{autoscaling.max_replicas}} ({autoscaling.max_replicas}) "
                            f"+ {ROLLOUT_SURGE} rollout surge) x @{{resources.gpu}} ({gpu}) = {need} GPUs; "
                            f"raise it to at least {need} or use 0")]
    return []
