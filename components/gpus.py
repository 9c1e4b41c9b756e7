"""The EC2 GPU instance families the serving image can use, and how a GPU is shared.

The managed node group (components/args/node_pool.py validates `nodeInstanceTypes` with it),
the Karpenter pool (its `instance-family In` requirement admits IMAGE_GPU_FAMILIES) and the
cold-start budget (a family's node start) read the same choice, and the instance-family helpers,
from here. What an instance type has (vCPUs, memory, GPUs, its architecture) comes from EC2
itself (components/capacity.py): a Graviton GPU type (g5g) is refused because EC2 says arm64 and
the GPU image is amd64 only (components/platforms.py), not because a list here names it.

GPU sharing (`servedmodel:gpuShare`): the NVIDIA device plugin time-slices each GPU of a node into
N replicas of `nvidia.com/gpu` and GPU feature discovery labels the node with N; the names and
values are the plugin's, read at NVIDIA/k8s-device-plugin v0.20.0 (docs/deploy.md, "Sharing a
GPU").
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

# The GPU instance families the serving image supports: our choice, not a cloud fact. x86-64
# (EC2 says so: components/capacity.py checks each type's architecture) NVIDIA families of Turing
# or newer (CUDA 13, below) that we run: g4dn (T4), g5 (A10G), g6 (L4),
# g6e (L40S), p4d (A100), p5 (H100). How many GPUs, vCPUs and how much memory a type of these
# families has is EC2's to say (aws.ec2.get_instance_type, components/capacity.py), never listed here.
SUPPORTED_GPU_FAMILIES: tuple[str, ...] = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")
# A GPU model's pool when the stack lists no instance types.
DEFAULT_GPU_INSTANCE_TYPES: tuple[str, ...] = ("g5.xlarge",)

# Instance families with a GPU the GPU image cannot use, and why. The image runs onnxruntime-gpu
# on NVIDIA's CUDA 13 wheels (serving/requirements-cuda.txt); CUDA 13 builds for compute
# capability 7.5 (Turing) and newer, so Volta and every older architecture are out.
UNSUPPORTED_GPU_FAMILIES: dict[str, str] = {
    "p3": "NVIDIA V100 (Volta, compute capability 7.0): CUDA 13 dropped Volta; the image's CUDA 13 wheels do not "
          "run on it",
    "p3dn": "NVIDIA V100 (Volta, compute capability 7.0): CUDA 13 dropped Volta; the image's CUDA 13 wheels do not "
            "run on it",
    "p2": "NVIDIA K80 (Kepler, compute capability 3.7): not supported by CUDA 13",
    "g3": "NVIDIA M60 (Maxwell, compute capability 5.2): not supported by CUDA 13",
    "g3s": "NVIDIA M60 (Maxwell, compute capability 5.2): not supported by CUDA 13",
    "g2": "NVIDIA GRID K520 (Kepler, compute capability 3.0): not supported by CUDA 13",
    "g4ad": "AMD Radeon Pro V520: not an NVIDIA GPU (no CUDA)",
}


def instance_family(instance_type: str) -> str:
    """`p3.2xlarge` -> `p3`."""
    return instance_type.split(".", 1)[0]


def instance_families(instance_types: Sequence[str]) -> tuple[str, ...]:
    """`("g5.xlarge", "g5.2xlarge", "g6.xlarge")` -> `("g5", "g6")`."""
    return tuple(sorted({instance_family(t) for t in instance_types}))


def unsupported_reason(instance_type: str) -> Optional[str]:
    """Why the image cannot run on this instance type, or None when its family is not refused."""
    return UNSUPPORTED_GPU_FAMILIES.get(instance_family(instance_type))


def unsupported_families() -> tuple[str, ...]:
    """The refused families, sorted (e.g. for a Karpenter `instance-family NotIn` requirement)."""
    return tuple(sorted(UNSUPPORTED_GPU_FAMILIES))


assert not set(SUPPORTED_GPU_FAMILIES) & set(UNSUPPORTED_GPU_FAMILIES), "a refused family is listed as usable"

# GPU instance families the serving image can run. The Karpenter pool admits only these (it
# launches any size of a family it admits); a managed pool's types are judged by EC2's figures
# (an NVIDIA GPU, an amd64 processor) and UNSUPPORTED_GPU_FAMILIES.
IMAGE_GPU_FAMILIES = tuple(sorted(SUPPORTED_GPU_FAMILIES))


# ---- sharing a GPU by time-slicing --------------------------------------------------------------

# NVIDIA/k8s-device-plugin v0.20.0 api/config/v1/sharing.go (SharingStrategyTimeSlicing).
SHARING_STRATEGY = "time-slicing"
# The labels GPU feature discovery writes for a shared resource (internal/lm/resource.go
# baseLabeler: `<resource>.replicas` and `<resource>.sharing-strategy`; README.md "Catalog of
# Labels"). A shared pool carries them from its first node, so the pods' selector is met before
# GFD runs and Karpenter (which reads a NodePool's template labels) knows the pool provides them.
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
# The label the plugin's config manager reads to pick a named config from its ConfigMap
# (cmd/config-manager/main.go DefaultConfigLabel): the AL2023 pools name `time-slicing-<N>`.
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"

# Every process on a GPU holds a CUDA context and the cuDNN/cuBLAS handles outside onnxruntime's
# arena (the arena is what SERVEDMODEL_GPU_MEM_LIMIT caps). An estimate, not measured here (no
# GPU): a few hundred MiB with CUDA's lazy module loading; counted per replica on a shared GPU.
CUDA_CONTEXT_MIB = 512
# The default cap from the build's measured peak (models/startup.py `peak_memory_bytes`, the CPU
# provider's resident peak of load + warm-up): this much above it, rounded up to whole steps and
# never below the floor, for what the CUDA provider's arena allocates beyond the CPU figure
# (cuDNN workspaces, its own rounding).
GPU_MEMORY_HEADROOM = 1.5
GPU_MEMORY_STEP_MIB = 64
GPU_MEMORY_FLOOR_MIB = 256
MIB = 2**20


def time_slicing_config_name(replicas: int) -> str:
    """The device plugin config (a key of its ConfigMap) an AL2023 shared pool names."""
    return f"{SHARING_STRATEGY}-{replicas}"


def shared_node_labels(replicas: int) -> dict[str, str]:
    """The labels of a node whose GPUs are each time-sliced into `replicas`."""
    return {REPLICAS_LABEL: str(replicas), SHARING_STRATEGY_LABEL: SHARING_STRATEGY,
            DEVICE_PLUGIN_CONFIG_LABEL: time_slicing_config_name(replicas)}


def shared_selector(replicas: int) -> dict[str, str]:
    """What a shared replica's pod selects: any node time-sliced into the same N, of any pool
    (another model's, another stack's): that is how small models end up on one GPU."""
    return {REPLICAS_LABEL: str(replicas), SHARING_STRATEGY_LABEL: SHARING_STRATEGY}


def bottlerocket_time_slicing_settings(replicas: int) -> str:
    """Bottlerocket user data (TOML) that makes its own NVIDIA device plugin time-slice every GPU
    into `replicas` (bottlerocket-os/bottlerocket-core-kit
    packages/nvidia-k8s-device-plugin/nvidia-k8s-device-plugin-conf.in: the settings
    `kubelet-device-plugins.nvidia.device-sharing-strategy` and `.time-slicing.*`; its
    rename-by-default defaults to true, which would advertise `nvidia.com/gpu.shared`, a resource
    Karpenter cannot provision for, so it is stated false here). EKS and Karpenter merge it into
    the settings they write themselves."""
    return ("[settings.kubelet-device-plugins.nvidia]\n"
            f'device-sharing-strategy = "{SHARING_STRATEGY}"\n'
            "\n"
            "[settings.kubelet-device-plugins.nvidia.time-slicing]\n"
            f"replicas = {replicas}\n"
            "rename-by-default = false\n"
            "fail-requests-greater-than-one = true\n")


def default_gpu_memory_bytes(peak_memory_bytes: int) -> int:
    """The cap a shared replica gets when the stack names none: the measured peak with headroom."""
    mib = max(GPU_MEMORY_FLOOR_MIB, math.ceil(peak_memory_bytes * GPU_MEMORY_HEADROOM / MIB))
    return math.ceil(mib / GPU_MEMORY_STEP_MIB) * GPU_MEMORY_STEP_MIB * MIB
