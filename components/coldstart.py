"""The cold-start budget of one model: what the first request after idle waits for.

    node (a GPU node is provisioned and joins)  ->  pull (the image reaches the node)
    ->  start (the server loads and warms the model, /v2/health/ready answers)

Pure functions over plain values (tested without mocks). Each part says where its figure
comes from (docs/deploy.md, "Cold-start budget"):
- nodeSeconds: a documented table per GPU instance family (estimates of EC2 launch +
  Bottlerocket boot + kubelet join + the NVIDIA device plugin advertising the GPU), or the
  stack's `servedmodel:nodeProvisionSeconds`; 0 when the replica needs no new node.
- pullSeconds: the image's compressed layer bytes / the configured pull bandwidth. The runtime
  layers' compressed bytes come from image_layers.json (written by `python bench/image.py
  --layers`, which says there whether a figure is measured or derived); the model layer's
  compressed bytes are computed by the build from the real model file (BuildResult.sizes).
- startSeconds: a fixed process start per device (interpreter + imports, plus the CUDA context
  on GPU: estimates) + model load + warm-up as the build measured them (models/startup.py), and
  for an encrypted model its opening (decryptSeconds: the AES-256-GCM decryption the build
  measured, `startup["decrypt_seconds"]`, plus with kms one unwrap through the pod's identity,
  KMS_UNWRAP_SECONDS). On
  a GPU time-sliced into N shares (`servedmodel:gpuShare`) the warm-up's kernels take turns with
  up to N - 1 other servers' (the device plugin's time-slicing gives each context the whole GPU
  in turn): the warm-up is counted N times.
The startup probe, the Deployment's progress deadline (and the engine's customTimeouts) and the
KEDA HTTP interceptor's wait are all derived from this budget, never hand-set:
components/timeouts.py takes its start, pull and node parts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, TypedDict

IMAGE_LAYERS_FILE = Path(__file__).resolve().parent / "image_layers.json"

# Seconds from "a pod is pending for want of a GPU node" to "the node is Ready with
# nvidia.com/gpu allocatable", per instance family: estimates, not measured here (no cloud).
# Larger p-family hosts take longer to launch and to pass their status checks.
NODE_SECONDS: dict[str, float] = {
    "g4dn": 120.0, "g5": 110.0, "g6": 110.0, "g6e": 120.0, "gr6": 110.0,
    "p4d": 240.0, "p4de": 240.0, "p5": 300.0, "p5e": 300.0,
}
# A CPU node of the model's own pool (any family: no GPU driver, no device plugin to wait for):
# EC2 launch + Bottlerocket boot + kubelet join. An estimate, not measured here (no cloud).
CPU_NODE_SECONDS = 75.0
# A managed node group scales through the cluster autoscaler, which first notices the pending
# pod (its scan interval) and then asks the Auto Scaling group: later than Karpenter.
MANAGED_EXTRA_SECONDS = 30.0
# Server process start before the model load: interpreter + imports (the CPU image's median
# docker run -> ready for mnist-mlp is 0.29 s on 2 cores, docs/benchmarks.md, so 2 s is
# generous), plus the CUDA context and cuDNN/cuBLAS loading on GPU (an estimate).
PROCESS_SECONDS: dict[str, float] = {"cpu": 2.0, "cuda": 15.0}
# A kms-encrypted model's data key is unwrapped once at start: the pod's credentials from the
# EKS Pod Identity agent on the node, then one KMS Decrypt round trip to the region's endpoint
# (tens of milliseconds each when warm). An estimate with room for a cold TLS handshake and one
# of serving/aws.py's retries, not measured here (no cloud).
KMS_UNWRAP_SECONDS = 1.0
class ColdStartBudget(TypedDict):
    """What the first request to an idle model waits for, in seconds (the stack output `coldStart`)."""

    nodeSeconds: float
    """A new GPU node becoming Ready (0 when the replica needs no new node)."""
    pullSeconds: float
    """Pulling the image's model layer at the node's pull rate (0 on the docker target)."""
    startSeconds: float
    """The server's start: process, measured model load and warm-up, and decryptSeconds."""
    decryptSeconds: float
    """Opening an encrypted model (part of startSeconds): the measured decryption, plus the KMS
    unwrap with kms; 0 for a model in clear."""
    totalSeconds: float
    """The sum: the cold-start budget."""


