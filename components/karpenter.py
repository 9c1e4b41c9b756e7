"""Karpenter capacity: the NodePool (karpenter.sh/v1) and EC2NodeClass (karpenter.k8s.aws/v1) of
one model's pool, as pure spec builders over typed, self-validating args.

Versions: written for Karpenter 1.14 (the `karpenter` chart 1.14.1, docs/deploy.md); the tests
validate every object strictly against that release's CRD schemas (tests/crds/).
A GPU pool admits only the GPU instance families the serving image can run, carries the same
label and taint as the managed node group (pods select and tolerate it the same way either
way), caps `nvidia.com/gpu` with `limits`, and lets Karpenter remove empty nodes (scale to zero);
a shared GPU pool also carries the time-slicing labels and Bottlerocket's sharing settings. A
CPU pool (a CPU model that lists instance types, e.g. Graviton) admits exactly those types, caps
`cpu`, and has no taint. Either pool requires the architecture of its nodes
(`kubernetes.io/arch`, components/platforms.py).

Karpenter's grammar (durations, budgets, AMI aliases, capacity types, AWS ids) and its pool
defaults are stated here once: the stack's elastic group (components/args/elastic.py) checks its
values with them, and so does `KarpenterPoolArgs`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import pulumi

from . import gpus, specs
from .inputs import check_input, given, lift
from .platforms import ARCH_LABEL, ARCHES
from .specs import ROLLOUT_SURGE

API_NODEPOOL = "karpenter.sh/v1"
API_NODECLASS = "karpenter.k8s.aws/v1"
# Karpenter's own discovery tag: the subnets and security groups the cluster's Karpenter
# installation tags for its nodes (Karpenter's getting-started guide tags them this way).
DISCOVERY_TAG = "karpenter.sh/discovery"


CAPACITY_TYPES = ("on-demand", "spot")
CONSOLIDATION_POLICIES = ("WhenEmpty", "WhenEmptyOrUnderutilized")
DURATION = re.compile(r"^(([0-9]+(s|m|h))+|Never)$")
BUDGET_NODES = re.compile(r"^((100|[0-9]{1,2})%|[0-9]+)$")
AMI_ALIAS = re.compile(r"^bottlerocket@(latest|v[0-9]+\.[0-9]+\.[0-9]+)$")
AWS_ID = {"subnet": re.compile(r"^subnet-[0-9a-z]+$"), "sg": re.compile(r"^sg-[0-9a-z]+$")}
# An IAM role name (what an EC2NodeClass's `role` takes; an ARN is refused by Karpenter).
ROLE_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")


@dataclass(frozen=True)
class KarpenterDefaults:
    """The Karpenter pool defaults, stated once: the stack's elastic group (ElasticArgs) and the
    component's own args (KarpenterPoolArgs) both take them from here."""
    capacity_types: tuple[str, ...] = ("on-demand",)
    consolidation_policy: str = "WhenEmpty"
    consolidate_after: str = "5m"
    disruption_budget_nodes: str = "1"
    ami_alias: str = "bottlerocket@latest"


KARPENTER_DEFAULTS = KarpenterDefaults()


def gpu_limit_needed(gpu: int, max_replicas: int) -> int:
    """GPUs a Karpenter pool must be allowed to hold: every replica at the maximum plus the surge."""
    return gpu * (max_replicas + ROLLOUT_SURGE)


def wrong_ids(kind: str, ids: Sequence[Any]) -> list[Any]:
    """The entries of `ids` that are not AWS ids of `kind` (subnet-..., sg-...)."""
    return [i for i in ids or () if not AWS_ID[kind].match(str(i))]


def _problems_text(what: str, problems: list[str]) -> str:
    return f"invalid {what} ({len(problems)} problem(s)): " + "; ".join(problems)


