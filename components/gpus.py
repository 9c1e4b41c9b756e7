"""The EC2 GPU instance families the serving image can use: one list, shared by every node source.

The managed node group (components/args/node_pool.py validates `nodeInstanceTypes` with it),
the Karpenter pool (its `instance-family In` requirement admits IMAGE_GPU_FAMILIES) and the
cold-start budget (a family's node start) read the same choice, and the instance-family helpers,
from here. What an instance type has (vCPUs, memory, GPUs) comes from EC2 itself
(components/capacity.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

# The GPU instance families the serving image supports: our choice, not a cloud fact. x86-64
# NVIDIA families of Turing or newer (CUDA 13, below) that we run: g4dn (T4), g5 (A10G), g6 (L4),
# g6e (L40S), p4d (A100), p5 (H100). How many GPUs, vCPUs and how much memory a type of these
# families has is EC2's to say (aws.ec2.get_instance_type, components/capacity.py), never listed here.
SUPPORTED_GPU_FAMILIES: tuple[str, ...] = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")

# Instance families with a GPU the GPU image cannot use, and why. The image runs onnxruntime-gpu
# on NVIDIA's CUDA 13 wheels (serving/requirements-cuda.txt); CUDA 13 builds for compute
# capability 7.5 (Turing) and newer, so Volta and every older architecture are out.
UNSUPPORTED_GPU_FAMILIES: dict[str, str] = {
    "p3": "NVIDIA V100 (Volta, compute capability 7.0): CUDA 13 dropped Volta; the image's CUDA 13 wheels do not run on it",
    "p3dn": "NVIDIA V100 (Volta, compute capability 7.0): CUDA 13 dropped Volta; the image's CUDA 13 wheels do not run on it",
    "p2": "NVIDIA K80 (Kepler, compute capability 3.7): not supported by CUDA 13",
    "g3": "NVIDIA M60 (Maxwell, compute capability 5.2): not supported by CUDA 13",
    "g3s": "NVIDIA M60 (Maxwell, compute capability 5.2): not supported by CUDA 13",
    "g2": "NVIDIA GRID K520 (Kepler, compute capability 3.0): not supported by CUDA 13",
    "g4ad": "AMD Radeon Pro V520: not an NVIDIA GPU (no CUDA)",
    "g5g": "NVIDIA T4G on Graviton (arm64): the image is built for linux/amd64",
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

# GPU instance families the serving image can run (the one list the node group's validation
# uses). The Karpenter pool admits only these.
IMAGE_GPU_FAMILIES = tuple(sorted(SUPPORTED_GPU_FAMILIES))
