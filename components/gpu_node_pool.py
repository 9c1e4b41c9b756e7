"""GpuNodePool: an EKS managed node group of one model on an existing cluster: NVIDIA GPU nodes
(whole or time-sliced), or CPU nodes of one architecture (e.g. Graviton) for a CPU model that
lists instance types. The name and type token predate CPU pools and stay: the token is part of
every child's URN, and renaming it would replace live node groups."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from . import gpus, specs


@dataclass
class GpuNodePoolArgs:
    cluster_name: pulumi.Input[str]
    """Name of the existing EKS cluster the nodes join (another resource's output too: an
    `aws.eks.Cluster`'s name). Required."""
    pool_label: str
    """Value of the `servedmodel.io/node-pool` label the model's pods select. Required."""
    subnet_ids: Optional[pulumi.Input[Sequence[pulumi.Input[str]]]] = None
    """Subnets of the nodes; None: the cluster's private subnets (those tagged
    kubernetes.io/role/internal-elb=1). Default None."""
    instance_types: Sequence[str] = ("g5.xlarge",)
    """Instance types (GPU types for a GPU pool). Default ("g5.xlarge",)."""
    ami_type: str = "BOTTLEROCKET_x86_64_NVIDIA"
    """EKS AMI type of the pool's device and architecture (components/platforms.py AMI_TYPES_FOR);
    the Bottlerocket NVIDIA variant ships the device plugin. Default BOTTLEROCKET_x86_64_NVIDIA."""
    gpu: bool = True
    """NVIDIA GPU nodes, tainted for GPU pods; False: a CPU pool, untainted. Default True."""
    gpu_share: int = 1
    """Replicas per GPU: above 1 the nodes carry the time-slicing labels (components/gpus.py) and,
    on Bottlerocket, the device plugin's time-slicing settings in the launch template's user data.
    Default 1."""
    min_size: int = 1
    """Minimum nodes. Default 1."""
    desired_size: int = 1
    """Initial desired nodes (ignored after creation: the cluster autoscaler owns it). Default 1."""
    max_size: int = 2
    """Maximum nodes. Default 2."""
    protect: bool = False
    """Protect the node group from deletion (prod). Default False."""
    timeouts: Optional[pulumi.CustomTimeouts] = None
    """customTimeouts of the node group (components/timeouts.py sizes them). Default None."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """More node labels. Default {}."""


# The tag EKS and the AWS Load Balancer Controller use to mark a cluster's private subnets.
PRIVATE_SUBNET_TAG = "kubernetes.io/role/internal-elb"


def private_cluster_subnets(cluster_name: pulumi.Input[str], parent: pulumi.Resource) -> pulumi.Output[list[str]]:
    """The cluster's subnets that are tagged private (kubernetes.io/role/internal-elb=1).

    GPU nodes get no public address and no route in from the internet. The tag is the
    platform's own statement that a subnet is private (a subnet that merely does not map public
    IPs on launch may still route to an internet gateway, and nodes without NAT there could not
    pull images). None tagged stops the program with what to do instead.
    """
    invoke = pulumi.InvokeOutputOptions(parent=parent)
    cluster = aws.eks.get_cluster_output(name=cluster_name, opts=invoke)
    # The output form resolves the Outputs inside its filters; pulumi-aws annotates them plain.
    found = aws.ec2.get_subnets_output(filters=[
        {"name": "subnet-id", "values": cluster.vpc_config.subnet_ids},  # pyright: ignore[reportArgumentType]
        {"name": f"tag:{PRIVATE_SUBNET_TAG}", "values": ["1"]},
    ], opts=invoke)
    # The message names the cluster: resolved with the ids (it may be another resource's output).
    return pulumi.Output.all(cluster_name, found.ids).apply(lambda v: require_private_subnets(v[0], v[1]))


def require_private_subnets(cluster_name: str, ids: Sequence[str]) -> list[str]:
    """The found private subnets, sorted; none stops the program with what to do instead."""
    if not ids:
        raise pulumi.RunError(
            f"cluster {cluster_name!r} has no subnet tagged {PRIVATE_SUBNET_TAG}=1 for the GPU nodes: tag its "
            "private subnets, or list them in servedmodel:nodeSubnetIds (NodePoolArgs.subnet_ids)")
    return sorted(ids)


# Instance metadata for the nodes: IMDSv2 only, and a response hop limit of 1, so a pod (one hop
# further, behind its network namespace) cannot read the node role's credentials from IMDS. A
# managed node group without a launch template gets hop limit 2 (EKS user guide,
# launch-templates.adoc: "this value is automatically set for the node group in the default launch
# template"). Host-network pods (aws-node, kube-proxy) still reach IMDS; our pods need no AWS
# credentials of the node's.
METADATA_OPTIONS: aws.ec2.LaunchTemplateMetadataOptionsArgsDict = {
    "http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1}


class GpuNodePool(pulumi.ComponentResource):
    """Managed nodes of one model: GPU nodes tainted `nvidia.com/gpu=true:NoSchedule` so only GPU
    pods land there, or untainted CPU nodes. Launched from a template that holds only the
    instance metadata options (METADATA_OPTIONS) and, on a Bottlerocket pool of shared GPUs, the
    device plugin's time-slicing settings as user data (TOML that EKS merges with its own): the
    AMI type, instance types, subnets and role stay on the node group, as EKS requires of a
    template without a custom AMI (EKS user guide, launch-templates.adoc). Adding the template to
    a group created without one replaces the group (its launch_template id is ForceNew;
    docs/deploy.md says how to move a protected group); so does a new AMI type or instance types
    (a change of architecture).

    Outputs: `node_group_name`, `pool_label` (the pool's own label), `node_labels` (every label
    the group gives its nodes, read back from it), `role_arn`.
    """

    node_group_name: pulumi.Output[str]
    pool_label: pulumi.Output[str]
    node_labels: pulumi.Output[dict]
    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:GpuNodePool", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(f"{name}-role", assume_role_policy=specs.node_assume_role_policy(), opts=child)
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self)).partition
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-{policy}", role=role.name,
                policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", policy), opts=child)
            for policy in specs.NODE_POLICIES
        ]
        subnet_ids = args.subnet_ids
        if subnet_ids is None:
            subnet_ids = private_cluster_subnets(args.cluster_name, self)
        shared = args.gpu and args.gpu_share > 1
        user_data = None
        if shared and args.ami_type.startswith("BOTTLEROCKET"):
            user_data = base64.b64encode(gpus.bottlerocket_time_slicing_settings(args.gpu_share).encode()).decode()
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt", description=f"servedmodel {'GPU' if args.gpu else 'CPU'} pool {args.pool_label}: IMDSv2, "
                                      "hop limit 1" + (f"; GPUs time-sliced x{args.gpu_share}" if shared else ""),
            metadata_options=METADATA_OPTIONS, user_data=user_data, opts=child)
        group = aws.eks.NodeGroup(
            f"{name}-nodes",
            cluster_name=args.cluster_name,
            # The template's version number, never "$Latest": EKS records the number and the
            # provider would diff "$Latest" against it on every preview.
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            node_role_arn=role.arn,
            subnet_ids=subnet_ids,
            ami_type=args.ami_type,
            instance_types=list(args.instance_types),
            capacity_type="ON_DEMAND",
            scaling_config={"min_size": args.min_size, "desired_size": args.desired_size, "max_size": args.max_size},
            update_config={"max_unavailable": 1},
            labels={specs.POOL_LABEL: args.pool_label, **(gpus.shared_node_labels(args.gpu_share) if shared else {}),
                    **args.extra_labels},
            taints=[{"key": specs.GPU_TAINT["key"], "value": specs.GPU_TAINT["value"], "effect": "NO_SCHEDULE"}]
            if args.gpu else None,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=attachments, protect=args.protect, custom_timeouts=args.timeouts,
                # The cluster autoscaler moves desiredSize; a preview must not fight it.
                ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.node_group_name = group.node_group_name
        # Read back from the node group, so whatever selects the label (the Deployment's
        # nodeSelector) depends on the group: the engine creates the pods' capacity first.
        self.pool_label = group.labels.apply(lambda labels: (labels or {}).get(specs.POOL_LABEL, args.pool_label))
        self.node_labels = group.labels.apply(lambda labels: dict(labels or {}))
        self.role_arn = role.arn
        self.register_outputs({"node_group_name": self.node_group_name, "pool_label": self.pool_label,
                               "node_labels": self.node_labels, "role_arn": self.role_arn})