@dataclass(frozen=True)
class KarpenterPoolArgs:
    """One Karpenter pool (GPU, or CPU with `gpu` False). Validates itself (ValueError listing
    every problem)."""

    cluster_name: pulumi.Input[str]
    """EKS cluster; the default discovery-tag value for subnets and security groups (another
    resource's output too: checked once known). Required."""
    pool_label: str
    """Value of the servedmodel.io/node-pool label the model's pods select. Required."""
    families: tuple[str, ...]
    """GPU instance families admitted (e.g. ("g5", "g6")); each must be one the image runs. Required
    for a GPU pool; a CPU pool admits `instance_types` instead."""
    supported_families: tuple[str, ...]
    """The families the serving image can run (the one shared list). Required."""
    node_role: pulumi.Input[str]
    """IAM role name of Karpenter's nodes (the installation's KarpenterNodeRole-...). Required."""
    gpu: bool = True
    """A GPU pool (NVIDIA requirements, the GPU taint, an nvidia.com/gpu limit); False: a CPU pool.
    Default True."""
    arch: str = "amd64"
    """The nodes' architecture (`kubernetes.io/arch`): amd64 or arm64. Default "amd64"."""
    instance_types: tuple[str, ...] = ()
    """A CPU pool's instance types, admitted exactly (its cpu limit is sized from them). Default ()."""
    cpu_limit: int = 0
    """A CPU pool's `limits.cpu` (vCPUs of its nodes at once); 0 for a GPU pool. Default 0."""
    gpu_share: int = 1
    """Replicas per GPU (time-slicing, components/gpus.py): above 1 the nodes carry the sharing
    labels and Bottlerocket's time-slicing settings (userData). Default 1."""
    capacity_types: tuple[str, ...] = KARPENTER_DEFAULTS.capacity_types
    """on-demand and/or spot. Default ("on-demand",)."""
    gpu_limit: int = 4
    """NodePool limits: nvidia.com/gpu, the most GPUs the pool may hold at once. Default 4."""
    consolidation_policy: str = KARPENTER_DEFAULTS.consolidation_policy
    """WhenEmpty (only empty nodes go) or WhenEmptyOrUnderutilized. Default "WhenEmpty"."""
    consolidate_after: str = KARPENTER_DEFAULTS.consolidate_after
    """How long a node stays empty/underused before it goes (Karpenter duration). Default "5m"."""
    disruption_budget_nodes: str = KARPENTER_DEFAULTS.disruption_budget_nodes
    """At most this many (or %) nodes disrupted at once. Default "1"."""
    expire_after: str = "720h"
    """Nodes are replaced after this age (AMI updates). Default "720h"."""
    ami_alias: str = KARPENTER_DEFAULTS.ami_alias
    """EC2NodeClass AMI alias: Bottlerocket, whose NVIDIA variant Karpenter picks for GPU types
    (it ships the driver and the device plugin). Pin a version (bottlerocket@v1.x.y) for
    repeatable nodes. Default "bottlerocket@latest"."""
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]] = ()
    """Subnets by id (another resource's outputs too); empty = those tagged
    karpenter.sh/discovery=<cluster_name>. Default ()."""
    security_group_ids: pulumi.Input[Sequence[pulumi.Input[str]]] = ()
    """Security groups by id (another resource's outputs too); empty = those tagged
    karpenter.sh/discovery=<cluster_name>. Default ()."""
    data_volume_gib: int = 80
    """Bottlerocket's data volume (/dev/xvdb: container images; a CUDA image is ~2.7 GB). Default 80."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """More node labels. Default {}."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        kept, problem = check_input(self.cluster_name, lambda name: None if name else "cluster_name is required",
                                    lambda _, text: pulumi.RunError(_problems_text("Karpenter pool", [text])))
        object.__setattr__(self, "cluster_name", kept)
        if problem:
            problems.append(problem)
        if not given(self.node_role):
            problems.append("node_role is required (the IAM role name Karpenter's nodes use)")
        if self.gpu:
            if not self.families:
                problems.append("families must name at least one GPU instance family")
            unsupported = [f for f in self.families if f not in self.supported_families]
            if unsupported:
                problems.append(f"families {unsupported} cannot run the serving image; accepted: "
                                f"{', '.join(self.supported_families)}")
        else:
            if not self.instance_types:
                problems.append("instance_types must name the CPU pool's EC2 instance types")
            if self.cpu_limit < 1:
                problems.append(f"cpu_limit {self.cpu_limit}: a CPU pool needs 1 or more")
            if self.gpu_share != 1:
                problems.append(f"gpu_share {self.gpu_share}: a CPU pool shares no GPU (1)")
        if self.arch not in ARCHES:
            problems.append(f"arch {self.arch!r}: one of {', '.join(ARCHES)}")
        if self.gpu_share < 1:
            problems.append(f"gpu_share {self.gpu_share}: 1 or more")
        if not self.capacity_types or any(c not in CAPACITY_TYPES for c in self.capacity_types) or \
                len(set(self.capacity_types)) != len(self.capacity_types):
            problems.append(f"capacity_types {list(self.capacity_types)}: one or both of {', '.join(CAPACITY_TYPES)}")
        if self.gpu and self.gpu_limit < 1:
            problems.append(f"gpu_limit {self.gpu_limit}: must be 1 or more")
        if self.consolidation_policy not in CONSOLIDATION_POLICIES:
            problems.append(f"consolidation_policy {self.consolidation_policy!r}: "
                            f"one of {', '.join(CONSOLIDATION_POLICIES)}")
        for name in ("consolidate_after", "expire_after"):
            if not DURATION.match(getattr(self, name)):
                problems.append(f"{name} {getattr(self, name)!r}: a duration such as 30s, 5m, 1h30m or Never")
        if not BUDGET_NODES.match(self.disruption_budget_nodes):
            problems.append(f"disruption_budget_nodes {self.disruption_budget_nodes!r}: "
                            "a count (1) or a percentage (10%)")
        if not AMI_ALIAS.match(self.ami_alias):
            problems.append(f"ami_alias {self.ami_alias!r}: bottlerocket@latest or bottlerocket@vX.Y.Z")
        for name, kind in (("subnet_ids", "subnet"), ("security_group_ids", "sg")):
            def bad(ids: Any, kind: str = kind) -> Any:
                wrong = wrong_ids(kind, ids)
                return f"{kind} ids {wrong}: must look like {kind}-0123abcd" if wrong else None
            kept, problem = check_input(getattr(self, name), bad,
                                        lambda _, text: pulumi.RunError(_problems_text("Karpenter pool", [text])))
            object.__setattr__(self, name, kept)
            if problem:
                problems.append(problem)
        if self.data_volume_gib < 20:
            problems.append(f"data_volume_gib {self.data_volume_gib}: at least 20")
        if problems:
            raise ValueError(_problems_text("Karpenter pool", problems))


