"""ServedModel: one model from source to endpoint (build context, image, nodes, service)."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, TypedDict, Union

import pulumi

from . import capacity, coldstart, edge, gpus, karpenter, keda, local_files, platforms, specs
from .args import ArgsError, ServedModelArgs, args_from_mapping
from .args.network import client_tokens
from .coldstart import ColdStartBudget
from .elastic import KarpenterGpuPool, KedaScaling
from .gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from .gpus import IMAGE_GPU_FAMILIES, instance_families
from .inputs import given, lift
from .karpenter import gpu_limit_needed
from .local_service import LocalService, LocalServiceArgs
from .model_image import ModelImage, ModelImageArgs
from .model_key import ModelKey, ModelKeyArgs
from .model_monitoring import ModelMonitoring, ModelMonitoringArgs
from .model_service import ModelService, ModelServiceArgs
from .monitoring import Scope
from .timeouts import ReadinessTimeouts, readiness_timeouts


class Tensor(TypedDict):
    """One input or output tensor of the model, as the server's metadata route names it."""

    name: str
    """The tensor's name in infer requests and responses."""
    datatype: str
    """Its KServe V2 datatype (FP32, INT64, BYTES, ...)."""
    shape: list[int]
    """Its shape; -1 marks a dimension of any size (the batch)."""


class Signature(TypedDict):
    """The model's input/output signature, from its manifest."""

    inputs: list[Tensor]
    """The tensors an infer request sends."""
    outputs: list[Tensor]
    """The tensors an infer response returns."""


def _portable(path: Path) -> str:
    """The context path relative to the project directory (Pulumi's working directory) when it
    lies inside it: an absolute path would differ between checkouts (CI vs. a laptop) and show
    up as an image change in every preview."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def signature_of(manifest: dict[str, Any]) -> Signature:
    """The model's input/output signature as apps read it from the stack outputs."""
    return {"inputs": manifest["inputs"], "outputs": manifest["outputs"]}


def _node_group_timeouts(t: ReadinessTimeouts) -> pulumi.CustomTimeouts:
    return pulumi.CustomTimeouts(create=t.node_group_create, update=t.node_group_update)


def infer_url(url: str, served_name: str) -> str:
    """The V2 infer route of the model: the server answers under its served name
    (SERVEDMODEL_MODEL_NAME), so the route survives a change of the model behind it."""
    return f"{url.rstrip('/')}/v2/models/{served_name}/infer"


