"""NodePoolArgs: an EKS managed GPU node group on an existing cluster (kubernetes target, gpu > 0)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pulumi

from ..gpus import SUPPORTED_GPU_FAMILIES, instance_family, unsupported_reason
from ..karpenter import wrong_ids
from .checking import ArgsGroup, Checker, integer, matching, one_of
from .setting import REQUIRED, setting

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")

AMI_TYPES = ("BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA")


def _cluster_name(value: Any) -> Optional[str]:
    return None if isinstance(value, str) and value else "the name of an existing EKS cluster the nodes join"


def _instance_types(value: Any) -> list[tuple[Any, str]]:
    types = tuple(value or ())
    found: list[tuple[Any, str]] = []
    for t in types:
        if unsupported_reason(t):
            found.append((t, f"{t}: {unsupported_reason(t)}; use a Turing or newer NVIDIA type "
                             f"({', '.join(SUPPORTED_GPU_FAMILIES)})"))
    # Which families the image runs on is our choice (gpus.py); what a type has (GPUs, vCPUs,
    # memory) is EC2's, read by components/capacity.py.
    unknown = [t for t in types if not _INSTANCE_TYPE.match(str(t))
               or (instance_family(t) not in SUPPORTED_GPU_FAMILIES and not unsupported_reason(t))]
    if not types or unknown:
        found.append((list(types), "EC2 GPU instance types (family.size, e.g. g5.xlarge) of the families the serving "
                                   f"image supports: {', '.join(SUPPORTED_GPU_FAMILIES)}"))
    return found


def _subnet_ids(value: Any) -> list[tuple[Any, str]]:
    wrong = wrong_ids("subnet", value)
    return [(wrong, "ids such as subnet-0123abcd; empty = the cluster's private subnets")] if wrong else []


@dataclass(frozen=True)
class NodePoolArgs(ArgsGroup):
    """An EKS managed GPU node group on an existing cluster (kubernetes target, gpu > 0)."""

    GROUP = "node_pool"
    STACK_GROUP = "nodePool"

    cluster_name: str = setting(
        REQUIRED, "Name of the existing EKS cluster (kubernetes target, required). Its endpoint builds the "
                  "kubeconfig unless @{kubeconfig} is set; the GPU node pool joins it.",
        key="clusterName", stack_default="", flat_only=True, check=_cluster_name)
    instance_types: tuple[str, ...] = setting(
        ("g5.xlarge",), "EC2 instance types of the GPU node pool, of the families the image supports (g4dn, g5, g6, "
                        "g6e, p4d, p5; see docs/config.md for the refused families, such as p3/Volta). One replica's "
                        "@{resources.cpu}, @{resources.memory} and @{resources.gpu} must fit each type's allocatable "
                        "as EC2 describes it, less the DaemonSet headroom (docs/deploy.md, Capacity).",
        key="nodeInstanceTypes", check=_instance_types)
    ami_type: str = setting(
        "BOTTLEROCKET_x86_64_NVIDIA", "EKS AMI type of the GPU node pool - BOTTLEROCKET_x86_64_NVIDIA (ships the "
                                      "NVIDIA device plugin) or AL2023_x86_64_NVIDIA (the cluster must run the device "
                                      "plugin).", key="nodeAmiType", check=one_of(AMI_TYPES))
    min_size: int = setting(1, "Minimum nodes in the GPU node pool.", key="nodeMin", check=integer(0))
    desired_size: int = setting(1, "Initial desired nodes in the GPU node pool (the cluster autoscaler owns it "
                                   "afterwards).", key="nodeDesired", check=integer(0))
    max_size: int = setting(2, "Maximum nodes in the GPU node pool; must fit @{autoscaling.max_replicas} + 1 surge "
                               "pod (GPU, CPU and memory per node from EC2).", key="nodeMax", check=integer(0))
    subnet_ids: Optional[pulumi.Input[Sequence[pulumi.Input[str]]]] = setting(
        None, "Subnets of the GPU node pool; empty uses the cluster's private subnets (tagged "
              "kubernetes.io/role/internal-elb=1).",
        key="nodeSubnetIds", unset=[], check=_subnet_ids, compare=False)
    daemon_set_cpu: str = setting(
        "250m", "CPU each GPU node keeps for DaemonSet pods (VPC CNI, kube-proxy, CSI node plugin, exporters) on top "
                "of the kubelet's reservation; a replica's @{resources.cpu} must fit the node's allocatable less this "
                "(components/capacity.py).", check=matching(_QUANTITY, "must be a Kubernetes quantity such as 250m"))
    daemon_set_memory: str = setting(
        "256Mi", "Memory each GPU node keeps for DaemonSet pods on top of the kubelet's reservation; a replica's "
                 "@{resources.memory} must fit the node's allocatable less this.",
        check=matching(_QUANTITY, "must be a Kubernetes quantity such as 256Mi"))

    def rules(self, c: Checker) -> None:
        if c.ok("min_size", "desired_size", "max_size") and (
                self.max_size < 1 or not self.min_size <= self.desired_size <= self.max_size):
            c.bad("desired_size", f"need 0 <= @{{node_pool.min_size}} ({self.min_size}) <= @{{node_pool.desired_size}} "
                                  f"({self.desired_size}) <= @{{node_pool.max_size}} ({self.max_size}), "
                                  f"@{{node_pool.max_size}} >= 1")
