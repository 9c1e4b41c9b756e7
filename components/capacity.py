"""Does one replica fit a node of its pool, and does the rollout fit the pool? Is every node of an
architecture the image is built for? From EC2's figures.

A pod is scheduled against a node's *allocatable*: its capacity minus what the kubelet reserves,
the eviction threshold and (before Karpenter has seen a node of the type) the VM's overhead. A
request above it never schedules: the pod stays Pending until the rollout's wait runs out. So
every pool's (GPU or CPU) CPU, memory and GPU requests are checked against the allocatable of each
instance type its pool may launch, less a stated headroom for DaemonSet pods (VPC CNI,
kube-proxy, CSI node plugin, exporters), and the rollout (max replicas + surge) against the
managed pool's maximum. A GPU time-sliced into `gpuShare` replicas offers that many
`nvidia.com/gpu` per GPU, and its memory (EC2's figure per GPU) must hold every share's cap plus
its CUDA context (components/gpus.py), because time-slicing isolates no memory.

A pool has one architecture (one AMI; a Karpenter requirement): each type's EC2
`supported_architectures` must include it, and it must be one the image is built for
(components/platforms.py); it is `servedmodel:arch` when given, else the one the types share.

Where the figures come from:

- vCPUs, memory, GPUs and the network interfaces of each type: EC2 DescribeInstanceTypes, through
  the `aws.ec2.get_instance_type` invoke (it runs at preview too). Nothing here lists them.
- The reservation: the formula Karpenter schedules with and EKS's AMIs configure the kubelet
  with, aws/karpenter-provider-aws v1.14.1 pkg/providers/instancetype/types.go
  (`kubeReservedResources` L522-L552: CPU 6 % of the first core, 1 % of the second, 0.5 % of
  the third and fourth, 0.25 % of every further core; memory 11 MiB per pod + 255 MiB;
  `evictionThreshold` L554-L574: memory.available 100Mi; `ENILimitedPods` L485-L505: pods =
  ENIs of the default network card x (IPv4 addresses per ENI - 1) + 2; `memory` L356-L366: the VM
  overhead, VM_MEMORY_OVERHEAD_PERCENT default 0.075 in pkg/operator/options/options.go L43/L58).
  The same tiers and per-pod memory are in awslabs/amazon-eks-ami nodeadm/internal/kubelet/
  config.go (L274-L288, L410-L444) and Bottlerocket's schnauzer helpers (kube_cpu_helper,
  kube_reserve_memory). Managed node groups cap max pods at 110 below 30 vCPUs (EKS user guide,
  "How maxPods is determined"), so the ENI count used here reserves as much or more: the check is
  conservative for them.
- This formula reproduces Karpenter's own generated table (website/content/en/docs/reference/
  instance-types.md, "Resources" after overhead) for every type in tests/components/
  ec2_instance_types.json; tests/components/test_capacity.py holds it to that table.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_aws as aws

from . import gpus, platforms
from .args import Problem, ResourcesArgs, ServedModelArgs
from .specs import ROLLOUT_SURGE

# Karpenter's default --vm-memory-overhead-percent (the estimate before a node of the type registered).
VM_MEMORY_OVERHEAD_PERCENT = 0.075
# The kubelet's hard eviction threshold for memory.available (EKS AMIs and Bottlerocket).
EVICTION_MEMORY_MIB = 100
# Graviton reserves 64 MiB of memory for the CMA (Karpenter types.go L358-L361).
ARM64_CMA_MIB = 64
# CPU reservation tiers: (up to this many millicores, share of them reserved).
_CPU_TIERS = ((1000, 0.06), (2000, 0.01), (4000, 0.005), (math.inf, 0.0025))

_CPU = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m?)$")
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?$")
_BYTES = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu_millis(quantity: str) -> int:
    """`"3500m"` -> 3500, `"4"` -> 4000, `"0.5"` -> 500 (rounded up: a request never shrinks)."""
    m = _CPU.match(quantity)
    if not m:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    value = float(m.group(1))
    return math.ceil(value if m.group(2) else value * 1000)


def memory_mib(quantity: str) -> int:
    """`"13Gi"` -> 13312, `"8192Mi"` -> 8192, `"1G"` -> 954 (rounded up)."""
    m = _MEMORY.match(quantity)
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return math.ceil(float(m.group(1)) * _BYTES[m.group(2)] / 2**20)


@dataclass(frozen=True)
class InstanceType:
    """What EC2 says about one instance type (DescribeInstanceTypes, via aws.ec2.get_instance_type)."""

    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    """NVIDIA GPUs (0 when the type has none, or another maker's)."""
    gpu_memory_mib: int
    """Memory of one GPU (EC2's figure: 22888 MiB for an A10G or L4)."""
    architectures: tuple[str, ...]
    """EC2's names: x86_64, arm64 (i386 for a few old x86 types)."""
    default_card_enis: int
    """Network interfaces of the default network card (not the total over every card)."""
    ipv4_per_eni: int

    @classmethod
    def from_ec2(cls, name: str, result: Any) -> InstanceType:
        """From the invoke's result. `network_cards` is a set upstream (unordered): the default
        card is the one whose index is `default_network_card_index`, never the first listed;
        `maximum_network_interfaces` is the total over every card (60 on a p4d.24xlarge whose
        default card has 15), which would overstate the pods."""
        nvidia = [g for g in result.gpuses or [] if (g.manufacturer or "").upper() == "NVIDIA"]
        cards = {c.index: c.maximum_interfaces for c in result.network_cards or []}
        enis = cards.get(result.default_network_card_index or 0, result.maximum_network_interfaces)
        return cls(name=name, vcpus=result.default_vcpus, memory_mib=result.memory_size,
                   gpus=sum(g.count for g in nvidia), gpu_memory_mib=min((g.memory_size for g in nvidia), default=0),
                   architectures=tuple(result.supported_architectures or ()), default_card_enis=enis,
                   ipv4_per_eni=result.maximum_ipv4_addresses_per_interface)

    @property
    def max_pods(self) -> int:
        """ENI-limited pods (Karpenter ENILimitedPods; amazon-eks-ami CalcMaxPods)."""
        return self.default_card_enis * (self.ipv4_per_eni - 1) + 2

    @property
    def arm64(self) -> bool:
        return "arm64" in self.architectures


def kube_reserved_cpu_millis(vcpus: int) -> int:
    """The kubelet's CPU reservation, tier by tier, each tier truncated to whole millicores."""
    total, reserved, floor = vcpus * 1000, 0, 0
    for ceiling, share in _CPU_TIERS:
        if total <= floor:
            break
        reserved += int((min(total, ceiling) - floor) * share)
        floor = ceiling
    return reserved


def kube_reserved_memory_mib(pods: int) -> int:
    return 11 * pods + 255


@dataclass(frozen=True)
class Allocatable:
    cpu_millis: int
    memory_mib: int
    gpus: int
    kube_reserved_cpu_millis: int
    kube_reserved_memory_mib: int
    vm_overhead_mib: int


def allocatable(t: InstanceType) -> Allocatable:
    """What the scheduler may place on an empty node of type `t` (Karpenter's figure)."""
    memory = t.memory_mib - (ARM64_CMA_MIB if t.arm64 else 0)
    overhead = math.ceil(memory * VM_MEMORY_OVERHEAD_PERCENT)
    cpu_reserved = kube_reserved_cpu_millis(t.vcpus)
    mem_reserved = kube_reserved_memory_mib(t.max_pods)
    return Allocatable(cpu_millis=t.vcpus * 1000 - cpu_reserved,
                       memory_mib=memory - overhead - mem_reserved - EVICTION_MEMORY_MIB, gpus=t.gpus,
                       kube_reserved_cpu_millis=cpu_reserved, kube_reserved_memory_mib=mem_reserved,
                       vm_overhead_mib=overhead)


def gpu_slots(t: InstanceType, resources: ResourcesArgs) -> int:
    """`nvidia.com/gpu` a node of `t` advertises: its GPUs, each time-sliced into `gpu_share`."""
    return t.gpus * resources.gpu_share


def replicas_per_node(t: InstanceType, resources: ResourcesArgs, headroom_cpu: int, headroom_memory: int) -> int:
    """Whole replicas one node of `t` holds (pods cannot span nodes): the scarcest resource decides."""
    a = allocatable(t)
    fits = [(a.cpu_millis - headroom_cpu) // cpu_millis(resources.cpu),
            (a.memory_mib - headroom_memory) // memory_mib(resources.memory)]
    if resources.gpu > 0:
        fits.append(gpu_slots(t, resources) // resources.gpu)
    return max(0, min(fits))


def gpu_memory_problems(args: ServedModelArgs, types: Mapping[str, InstanceType],
                        gpu_memory_bytes: Optional[int]) -> list[Problem]:
    """A capped replica's memory against one GPU of each type: `gpu_share` caps, each with its
    CUDA context (gpus.CUDA_CONTEXT_MIB), must fit the GPU's memory as EC2 gives it (22888 MiB
    for an A10G or L4). Time-slicing isolates no memory: a share past it fails another model's
    allocations, so the check holds every model on a GPU sliced into N to 1/N of it."""
    res = args.resources
    if gpu_memory_bytes is None or res.gpu <= 0 or not args.has_pool:
        return []
    cap_mib = math.ceil(gpu_memory_bytes / gpus.MIB)
    share = res.gpu_share
    out: list[Problem] = []
    for name in args.pool_instance_types:
        t = types[name]
        if not t.gpu_memory_mib:
            continue  # no NVIDIA GPU: fit_problems says so
        need = share * (cap_mib + gpus.CUDA_CONTEXT_MIB)
        if need > t.gpu_memory_mib:
            most = t.gpu_memory_mib // share - gpus.CUDA_CONTEXT_MIB
            shown = args.resources.gpu_memory or f"{cap_mib}Mi (derived from the measured peak)"
            out.append(Problem("resources.gpu_memory", shown, (
                f"{share} share(s) per GPU (@{{resources.gpu_share}}) x ({cap_mib}Mi cap + {gpus.CUDA_CONTEXT_MIB}Mi "
                f"CUDA context) = {need}Mi does not fit one GPU of {name} ({t.gpu_memory_mib}Mi, EC2's figure); "
                + (f"cap each replica at {most}Mi or less, or lower @{{resources.gpu_share}}" if most > 0
                   else "lower @{resources.gpu_share}"))))
    return out


def pool_arch(args: ServedModelArgs, types: Mapping[str, InstanceType]) -> Optional[str]:
    """The architecture of the model's nodes: `arch` when given; else the one every pool type
    supports that the image is built for (amd64 first); None without a pool of its own (and no
    `arch`: any node of the cluster, the image being multi-arch) or when there is none."""
    res = args.resources
    if res.arch or not args.has_pool:
        return res.arch or None
    common = [a for a in platforms.image_arches(res.device)
              if all(a in platforms.ec2_arches(types[n].architectures) for n in args.pool_instance_types)]
    return common[0] if common else None


def architecture_problems(args: ServedModelArgs, types: Mapping[str, InstanceType]) -> list[Problem]:
    """Every pool type whose architecture (EC2's supported_architectures) the image or `arch`
    lacks, a pool whose types share no architecture, and an AMI type of another architecture."""
    res, pool = args.resources, args.node_pool
    if not args.has_pool or pool is None:
        return []
    image = platforms.image_arches(res.device, res.arch)
    out: list[Problem] = []
    for name in args.pool_instance_types:
        ec2 = types[name].architectures
        arches = platforms.ec2_arches(ec2)
        if not set(arches) & set(image):
            what = (f"the {'GPU' if res.gpu else 'CPU'} image is built for {', '.join(image)}"
                    + (" (@{resources.arch})" if res.arch else "")
                    + (" only (onnxruntime-gpu has no aarch64 wheels)" if res.gpu and not res.arch else ""))
            out.append(Problem("node_pool.instance_types", name, (
                f"EC2 gives {name} the architecture {', '.join(ec2) or 'none'} "
                f"({', '.join(arches) or 'no node architecture'}); {what}; choose types of "
                f"{' or '.join(image)}")))
    if out:
        return out
    arch = pool_arch(args, types)
    if arch is None:
        by_arch = {n: "/".join(platforms.ec2_arches(types[n].architectures)) for n in args.pool_instance_types}
        out.append(Problem("node_pool.instance_types", list(args.pool_instance_types), (
            f"the types share no architecture ({', '.join(f'{n}: {a}' for n, a in by_arch.items())}, from EC2): a "
            "pool runs one AMI of one architecture; list types of one architecture, or one model per architecture")))
    elif pool.ami_type and platforms.ami_arch(pool.ami_type) != arch:
        out.append(Problem("node_pool.ami_type", pool.ami_type, (
            f"runs {platforms.ami_arch(pool.ami_type)} nodes, but the pool's types are {arch} (EC2's "
            "supported_architectures); leave it empty for the Bottlerocket AMI of the pool's architecture")))
    return out


def fit_problems(args: ServedModelArgs, types: Mapping[str, InstanceType],
                 gpu_memory_bytes: Optional[int] = None) -> list[Problem]:
    """Every way one replica, or the rollout at max replicas, does not fit the pool (a GPU pool or a
    CPU pool of the model's own). `types` holds EC2's figures for each of the pool's instance
    types; with `gpu_memory_bytes` (a replica's GPU memory cap) its shares must fit a GPU too."""
    pool, res = args.node_pool, args.resources
    if pool is None or not args.has_pool:
        return []
    cpu_room, mem_room = cpu_millis(pool.daemon_set_cpu), memory_mib(pool.daemon_set_memory)
    out: list[Problem] = []
    for name in args.pool_instance_types:
        t = types[name]
        a = allocatable(t)
        if res.gpu == 0 and t.gpus:
            out.append(Problem("node_pool.instance_types", name, (
                f"EC2 gives {name} {t.gpus} NVIDIA GPU(s): a CPU model (@{{resources.gpu}} 0) on it pays for GPUs it "
                "never uses; choose CPU types (c7g, m7g, c6i...), or set @{resources.gpu}")))
        if res.gpu > 0 and gpu_slots(t, res) < res.gpu:
            what = "no NVIDIA GPU" if not t.gpus else f"{t.gpus} NVIDIA GPU(s)"
            out.append(Problem("resources.gpu", res.gpu, f"does not fit {name}: EC2 gives it {what}; "
                                                         "choose a larger type in @{node_pool.instance_types}"))
        cpu_left = a.cpu_millis - cpu_room
        if cpu_millis(res.cpu) > cpu_left:
            out.append(Problem("resources.cpu", res.cpu, (
                f"does not fit {name}: allocatable {a.cpu_millis}m ({t.vcpus} vCPUs - {a.kube_reserved_cpu_millis}m "
                f"kubelet reservation) - {cpu_room}m DaemonSet headroom (@{{node_pool.daemon_set_cpu}}) = {cpu_left}m; "
                f"request at most {cpu_left}m, or choose a larger type")))
        mem_left = a.memory_mib - mem_room
        if memory_mib(res.memory) > mem_left:
            out.append(Problem("resources.memory", res.memory, (
                f"does not fit {name}: allocatable {a.memory_mib}Mi ({t.memory_mib}Mi - {a.vm_overhead_mib}Mi VM "
                f"overhead - {a.kube_reserved_memory_mib}Mi kubelet reservation for {t.max_pods} pods - "
                f"{EVICTION_MEMORY_MIB}Mi eviction threshold) - {mem_room}Mi DaemonSet headroom "
                f"(@{{node_pool.daemon_set_memory}}) = {mem_left}Mi; request at most {mem_left}Mi, "
                "or choose a larger type")))
    out += gpu_memory_problems(args, types, gpu_memory_bytes)
    if out or args.elastic.karpenter:
        # With Karpenter the node group's max_size does not bound the pool (its limits do).
        return out
    smallest = min(args.pool_instance_types, key=lambda n: replicas_per_node(types[n], res, cpu_room, mem_room))
    per_node = replicas_per_node(types[smallest], res, cpu_room, mem_room)
    need = args.autoscaling.max_replicas + ROLLOUT_SURGE
    if pool.max_size * per_node < need:
        out.append(Problem("node_pool.max_size", pool.max_size, (
            f"{pool.max_size} node(s) of {smallest} fit {pool.max_size * per_node} replica(s) ({per_node} per node); "
            f"@{{autoscaling.max_replicas}} ({args.autoscaling.max_replicas}) + {ROLLOUT_SURGE} rollout surge "
            f"(maxUnavailable 0) need {need}; raise @{{node_pool.max_size}} to at least {-(-need // per_node)}")))
    return out


def describe(instance_types: Sequence[str], parent: Optional[pulumi.Resource] = None) -> dict[str, InstanceType]:
    """EC2's figures for each type, through the aws.ec2.get_instance_type invoke. The inputs are
    plain names, so the invoke runs (and the check holds) at preview as well as at update."""
    opts = pulumi.InvokeOptions(parent=parent) if parent is not None else None
    return {name: InstanceType.from_ec2(name, aws.ec2.get_instance_type(instance_type=name, opts=opts))
            for name in dict.fromkeys(instance_types)}


def pool_types(args: ServedModelArgs, parent: Optional[pulumi.Resource] = None) -> dict[str, InstanceType]:
    """EC2's figures of the model's pool types ({} without a pool of its own)."""
    return describe(args.pool_instance_types, parent) if args.has_pool else {}


def check(args: ServedModelArgs, types: Mapping[str, InstanceType]) -> list[Problem]:
    """architecture_problems and fit_problems (with the configured GPU memory cap, if any) over
    EC2's figures of the pool's types ([] when the model has no pool of its own)."""
    return architecture_problems(args, types) + fit_problems(args, types, args.resources.gpu_memory_bytes)
