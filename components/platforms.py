"""Which CPU architectures the serving image is built for, and what a node pool of each runs.

One statement of the platform facts that the args (`servedmodel:arch`, `nodeAmiType`), the image
build (docker-build `platforms`), the node pools (EKS AMI types, Karpenter's `kubernetes.io/arch`
requirement) and the pods (`kubernetes.io/arch` node selector) share. What an instance type's
processor is comes from EC2 (`supported_architectures`, components/capacity.py), never from a
list of families here.
"""
from __future__ import annotations

import platform as _host
from typing import Optional

# Kubernetes' (and Docker's) names of the architectures the image is built for.
ARCHES: tuple[str, ...] = ("amd64", "arm64")
# EC2's names (DescribeInstanceTypes ProcessorInfo.SupportedArchitectures) -> Kubernetes'. EC2
# also says i386 (some old x86 types, always beside x86_64) and x86_64_mac/arm64_mac (Mac
# hosts, never EKS nodes): neither runs a node of ours, so neither maps.
EC2_ARCHES: dict[str, str] = {"x86_64": "amd64", "arm64": "arm64"}
# The node label the kubelet sets from its own GOARCH (kubernetes/api core/v1 well_known_labels.go
# LabelArchStable): what the pods select and a Karpenter requirement names.
ARCH_LABEL = "kubernetes.io/arch"

# The architectures each image variant is built for. The CPU image's runtime (onnxruntime, numpy)
# has manylinux aarch64 wheels at the pinned versions (serving/requirements.txt), so it is built for
# both. The GPU image's onnxruntime-gpu publishes x86_64 wheels only (no manylinux aarch64 wheel
# of onnxruntime-gpu 1.31.1 on the package index; serving/requirements-cuda.txt), so it is amd64 only
# and a Graviton GPU type (g5g) cannot run it.
IMAGE_ARCHES: dict[str, tuple[str, ...]] = {"cpu": ARCHES, "cuda": ("amd64",)}

# EKS managed node group AMI types per (device, arch), Bottlerocket first (the default of a
# pool). Names from the EKS API reference (Nodegroup amiType).
AMI_TYPES_FOR: dict[tuple[str, str], tuple[str, ...]] = {
    ("cuda", "amd64"): ("BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA"),
    ("cpu", "amd64"): ("BOTTLEROCKET_x86_64", "AL2023_x86_64_STANDARD"),
    ("cpu", "arm64"): ("BOTTLEROCKET_ARM_64", "AL2023_ARM_64_STANDARD"),
}
AMI_TYPES: tuple[str, ...] = tuple(t for types in AMI_TYPES_FOR.values() for t in types)


def platform(arch: str) -> str:
    """`arm64` -> `linux/arm64` (docker-build's and BuildKit's platform names)."""
    return f"linux/{arch}"


def image_arches(device: str, arch: str = "") -> tuple[str, ...]:
    """The architectures an image is built for: the one `arch` asks for, or every one the
    device's runtime has wheels for (a multi-arch image: one index, one digest)."""
    return (arch,) if arch else IMAGE_ARCHES[device]


def image_platforms(device: str, arch: str = "") -> tuple[str, ...]:
    return tuple(platform(a) for a in image_arches(device, arch))


def host_arch(machine: Optional[str] = None) -> str:
    """The architecture of the machine running the program (what the local engine builds)."""
    m = (machine or _host.machine()).lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def ec2_arches(supported: tuple[str, ...]) -> tuple[str, ...]:
    """EC2's supported architectures of a type, in Kubernetes' names (the ones a node can be)."""
    return tuple(dict.fromkeys(EC2_ARCHES[a] for a in supported if a in EC2_ARCHES))


def ami_arch(ami_type: str) -> str:
    """The architecture an EKS AMI type runs on."""
    return next(arch for (_, arch), types in AMI_TYPES_FOR.items() if ami_type in types)


def ami_device(ami_type: str) -> str:
    return next(device for (device, _), types in AMI_TYPES_FOR.items() if ami_type in types)


def default_ami_type(device: str, arch: str) -> str:
    """The pool's AMI type when none is given: Bottlerocket for the device and architecture."""
    return AMI_TYPES_FOR[(device, arch)][0]