@dataclass(frozen=True)
class ColdStart:
    """The budget, in seconds; `as_output()` is the stack output `coldStart`."""

    node_seconds: float
    pull_seconds: float
    start_seconds: float
    """Includes decrypt_seconds."""
    decrypt_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.node_seconds + self.pull_seconds + self.start_seconds

    def as_output(self) -> ColdStartBudget:
        return {"nodeSeconds": round(self.node_seconds, 1), "pullSeconds": round(self.pull_seconds, 1),
                "startSeconds": round(self.start_seconds, 1), "decryptSeconds": round(self.decrypt_seconds, 2),
                "totalSeconds": round(self.total_seconds, 1)}


def node_seconds(families: tuple[str, ...], provisioner: str, override: Optional[float] = None,
                 device: str = "cuda") -> float:
    """The slowest family of the pool (any of them may be launched); `override` wins when given; a
    CPU pool's node takes CPU_NODE_SECONDS whatever its family.

    Raises ValueError for a GPU family the table does not know (no guess)."""
    if override is not None:
        return float(override)
    extra = MANAGED_EXTRA_SECONDS if provisioner == "managed" else 0.0
    if device == "cpu":
        return CPU_NODE_SECONDS + extra
    unknown = [f for f in families if f not in NODE_SECONDS]
    if unknown or not families:
        raise ValueError(f"no node provisioning time for instance families {unknown or '[]'}; known: "
                         f"{', '.join(sorted(NODE_SECONDS))} (or set servedmodel:nodeProvisionSeconds)")
    return max(NODE_SECONDS[f] for f in families) + extra


def runtime_layer_bytes(device: str, table: Optional[Mapping[str, Any]] = None) -> int:
    """Compressed bytes of the image's layers other than the model (base, deps, server code)."""
    data = table if table is not None else json.loads(IMAGE_LAYERS_FILE.read_text())
    try:
        return int(data["devices"][device]["runtime_compressed_bytes"])
    except KeyError:
        raise ValueError(f"{IMAGE_LAYERS_FILE.name} has no runtime layer size for device {device!r}; "
                         "run `python bench/image.py --layers`") from None


def pull_seconds(compressed_bytes: int, bandwidth_mb_per_s: float) -> float:
    if bandwidth_mb_per_s <= 0:
        raise ValueError(f"pull bandwidth must be positive, got {bandwidth_mb_per_s}")
    return compressed_bytes / (bandwidth_mb_per_s * 1e6)


def start_seconds(device: str, startup: Mapping[str, Any], gpu_share: int = 1) -> float:
    """Process start + the build's measured model load and warm-up (the warm-up `gpu_share` times
    on a time-sliced GPU: the worst case, every other share busy)."""
    try:
        return (PROCESS_SECONDS[device] + float(startup["load_seconds"])
                + float(startup["warmup_seconds"]) * (gpu_share if device == "cuda" else 1))
    except KeyError as e:
        raise ValueError(f"start-up measurement lacks {e} (models/startup.py records load_seconds and "
                         "warmup_seconds)") from None


def decrypt_seconds(startup: Mapping[str, Any], encryption: str) -> float:
    """Opening the model at start: nothing in clear; the build's measured AES-256-GCM decryption
    (`decrypt_seconds`) for an encrypted one, plus one KMS unwrap with kms."""
    if encryption == "none":
        return 0.0
    try:
        measured = float(startup["decrypt_seconds"])
    except KeyError:
        raise ValueError("the build of an encrypted model recorded no decrypt_seconds (models/seal.py measures "
                         "it); rebuild with --no-cache") from None
    return measured + (KMS_UNWRAP_SECONDS if encryption == "kms" else 0.0)


def budget(*, device: str, startup: Mapping[str, Any], model_layer_bytes: int, bandwidth_mb_per_s: float,
           needs_node: bool, families: tuple[str, ...] = (), provisioner: str = "managed",
           node_override: Optional[float] = None, layers_table: Optional[Mapping[str, Any]] = None,
           pulled: bool = True, gpu_share: int = 1, encryption: str = "none") -> ColdStart:
    """The cold-start budget of one replica started from nothing (no warm node when `needs_node`;
    `pulled` False when the image is built where it runs; `encryption` kms, local or none). Raises
    ValueError for what it does not know."""
    node = node_seconds(families, provisioner, node_override, device) if needs_node else 0.0
    pull = pull_seconds(runtime_layer_bytes(device, layers_table) + model_layer_bytes, bandwidth_mb_per_s) \
        if pulled else 0.0
    opening = decrypt_seconds(startup, encryption)
    return ColdStart(node_seconds=node, pull_seconds=pull,
                     start_seconds=start_seconds(device, startup, gpu_share) + opening, decrypt_seconds=opening)

