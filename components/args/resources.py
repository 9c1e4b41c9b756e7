"""ResourcesArgs: what one replica gets (requests == limits) and its scheduling priority."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .checking import ArgsGroup, integer, matching
from .setting import setting

_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_IS_QUANTITY = matching(_QUANTITY, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi")


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

    @property
    def device(self) -> str:
        """The runtime the image packages: cuda when the replicas get GPUs."""
        return "cuda" if self.gpu > 0 else "cpu"
