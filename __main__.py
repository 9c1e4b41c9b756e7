"""The Pulumi program: read the stack's settings, serve each model, export its outputs."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import ServedModel, ServedModelArgs, load_settings, specs

settings = load_settings()
stack = pulumi.get_stack()

opts = None
subnet_ids = None
if settings.target == "kubernetes":
    # The cluster is the platform's: read it by name, never manage it here.
    cluster = aws.eks.get_cluster_output(name=settings.cluster_name)
    if settings.gpu_node_pool:
        # No subnets configured: the node pool uses the cluster's.
        subnet_ids = list(settings.node_subnet_ids) if settings.node_subnet_ids else cluster.vpc_config.subnet_ids
    if settings.kubeconfig is not None:
        kubeconfig = settings.kubeconfig
    else:
        kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            cluster.endpoint, cluster.certificate_authorities[0].data, aws.get_region_output().region,
        ).apply(lambda v: specs.eks_kubeconfig(settings.cluster_name, v[0], v[1], v[2])))
    # The one Kubernetes provider; components take it from opts.providers.
    provider = k8s.Provider("k8s", kubeconfig=kubeconfig)
    opts = pulumi.ResourceOptions(providers={"kubernetes": provider})

outputs: dict[str, dict[str, pulumi.Output]] = {"url": {}, "image": {}, "modelVersion": {}, "signature": {}}
for index, entry in enumerate(settings.models):
    served = ServedModel(entry.name, ServedModelArgs(
        entry=entry, settings=settings, out_dir=Path("build") / "stacks" / stack / entry.name,
        local_port=settings.local_port + index, node_subnet_ids=subnet_ids,
    ), opts=opts)
    outputs["url"][entry.name] = served.url
    outputs["image"][entry.name] = served.image
    outputs["modelVersion"][entry.name] = served.model_version
    outputs["signature"][entry.name] = served.signature

# Per model, keyed by served name (a stack may serve several models).
for key, per_model in outputs.items():
    pulumi.export(key, per_model)