class ServedModel(pulumi.ComponentResource):
    """One model from source to endpoint. Runs models.build (export, verify, compress, package;
    cached on its inputs, so an unchanged model does no export), then ModelImage (the image, tagged
    with the model version), and on the kubernetes target GpuNodePool or KarpenterGpuPool (with
    GPUs), ModelService (Deployment, Service, autoscaler; a canary as configured), ModelMonitoring
    and KedaScaling as configured; on the docker target a LocalService (a local container).
    """

    url: pulumi.Output[str]
    """The endpoint's base URL (https://<hostname> with a hostname; through the KEDA HTTP
    interceptor when it holds requests)."""
    infer_url: pulumi.Output[str]
    """The V2 infer route under the served name; a model swap keeps it."""
    model_name: pulumi.Output[str]
    """The served name the server answers under."""
    image: pulumi.Output[str]
    """The serving image as ref@digest."""
    model_version: pulumi.Output[str]
    """The model version: a content hash of everything that changes what is served; the image tag."""
    signature: pulumi.Output[Signature]
    """The model's input and output tensors."""
    cold_start: pulumi.Output[ColdStartBudget]
    """What the first request to an idle model waits for, in seconds (components/coldstart.py)."""

    def __init__(self, name: str, args: Union[ServedModelArgs, Mapping[str, Any]],
                 opts: Optional[pulumi.ResourceOptions] = None):
        # A mapping of the field names (the component provider's inputs, from any Pulumi language)
        # gets the same checks and messages as the args it is turned into.
        if not isinstance(args, ServedModelArgs):
            args = args_from_mapping(args)
        super().__init__("servedmodel:index:ServedModel", name, None, opts)
        import servedmodel.models as models  # the offline world; imported here so `components` loads without torch

        entry, res = args.model, args.resources
        # Before anything is built: replicas that cannot fit a node of their pool never schedule,
        # and a node whose architecture the image lacks cannot run it (EC2's figures of each
        # instance type; the invokes run at preview too).
        types = capacity.pool_types(args, parent=self)
        misfits = capacity.check(args, types)
        if misfits:
            raise pulumi.RunError(f"model {entry.served_name!r}: {ArgsError('ServedModelArgs', misfits)}")
        # The nodes' architecture: `arch`, or the one EC2 gives the pool's types; None: any node.
        arch = capacity.pool_arch(args, types)
        child = pulumi.ResourceOptions(parent=self)
        reg = args.registry
        encryption = args.encryption_mode
        # kms: the model's key first; the build wraps the data key with it, the repository is
        # encrypted with it and the pods' role may decrypt with it (each takes its ARN: ordered).
        key = ModelKey(f"{name}", ModelKeyArgs(
            served_name=entry.served_name, kms_key_arn=args.encryption.kms_key_arn, protect=args.protect,
            retain=reg.retain), opts=child) if encryption == "kms" else None
        build, context = _build(models, args, encryption, key)
        pulumi.log.info(f"{entry.served_name}: model version {build.version}"
                        f"{' (cached build)' if build.cache_hit else ''}"
                        f"{'' if encryption == 'none' else f', encrypted ({encryption})'}", resource=self)
        gpu_mem_limit = gpu_memory_of(args, build)
        if res.gpu_memory_bytes is None and gpu_mem_limit is not None:
            # A cap derived from the build's measured peak: its shares must fit a GPU too.
            misfits = capacity.gpu_memory_problems(args, types, gpu_mem_limit)
            if misfits:
                raise pulumi.RunError(f"model {entry.served_name!r}: {ArgsError('ServedModelArgs', misfits)}")

        image = ModelImage(f"{name}", ModelImageArgs(
            context_dir=context, version=build.version, push=args.kubernetes,
            # Kubernetes: the architecture `arch` names, or every one the device's runtime has
            # (one multi-arch index); docker: the host's, which the local engine runs.
            platforms=platforms.image_platforms(res.device, res.arch) if args.kubernetes
            else (platforms.platform(platforms.host_arch()),),
            local_repository=f"servedmodel/{entry.served_name}",
            # A given registry is a prefix: each model gets its own repository under it (an Output
            # counts as given: whether to create an ECR repository is decided now).
            registry=lift(lambda url: f"{url.rstrip('/')}/{entry.served_name}", reg.url) if given(reg.url) else "",
            registry_username=reg.username,
            registry_password=reg.password, keep_versions=reg.keep_versions, protect=args.protect,
            retain_repository=reg.retain, kms_key_arn=key.arn if key is not None else None,
        ), opts=child)

        elastic = args.elastic
        cold = cold_start_of(args, build)
        # The server's start (process + measured load + warm-up): what the readiness timeouts size.
        startup = cold.start_seconds
        pulumi.log.info(f"{entry.served_name}: cold start {cold.as_output()}", resource=self)
        if args.kubernetes:
            node_selector: Any = specs.pod_node_selector({}, (), arch) or None
            if args.has_pool and args.node_pool is not None:
                pool, gpu = args.node_pool, res.gpu > 0
                instance_types = args.pool_instance_types
                pool_label = f"{entry.served_name}-{'gpu' if gpu else 'cpu'}"
                if arch is None:  # capacity.check reports a pool whose types share no architecture
                    raise pulumi.RunError(f"model {entry.served_name!r}: the pool's instance types share no "
                                          "architecture the image is built for")
                pool_resource: Any
                if elastic.karpenter:
                    pool_resource = KarpenterGpuPool(f"{name}", karpenter.KarpenterPoolArgs(
                        cluster_name=pool.cluster_name, pool_label=pool_label,
                        families=instance_families(instance_types) if gpu else (),
                        supported_families=IMAGE_GPU_FAMILIES, gpu=gpu, arch=arch,
                        instance_types=() if gpu else instance_types,
                        cpu_limit=0 if gpu else karpenter.cpu_limit_needed(
                            args.autoscaling.max_replicas, max(types[t].vcpus for t in instance_types)),
                        gpu_share=res.gpu_share if gpu else 1,
                        node_role=elastic.node_role(pool.cluster_name), capacity_types=elastic.capacity_types,
                        gpu_limit=elastic.gpu_limit or gpu_limit_needed(res.gpu, args.autoscaling.max_replicas),
                        consolidation_policy=elastic.consolidation_policy, consolidate_after=elastic.consolidate_after,
                        disruption_budget_nodes=elastic.disruption_budget_nodes, ami_alias=elastic.karpenter_ami_alias,
                        subnet_ids=elastic.karpenter_subnet_ids,
                        security_group_ids=elastic.karpenter_security_group_ids,
                    ), opts=child)
                else:
                    pool_resource = GpuNodePool(f"{name}", GpuNodePoolArgs(
                        cluster_name=pool.cluster_name, subnet_ids=pool.subnet_ids,
                        pool_label=pool_label, instance_types=instance_types,
                        ami_type=pool.ami_type or platforms.default_ami_type(res.device, arch),
                        gpu=gpu, gpu_share=res.gpu_share if gpu else 1,
                        min_size=pool.min_size, desired_size=pool.desired_size,
                        max_size=pool.max_size, protect=args.protect,
                        timeouts=_node_group_timeouts(readiness_timeouts(
                            startup, res.device, args.autoscaling.max_replicas, pool.max_size,
                            pull_seconds=cold.pull_seconds, node_seconds=cold.node_seconds)),
                    ), opts=child)
                # A shared replica selects any node sliced alike (of any model's or stack's pool);
                # every other one its own pool. Read from the pool's outputs: the pods wait for it.
                select = tuple(gpus.shared_selector(res.gpu_share)) if res.shared else (specs.POOL_LABEL,)
                node_selector = pool_resource.node_labels.apply(
                    lambda labels: specs.pod_node_selector(labels, select, arch))
            network = args.network
            subnets = None
            if network.service_type == "LoadBalancer":
                subnets = edge.load_balancer_subnets(args.eks_cluster, network.load_balancer_subnet_ids, self)
            if elastic.keda_http and elastic.keda_namespace not in network.ingress_namespaces:
                # The interceptor (in KEDA's namespace) forwards the held requests to the pods.
                network = dataclasses.replace(
                    network, ingress_namespaces=network.ingress_namespaces + (elastic.keda_namespace,))
            service: Any = ModelService(f"{name}", ModelServiceArgs(
                served_name=entry.served_name, image=image.ref, version=build.version,
                resources=res, autoscaling=args.autoscaling, network=network, server=args.server,
                rollout=args.rollout, node_selector=node_selector, gpu_mem_limit=gpu_mem_limit,
                startup_seconds=startup,
                node_max=args.node_pool.max_size if args.has_pool and args.node_pool is not None else 0,
                pull_seconds=cold.pull_seconds, node_seconds=cold.node_seconds,
                external_autoscaler=elastic.keda, kubeconfig=args.kubeconfig, load_balancer_subnets=subnets,
                encryption=encryption, model_key_arn=key.arn if key is not None else None,
                cluster_name=args.eks_cluster, protect=args.protect, retain_audit_log=reg.retain,
            ), opts=child)
            if network.service_type == "LoadBalancer":
                # The name the certificate covers, pointed at the NLB (components/edge.py).
                edge.dns_record(name, network.hostname, network.dns_zone_id, service.load_balancer_hostname, self)
            if args.monitoring.mode != "none":
                ModelMonitoring(f"{name}", ModelMonitoringArgs(
                    monitoring=args.monitoring, workload_name=service.deployment_name,
                    scope=Scope(served_name=entry.served_name, namespace=args.network.namespace, gpu=res.gpu > 0),
                ), opts=child)
            url = service.url
            if elastic.keda:
                scale = args.autoscaling
                scaling = KedaScaling(f"{name}", keda.KedaArgs(
                    namespace=network.namespace, prometheus_url=elastic.prometheus_url,
                    min_replicas=elastic.min_replicas, max_replicas=scale.max_replicas, metric=scale.metric,
                    target_inflight=scale.target_inflight, target_queue_ms=scale.target_queue_ms,
                    polling_seconds=elastic.keda_polling_seconds, cooldown_seconds=elastic.keda_cooldown_seconds,
                    http=elastic.keda_http, keda_namespace=elastic.keda_namespace,
                    hostname=network.hostname,
                    # As long as one pod may take to be ready (node, pull, startup probe budget).
                    wait_seconds=service.pod_seconds if elastic.keda_http else 0,
                ), deployment_name=service.deployment_name, service_name=service.service_name,
                    labels=specs.labels(entry.served_name), opts=child)
                if scaling.url is not None:
                    url = scaling.url  # clients go through the interceptor, which holds requests
        else:
            service = _local_service(name, args, encryption, image.ref, child)
            url = service.url

        self.url = url
        self.image = image.ref
        self.model_name = pulumi.Output.from_input(entry.served_name)
        self.infer_url = pulumi.Output.from_input(url).apply(lambda u: infer_url(u, entry.served_name))
        self.model_version = pulumi.Output.from_input(build.version)
        self.signature = pulumi.Output.from_input(signature_of(build.manifest))
        self.cold_start = pulumi.Output.from_input(cold.as_output())
        self.register_outputs({"url": self.url, "infer_url": self.infer_url, "model_name": self.model_name,
                               "image": self.image, "model_version": self.model_version,
                               "signature": self.signature, "cold_start": self.cold_start})


