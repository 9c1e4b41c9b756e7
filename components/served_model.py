"""ServedModel: one model from source to endpoint (build context, image, nodes, service)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pulumi

from components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from components.local_service import LocalService, LocalServiceArgs
from components.model_image import ModelImage, ModelImageArgs
from components.model_service import ModelService, ModelServiceArgs
from components.settings import ModelEntry, Settings


@dataclass
class ServedModelArgs:
    entry: ModelEntry
    """Which model, its compression and served name. Required."""
    settings: Settings
    """The validated stack settings. Required."""
    out_dir: Path
    """Where models.build writes the build context (relative to the project directory). Required."""
    local_port: int = 8080
    """Host port on the docker target. Default 8080."""
    node_subnet_ids: Optional[pulumi.Input[Sequence[str]]] = None
    """Subnets for the GPU node pool (kubernetes target with gpu > 0). Default None."""
    cache_dir: Optional[Path] = None
    """models.build cache; None uses $SERVEDMODEL_CACHE or ~/.cache/servedmodel. Default None."""


def _portable(path: Path) -> str:
    """The context path relative to the project directory (Pulumi's working directory) when it
    lies inside it: an absolute path would differ between checkouts (CI vs. a laptop) and show
    up as an image change in every preview."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def signature_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model's input/output signature as apps read it from the stack outputs."""
    return {"inputs": manifest["inputs"], "outputs": manifest["outputs"]}


class ServedModel(pulumi.ComponentResource):
    """Runs models.build (cached on its inputs, so an unchanged model does no export), then
    ModelImage, GpuNodePool (kubernetes + gpu) and ModelService, or LocalService (docker).

    Outputs: `url`, `image` (ref@digest), `model_version`, `signature`.
    """

    url: pulumi.Output[str]
    image: pulumi.Output[str]
    model_version: pulumi.Output[str]
    signature: pulumi.Output[dict]

    def __init__(self, name: str, args: ServedModelArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ServedModel", name, None, opts)
        import models  # the offline world; imported here so `components` loads without torch

        s, entry = args.settings, args.entry
        try:
            build = models.build(model=entry.model, compression=entry.compression, out_dir=args.out_dir,
                                 device=s.device, cache_dir=args.cache_dir)
        except models.BuildError as exc:
            raise pulumi.RunError(f"model {entry.name!r}: {exc}") from None
        pulumi.log.info(f"{entry.name}: model version {build.version}"
                        f"{' (cached build)' if build.cache_hit else ''}", resource=self)
        child = pulumi.ResourceOptions(parent=self)
        kubernetes = s.target == "kubernetes"

        image = ModelImage(f"{name}", ModelImageArgs(
            context_dir=_portable(Path(build.context_dir)), version=build.version, push=kubernetes,
            local_repository=f"servedmodel/{entry.name}",
            # A given registry is a prefix: each model gets its own repository under it.
            registry=f"{s.registry.rstrip('/')}/{entry.name}" if s.registry else "",
            registry_username=s.registry_username,
            registry_password=s.registry_password, keep_versions=s.keep_versions, protect=s.protect,
        ), opts=child)

        if kubernetes:
            pool_label = None
            if s.gpu_node_pool:
                pool = GpuNodePool(f"{name}", GpuNodePoolArgs(
                    cluster_name=s.cluster_name, subnet_ids=args.node_subnet_ids, pool_label=f"{entry.name}-gpu",
                    instance_types=s.node_instance_types, ami_type=s.node_ami_type,
                    min_size=s.node_min, desired_size=s.node_desired, max_size=s.node_max, protect=s.protect,
                ), opts=child)
                pool_label = pool.pool_label
            service: Any = ModelService(f"{name}", ModelServiceArgs(
                served_name=entry.name, image=image.ref, version=build.version, namespace=s.namespace,
                device=s.device, cpu=s.cpu, memory=s.memory, gpu=s.gpu, pool_label=pool_label,
                replicas=s.replicas, max_replicas=s.max_replicas, autoscale_metric=s.autoscale_metric,
                target_inflight=s.target_inflight, target_queue_ms=s.target_queue_ms,
                target_cpu_percent=s.target_cpu_percent, service_type=s.service_type,
                allow_load_balancer=s.allow_load_balancer, ingress_namespaces=s.ingress_namespaces,
                ingress_cidrs=s.ingress_cidrs, priority=s.priority, drain_seconds=s.drain_seconds,
                pre_stop_seconds=s.pre_stop_seconds, auth_token=s.auth_token,
            ), opts=child)
        else:
            service = LocalService(f"{name}", LocalServiceArgs(
                image=image.ref, port=args.local_port, drain_seconds=s.drain_seconds, auth_token=s.auth_token,
            ), opts=child)

        self.url = service.url
        self.image = image.ref
        self.model_version = pulumi.Output.from_input(build.version)
        self.signature = pulumi.Output.from_input(signature_of(build.manifest))
        self.register_outputs({"url": self.url, "image": self.image, "model_version": self.model_version,
                               "signature": self.signature})