def _selector_terms(ids: Any, cluster_name: pulumi.Input[str]) -> Any:
    """By id when ids are given, else by the discovery tag (Outputs among them: once known)."""
    def terms(known: Sequence[str], cluster: str) -> list[dict[str, Any]]:
        if known:
            return [{"id": i} for i in known]
        return [{"tags": {DISCOVERY_TAG: cluster}}]
    return lift(terms, ids, cluster_name)


def node_labels(args: KarpenterPoolArgs) -> dict[str, str]:
    """The labels of every node of the pool: the pool's, a shared GPU's, any extra."""
    shared = gpus.shared_node_labels(args.gpu_share) if args.gpu and args.gpu_share > 1 else {}
    return {specs.POOL_LABEL: args.pool_label, **shared, **args.extra_labels}


def node_class_spec(args: KarpenterPoolArgs) -> dict[str, Any]:
    """EC2NodeClass spec: Bottlerocket (Karpenter picks the variant for the type: NVIDIA for GPU
    types, aarch64 for Graviton), the node role, the discovery-tagged (or given) subnets and
    security groups, IMDSv2 only, a data volume for images; on a shared GPU pool, Bottlerocket's
    time-slicing settings as userData (merged by Karpenter into the TOML it writes)."""
    spec = {
        "amiSelectorTerms": [{"alias": args.ami_alias}],
        "role": args.node_role,
        "subnetSelectorTerms": _selector_terms(args.subnet_ids, args.cluster_name),
        "securityGroupSelectorTerms": _selector_terms(args.security_group_ids, args.cluster_name),
        # IMDSv2 only, hop limit 1: pods cannot reach the node role through IMDS. Karpenter's own
        # default (aws/karpenter-provider-aws v1.14.1 pkg/apis/v1/ec2nodeclass.go L139-L153:
        # httpTokens required, httpPutResponseHopLimit 1), stated so a changed default cannot widen it.
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1},
        "blockDeviceMappings": [{"deviceName": "/dev/xvdb", "ebs": {
            "volumeSize": f"{args.data_volume_gib}Gi", "volumeType": "gp3", "encrypted": True,
            "deleteOnTermination": True}}],
        "tags": {"servedmodel.io/node-pool": args.pool_label},
    }
    if args.gpu and args.gpu_share > 1:
        spec["userData"] = gpus.bottlerocket_time_slicing_settings(args.gpu_share)
    return spec


def requirements(args: KarpenterPoolArgs) -> list[dict[str, Any]]:
    """A GPU pool: only the admitted GPU families and NVIDIA GPUs; a CPU pool: exactly its instance
    types. Either: Linux nodes of the pool's architecture, the chosen capacity types."""
    if args.gpu:
        kinds = [
            {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": sorted(args.families)},
            {"key": "karpenter.k8s.aws/instance-gpu-manufacturer", "operator": "In", "values": ["nvidia"]},
            {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]},
        ]
    else:
        kinds = [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": sorted(args.instance_types)}]
    return kinds + [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(args.capacity_types)},
        {"key": ARCH_LABEL, "operator": "In", "values": [args.arch]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]


def cpu_limit_needed(max_replicas: int, largest_vcpus: int) -> int:
    """vCPUs a Karpenter CPU pool must be allowed to hold: every replica at the maximum plus the
    surge on a node of its own of the largest admitted type (Karpenter counts the nodes'
    capacity against `limits`, not the pods' requests)."""
    return (max_replicas + ROLLOUT_SURGE) * largest_vcpus


def node_pool_spec(args: KarpenterPoolArgs, node_class_name: Any) -> dict[str, Any]:
    """NodePool spec: the pool label (and a GPU pool's taint) on every node, a GPU (or CPU) limit,
    and disruption that removes empty nodes after `consolidate_after`, at most
    `disruption_budget_nodes` at once."""
    template_spec: dict[str, Any] = {
        "nodeClassRef": {"group": API_NODECLASS.split("/")[0], "kind": "EC2NodeClass", "name": node_class_name},
        "requirements": requirements(args),
    }
    if args.gpu:
        template_spec["taints"] = [dict(specs.GPU_TAINT)]
    template_spec["expireAfter"] = args.expire_after
    return {
        "template": {
            "metadata": {"labels": node_labels(args)},
            "spec": template_spec,
        },
        "limits": {specs.GPU_RESOURCE: args.gpu_limit} if args.gpu else {"cpu": args.cpu_limit},
        "disruption": {"consolidationPolicy": args.consolidation_policy,
                       "consolidateAfter": args.consolidate_after,
                       "budgets": [{"nodes": args.disruption_budget_nodes}]},
    }
