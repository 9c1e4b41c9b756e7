"""NodePoolArgs: the model's own node pool on an existing cluster (kubernetes target): GPU nodes
for a GPU model, or CPU nodes (e.g. Graviton) for a CPU model that lists instance types."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pulumi

from ..karpenter import wrong_ids
from ..platforms import AMI_TYPES
from .checking import ArgsGroup, Checker, each, integer, matching, one_of
from .setting import REQUIRED, setting

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")



def _cluster_name(value: Any) -> Optional[str]:
    return None if isinstance(value, str) and value else "the name of an existing EKS cluster the nodes join"


def _instance_type(value: Any) -> Optional[str]:
    # Which GPU families the image runs on is a rule with the model's GPUs (components/args/rules.py);
    # what a type has (vCPUs, memory, GPUs, architecture) is EC2's, read by components/capacity.py.
    if isinstance(value, str) and _INSTANCE_TYPE.match(value):
        return None
    return "an EC2 instance type (family.size, e.g. g5.xlarge or c7g.xlarge)"


def _subnet_ids(value: Any) -> list[tuple[Any, str]]:
    wrong = wrong_ids("subnet", value)
    return [(wrong, "ids such as subnet-0123abcd; empty = the cluster's private subnets")] if wrong else []


@dataclass(frozen=True)
class NodePoolArgs(ArgsGroup):
    """The model's own node pool on an existing cluster (kubernetes target): an EKS managed node
    group, or Karpenter's NodePool and EC2NodeClass (elastic.node_provisioner karpenter). A GPU model
    always has one; a CPU model has one when it lists `instance_types`.

    `cluster_name` and `subnet_ids` accept another resource's outputs (an `aws.eks.Cluster`'s
    name, a VPC's subnet ids): their checks then run when the value is known.
    """

    GROUP = "node_pool"
    STACK_GROUP = "nodePool"

    cluster_name: pulumi.Input[str] = setting(
        REQUIRED, "Name of the existing EKS cluster (kubernetes target, required). Its endpoint builds the "
                  "kubeconfig unless @{kubeconfig} is set; the model's node pool joins it.",
        key="clusterName", stack_default="", flat_only=True, check=_cluster_name)
    instance_types: tuple[str, ...] = setting(
        (), "EC2 instance types of the model's node pool. A GPU model: NVIDIA GPU types (g4dn, g5, g6, g6e, p4d, "
            "p5; see docs/config.md for the refused families, such as p3/Volta; with Karpenter only these families); "
            "empty = g5.xlarge. A CPU model: any types of one architecture (c7g.xlarge for Graviton, m6i.large...) "
            "give it a "
            "pool of its own; empty = no pool, its pods run on the cluster's nodes. Every type's architecture (EC2's "
            "supported_architectures) must be one the image is built for and @{resources.arch}; one replica's "
            "@{resources.cpu}, @{resources.memory} and @{resources.gpu} must fit each type's allocatable as EC2 "
            "describes it, less the DaemonSet headroom (docs/deploy.md, Capacity).",
        key="nodeInstanceTypes", check=each(_instance_type))
    ami_type: str = setting(
        "", "EKS AMI type of the managed node pool, one matching the model's device and architecture: "
            "BOTTLEROCKET_x86_64_NVIDIA (ships the NVIDIA device plugin) or AL2023_x86_64_NVIDIA (the cluster must "
            "run the device plugin) for GPUs; BOTTLEROCKET_x86_64 / AL2023_x86_64_STANDARD (amd64) or "
            "BOTTLEROCKET_ARM_64 / AL2023_ARM_64_STANDARD (arm64, Graviton) for CPU pools. Empty = the Bottlerocket "
            "one. Changing it (or the architecture) replaces the node group.",
        key="nodeAmiType", check=one_of(("",) + AMI_TYPES))
    min_size: int = setting(1, "Minimum nodes in the node pool.", key="nodeMin", check=integer(0))
    desired_size: int = setting(1, "Initial desired nodes in the node pool (the cluster autoscaler owns it "
                                   "afterwards).", key="nodeDesired", check=integer(0))
    max_size: int = setting(2, "Maximum nodes in the node pool; must fit @{autoscaling.max_replicas} + 1 surge "
                               "pod (GPU or GPU shares, CPU and memory per node from EC2).", key="nodeMax",
                            check=integer(0))
    subnet_ids: Optional[pulumi.Input[Sequence[pulumi.Input[str]]]] = setting(
        None, "Subnets of the node pool; empty uses the cluster's private subnets (tagged "
              "kubernetes.io/role/internal-elb=1).",
        key="nodeSubnetIds", unset=[], check=_subnet_ids, compare=False)
    daemon_set_cpu: str = setting(
        "250m", "CPU each pool node keeps for DaemonSet pods (VPC CNI, kube-proxy, CSI node plugin, exporters) on top "
                "of the kubelet's reservation; a replica's @{resources.cpu} must fit the node's allocatable less this "
                "(components/capacity.py).", check=matching(_QUANTITY, "must be a Kubernetes quantity such as 250m"))
    daemon_set_memory: str = setting(
        "256Mi", "Memory each pool node keeps for DaemonSet pods on top of the kubelet's reservation; a replica's "
                 "@{resources.memory} must fit the node's allocatable less this.",
        check=matching(_QUANTITY, "must be a Kubernetes quantity such as 256Mi"))

    def rules(self, c: Checker) -> None:
        if c.ok("min_size", "desired_size", "max_size") and (
                self.max_size < 1 or not self.min_size <= self.desired_size <= self.max_size):
            c.bad("desired_size", f"need 0 <= @{{node_pool.min_size}} ({self.min_size}) <= @{{node_pool.desired_size}} "
                                  f"({self.desired_size}) <= @{{node_pool.max_size}} ({self.max_size}), "
                                  f"@{{node_pool.max_size}} >= 1")
