"""ServedModel: one model from source to endpoint (build context, image, nodes, service)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pulumi

from components import specs
from components.args import ServedModelArgs
from components.timeouts import ReadinessTimeouts, measured_startup_seconds, readiness_timeouts
from components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from components.local_service import LocalService, LocalServiceArgs
from components.model_image import ModelImage, ModelImageArgs
from components.model_monitoring import ModelMonitoring, ModelMonitoringArgs
from components.model_service import ModelService, ModelServiceArgs
from components.monitoring import Scope


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


def _node_group_timeouts(t: ReadinessTimeouts) -> pulumi.CustomTimeouts:
    return pulumi.CustomTimeouts(create=t.node_group_create, update=t.node_group_update)


def infer_url(url: str, served_name: str) -> str:
    """The V2 infer route of the model: the server answers under its served name
    (SERVEDMODEL_MODEL_NAME), so the route survives a change of the model behind it."""
    return f"{url.rstrip('/')}/v2/models/{served_name}/infer"


class ServedModel(pulumi.ComponentResource):
    """Runs models.build (cached on its inputs, so an unchanged model does no export), then
    ModelImage, GpuNodePool (kubernetes + gpu), ModelService and ModelMonitoring (kubernetes,
    monitoring not none), or LocalService (docker).

    Outputs: `url`, `infer_url` (the V2 infer route under the served name, stable across model
    swaps), `model_name` (the served name the server answers under), `image` (ref@digest),
    `model_version`, `signature`.
    """

    url: pulumi.Output[str]
    infer_url: pulumi.Output[str]
    model_name: pulumi.Output[str]
    image: pulumi.Output[str]
    model_version: pulumi.Output[str]
    signature: pulumi.Output[dict]

    def __init__(self, name: str, args: ServedModelArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ServedModel", name, None, opts)
        import models  # the offline world; imported here so `components` loads without torch

        entry, res = args.model, args.resources
        try:
            build = models.build(model=entry.model, compression=entry.compression, out_dir=args.out_dir,
                                 device=res.device, cache_dir=args.cache_dir)
        except models.BuildError as exc:
            raise pulumi.RunError(f"model {entry.served_name!r}: {exc}") from None
        pulumi.log.info(f"{entry.served_name}: model version {build.version}"
                        f"{' (cached build)' if build.cache_hit else ''}", resource=self)
        child = pulumi.ResourceOptions(parent=self)
        reg = args.registry
        startup = measured_startup_seconds(build.manifest)

        image = ModelImage(f"{name}", ModelImageArgs(
            context_dir=_portable(Path(build.context_dir)), version=build.version, push=args.kubernetes,
            local_repository=f"servedmodel/{entry.served_name}",
            # A given registry is a prefix: each model gets its own repository under it.
            registry=f"{reg.url.rstrip('/')}/{entry.served_name}" if reg.url else "",
            registry_username=reg.username,
            registry_password=reg.password, keep_versions=reg.keep_versions, protect=args.protect,
        ), opts=child)

        if args.kubernetes:
            pool_label = None
            if res.gpu > 0 and args.node_pool is not None:
                pool = args.node_pool
                node_pool = GpuNodePool(f"{name}", GpuNodePoolArgs(
                    cluster_name=pool.cluster_name, subnet_ids=pool.subnet_ids,
                    pool_label=f"{entry.served_name}-gpu", instance_types=pool.instance_types,
                    ami_type=pool.ami_type, min_size=pool.min_size, desired_size=pool.desired_size,
                    max_size=pool.max_size, protect=args.protect,
                    timeouts=_node_group_timeouts(readiness_timeouts(startup, res.device, args.autoscaling.max_replicas,
                                                                     pool.max_size)),
                ), opts=child)
                pool_label = node_pool.pool_label
            service: Any = ModelService(f"{name}", ModelServiceArgs(
                served_name=entry.served_name, image=image.ref, version=build.version,
                resources=res, autoscaling=args.autoscaling, network=args.network, server=args.server,
                rollout=args.rollout, pool_label=pool_label, startup_seconds=startup,
                node_max=args.node_pool.max_size if args.node_pool is not None and res.gpu > 0 else 0,
            ), opts=child)
            if args.monitoring.mode != "none":
                ModelMonitoring(f"{name}", ModelMonitoringArgs(
                    monitoring=args.monitoring, workload_name=service.deployment_name,
                    scope=Scope(served_name=entry.served_name, namespace=args.network.namespace, gpu=res.gpu > 0),
                ), opts=child)
        else:
            env = specs.server_env("cpu", args.server.drain_seconds, model_name=entry.served_name,
                                   grpc_port=args.network.grpc_port, settings=args.server.batching_env())
            service = LocalService(f"{name}", LocalServiceArgs(
                image=image.ref, port=args.network.local_port, drain_seconds=args.server.drain_seconds,
                auth_token=args.network.auth_token, extra_env=specs.docker_env(env), grpc_port=args.network.grpc_port,
            ), opts=child)

        self.url = service.url
        self.image = image.ref
        self.model_name = pulumi.Output.from_input(entry.served_name)
        self.infer_url = service.url.apply(lambda url: infer_url(url, entry.served_name))
        self.model_version = pulumi.Output.from_input(build.version)
        self.signature = pulumi.Output.from_input(signature_of(build.manifest))
        self.register_outputs({"url": self.url, "infer_url": self.infer_url, "model_name": self.model_name,
                               "image": self.image, "model_version": self.model_version,
                               "signature": self.signature})