def _build(models: Any, args: ServedModelArgs, encryption: str, key: Optional[ModelKey]) -> tuple[Any, Any]:
    """models.build for the model: (the build's result, the context the image is built from).

    none: the plaintext context. local: sealed with the model's local key (components/local_files.py),
    which the build creates when missing. kms: the version, manifest and start-up figures come from
    the plaintext build now (into a private temporary folder: every resource is declared from
    them), and the context the image is built from is sealed once the key's ARN is known, by the
    same build with the encryption (a cache hit that seals from the cached context; the sealed
    cache keeps an unchanged model's bytes). The build runs in the key's apply: a computation,
    no resource; during the preview of a stack that creates its key it does not run and the
    image's context is unknown."""
    entry, served = args.model, args.model.served_name

    def run(out_dir: Path, enc: Any = None) -> Any:
        try:
            return models.build(model=entry.model, compression=entry.compression, out_dir=out_dir,
                                device=args.resources.device, cache_dir=args.cache_dir,
                                max_metric_drop=entry.max_metric_drop, encryption=enc)
        except (models.BuildError, ValueError) as exc:
            raise pulumi.RunError(f"model {served!r}: {exc}") from None

    if encryption == "none":
        build = run(args.out_dir)
        return build, _portable(Path(build.context_dir))
    if encryption == "local":
        key_file = local_files.key_file(args.out_dir, served)
        build = run(args.out_dir, models.Encryption("local", key_file=key_file, served_name=served))
        local_files.give_to_container(key_file)
        return build, _portable(Path(build.context_dir))
    assert key is not None
    with tempfile.TemporaryDirectory(prefix="servedmodel-plain-") as tmp:
        # Its startup figures include what opening it encrypted costs (decrypt_seconds, measured once
        # with the build and kept in the cache's record: the budget is the same on every run).
        plain = run(Path(tmp) / "context")
    # The image's model layer will hold ciphertext, which does not compress: the pull (the
    # cold-start budget) counts at least the model's own size, not its plaintext's gzip.
    layer = max(int(plain.sizes["model_layer_gzip_bytes"]), int(plain.manifest["size_bytes"]))
    plain = dataclasses.replace(plain, sizes={**plain.sizes, "model_layer_gzip_bytes": layer})

    def sealed(arn: str) -> str:
        done = run(args.out_dir, models.Encryption("kms", kms_key=arn, served_name=served))
        if done.version != plain.version:
            raise pulumi.RunError(f"model {served!r}: the sealed build has version {done.version}, the plaintext "
                                  f"one {plain.version}; rebuild with --no-cache")
        return _portable(Path(done.context_dir))

    return plain, key.arn.apply(sealed)


