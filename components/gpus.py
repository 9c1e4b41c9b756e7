"""The EC2 GPU instance types the serving image can use: one list, shared by every node source.

The managed node group (components/args/node_pool.py validates `nodeInstanceTypes` with it), the
Karpenter pool (its `instance-family In` requirement admits IMAGE_GPU_FAMILIES) and the cold-start
budget (a family's node start) read the same facts, and the instance-family helpers, from here.
"""
from __future__ import annotations

from typing import Optional, Sequence

# NVIDIA GPUs per EC2 instance type, for the node pool capacity check. A type not listed is
# rejected rather than guessed: a wrong count would let a rollout wait forever for a GPU.
GPUS_PER_INSTANCE: dict[str, int] = {
    "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1,
    "g4dn.16xlarge": 1, "g4dn.12xlarge": 4, "g4dn.metal": 8,
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    "g6e.xlarge": 1, "g6e.2xlarge": 1, "g6e.4xlarge": 1, "g6e.8xlarge": 1,
    "g6e.16xlarge": 1, "g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
    "p4d.24xlarge": 8, "p5.48xlarge": 8,
}

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


assert not [t for t in GPUS_PER_INSTANCE if unsupported_reason(t)], "a refused family is listed as usable"

# GPU instance families the serving image can run: those of the known instance types (the one
# list the node group's validation uses). The Karpenter pool admits only these.
IMAGE_GPU_FAMILIES = instance_families(tuple(GPUS_PER_INSTANCE))
