"""ResourcesArgs: what one replica gets (requests == limits, a GPU or a share of one, the CPU
architecture) and its scheduling priority."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..platforms import ARCHES, IMAGE_ARCHES
from .checking import ArgsGroup, Checker, integer, matching, one_of
from .setting import setting

_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_IS_QUANTITY = matching(_QUANTITY, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi")
_BYTES = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


def _memory_or_empty(value: object) -> Optional[str]:
    if value == "":
        return None
    m = _QUANTITY.match(value) if isinstance(value, str) else None
    if not m or m.group(3) == "m" or quantity_bytes(m.string) < 2**20:
        return "a memory quantity of 1Mi or more such as 4Gi or 1536Mi, or empty for the default"
    return None


def quantity_bytes(quantity: str) -> int:
    """`"4Gi"` -> 4294967296 (whole bytes, rounded down)."""
    m = _QUANTITY.match(quantity)
    if not m or m.group(3) == "m":
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(m.group(1)) * _BYTES[m.group(3)])


@dataclass(frozen=True)
class ResourcesArgs(ArgsGroup):
    """What one replica gets (requests == limits) and its scheduling priority."""

    GROUP = "resources"
    STACK_GROUP = "resources"

    cpu: str = setting("1", "CPU per replica (Kubernetes quantity), used as request and limit.", check=_IS_QUANTITY)
    memory: str = setting("1Gi", "Memory per replica (Kubernetes quantity), used as request and limit.",
                          check=_IS_QUANTITY)
    gpu: int = setting(0, "NVIDIA GPUs per replica (requests == limits). 0 serves on CPU; more than 0 needs the "
                          "kubernetes target and adds a GPU node pool.", check=integer(0))
    priority: int = setting(0, "When above 0, a PriorityClass with this value is created and used by the model's "
                               "pods.", check=integer(0))
    arch: str = setting(
        "", "CPU architecture of the replicas - amd64 or arm64 (Graviton). Empty: the architecture EC2 gives "
            "@{node_pool.instance_types} (supported_architectures), and without a node pool of the model's own "
            "any node of the cluster. On the kubernetes target the image is built for this architecture only, or "
            "for both (one multi-arch image) when empty; GPU images are amd64 only (docs/image.md).",
        check=one_of(("",) + ARCHES))
    gpu_share: int = setting(
        1, "Replicas per GPU: the model's GPU pool time-slices each GPU into this many (the NVIDIA device plugin's "
           "time-slicing, docs/deploy.md \"Sharing a GPU\"); 1 = whole GPUs. Above 1 a replica asks one share "
           "(@{resources.gpu} 1) and lands on any node sliced into the same number, of this model's pool or "
           "another's; time-slicing isolates no memory, so each replica is capped by @{resources.gpu_memory}.",
        check=integer(1))
    gpu_memory: str = setting(
        "", "GPU memory one replica's server may hold (a quantity such as 4Gi), passed as "
            "SERVEDMODEL_GPU_MEM_LIMIT (bytes) to onnxruntime's CUDA provider. Empty: with @{resources.gpu_share} "
            "above 1, the model's measured peak with headroom (components/gpus.py), otherwise no cap. "
            "@{resources.gpu_share} caps plus the CUDA context of each must fit the GPU's memory as EC2 gives it.",
        check=_memory_or_empty)

    def rules(self, c: Checker) -> None:
        if c.ok("gpu", "gpu_share") and self.gpu_share > 1 and self.gpu != 1:
            c.bad("gpu_share", f"a shared GPU is handed out one share per replica: needs @{{resources.gpu}} 1 "
                               f"(is {self.gpu}); use 1 for whole GPUs")
        if c.ok("gpu", "gpu_memory") and self.gpu_memory and self.gpu == 0:
            c.bad("gpu_memory", "caps the CUDA provider's memory: needs @{resources.gpu} > 0 (leave it empty on CPU)")
        if c.ok("gpu", "arch") and self.gpu > 0 and self.arch and self.arch not in IMAGE_ARCHES["cuda"]:
            c.bad("arch", f"the GPU image is built for {', '.join(IMAGE_ARCHES['cuda'])} only (onnxruntime-gpu has "
                          "no aarch64 wheels); leave it empty or amd64 with @{resources.gpu} > 0")

    @property
    def gpu_memory_bytes(self) -> Optional[int]:
        """The configured cap in bytes; None when not set (derived, or no cap)."""
        return quantity_bytes(self.gpu_memory) if self.gpu_memory else None

    @property
    def shared(self) -> bool:
        """Replicas get a time-sliced share of a GPU."""
        return self.gpu > 0 and self.gpu_share > 1

    @property
    def device(self) -> str:
        """The runtime the image packages: cuda when the replicas get GPUs."""
        return "cuda" if self.gpu > 0 else "cpu"