def _local_service(name: str, args: ServedModelArgs, encryption: str, image_ref: Any,
                   child: pulumi.ResourceOptions) -> LocalService:
    """The docker target's container, with the files it reads mounted (components/local_files.py):
    the local key of a `local`-encrypted model and the clients document."""
    entry, net = args.model, args.network
    mounts: list[tuple[str, str]] = []
    labels: dict[str, Any] = {specs.ENCRYPTION_ANNOTATION: encryption}
    if encryption == "local":
        mounts.append((str(local_files.key_file(args.out_dir, entry.served_name).resolve()), specs.LOCAL_KEY_PATH))
    clients = net.clients is not None
    if clients:
        path = local_files.private_dir(local_files.keys_dir(args.out_dir)) / f"{entry.served_name}.clients.json"

        def write(value: Any) -> str:
            document = specs.clients_document(client_tokens(value))
            local_files.write_private(path, document)
            return specs.document_checksum(document)

        # Written once the clients are known; the container waits for it through the label (and
        # a changed document replaces the container, which reads it only at start).
        labels[specs.CLIENTS_ANNOTATION] = pulumi.Output.unsecret(pulumi.Output.from_input(net.clients).apply(write))
        mounts.append((str(path.resolve()), specs.LOCAL_CLIENTS_PATH))
    identity = specs.Identity(clients_file=clients, clients_path=specs.LOCAL_CLIENTS_PATH,
                              oidc_issuer=net.oidc_issuer, oidc_audience=net.oidc_audience, oidc_scope=net.oidc_scope,
                              audit=args.server.audit,
                              model_key_file=specs.LOCAL_KEY_PATH if encryption == "local" else "")
    env = specs.server_env("cpu", args.server.drain_seconds, model_name=entry.served_name,
                           grpc_port=net.grpc_port, settings=args.server.batching_env(), identity=identity)
    return LocalService(f"{name}", LocalServiceArgs(
        image=image_ref, port=net.local_port, drain_seconds=args.server.drain_seconds,
        auth_token=net.auth_token, extra_env=specs.docker_env(env), grpc_port=net.grpc_port,
        user=local_files.container_user() if mounts else str(specs.RUN_AS), mounts=tuple(mounts), labels=labels,
    ), opts=child)


def cold_start_of(args: ServedModelArgs, build: Any) -> coldstart.ColdStart:
    """The model's cold-start budget from the build's measurements and the stack's settings.

    A node is counted when the replica needs a GPU node on the kubernetes target (the pool may
    have to grow, or with Karpenter start from none); the image is pulled only when pushed
    (kubernetes); the docker target builds the image where it runs."""
    startup, sizes = build.startup, build.sizes
    if not startup or "model_layer_gzip_bytes" not in sizes:
        raise pulumi.RunError(f"model {args.model.served_name!r}: the build did not record its start-up "
                              "measurement; rebuild with --no-cache")
    e, res = args.elastic, args.resources
    needs_node = args.has_pool
    try:
        return coldstart.budget(
            device=res.device, startup=startup, model_layer_bytes=sizes["model_layer_gzip_bytes"],
            bandwidth_mb_per_s=e.pull_bandwidth_mbps, needs_node=needs_node,
            families=instance_families(args.pool_instance_types), provisioner=e.node_provisioner,
            node_override=e.node_provision_seconds or None, pulled=args.kubernetes,
            gpu_share=res.gpu_share if res.gpu > 0 else 1, encryption=args.encryption_mode)
    except ValueError as exc:
        raise pulumi.RunError(f"model {args.model.served_name!r}: cold-start budget: {exc}") from None


# The build's measured memory peak (models/startup.py, BuildResult.startup): what a shared
# replica's default GPU memory cap is derived from.
PEAK_MEMORY_FIELD = "peak_memory_bytes"


def gpu_memory_of(args: ServedModelArgs, build: Any) -> Optional[int]:
    """The replica's GPU memory cap in bytes (SERVEDMODEL_GPU_MEM_LIMIT): `gpu_memory` when given;
    on a shared GPU without one, the build's measured peak with headroom (gpus.py); otherwise
    None (a whole GPU, uncapped)."""
    res = args.resources
    if res.gpu <= 0:
        return None
    if res.gpu_memory_bytes is not None:
        return res.gpu_memory_bytes
    if not res.shared:
        return None
    peak = (build.startup or {}).get(PEAK_MEMORY_FIELD)
    if not isinstance(peak, int) or isinstance(peak, bool) or peak < 0:
        raise pulumi.RunError(f"model {args.model.served_name!r}: a shared GPU (servedmodel:gpuShare "
                              f"{res.gpu_share}) caps each replica's memory, and the build recorded no "
                              f"{PEAK_MEMORY_FIELD} to derive the cap from: set servedmodel:gpuMemory, or rebuild "
                              "with a models package that measures it (--no-cache)")
    return gpus.default_gpu_memory_bytes(peak)
