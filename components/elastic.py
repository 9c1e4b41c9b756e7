"""Elastic GPU capacity: the components that declare Karpenter's GPU pool and KEDA's scaling as
custom resources (the settings are components/args/elastic.py ElasticArgs).

- `KarpenterGpuPool` declares an EC2NodeClass + NodePool (components/karpenter.py specs).
- `KedaScaling` declares a ScaledObject and, for scale to zero, an HTTPScaledObject and the
  ExternalName Service through which clients reach the interceptor (components/keda.py specs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from . import karpenter, keda, specs
from .inputs import given, is_plain


class KarpenterGpuPool(pulumi.ComponentResource):
    """EC2NodeClass + NodePool for one model's pool (cluster-scoped custom resources): GPU nodes, or
    CPU nodes of one architecture (`gpu` False in the args; the name and token predate CPU pools
    and stay, the token being part of every child's URN).

    Outputs: `pool_label` (the pool's own label), `node_labels` (every label its nodes carry, as
    outputs of the NodePool), `node_pool_name`.
    """

    pool_label: pulumi.Output[str]
    node_labels: pulumi.Output[dict]
    node_pool_name: pulumi.Output[str]

    def __init__(self, name: str, args: karpenter.KarpenterPoolArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:KarpenterGpuPool", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Any: a custom resource's outputs are its own, untyped.
        node_class: Any = k8s.apiextensions.CustomResource(
            f"{name}-nodeclass", api_version=karpenter.API_NODECLASS, kind="EC2NodeClass",
            metadata={"labels": {"app.kubernetes.io/managed-by": "pulumi"}},
            spec=karpenter.node_class_spec(args), opts=child)
        pool: Any = k8s.apiextensions.CustomResource(
            f"{name}-nodepool", api_version=karpenter.API_NODEPOOL, kind="NodePool",
            metadata={"labels": {"app.kubernetes.io/managed-by": "pulumi"}},
            spec=karpenter.node_pool_spec(args, node_class.metadata["name"]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[node_class]))
        # The label as an output of the NodePool: a pod spec that selects it depends on the pool,
        # so the engine declares the capacity before the Deployment that needs it.
        self.pool_label = pool.metadata.apply(lambda _: args.pool_label)
        self.node_labels = pool.metadata.apply(lambda _: karpenter.node_labels(args))
        self.node_pool_name = pool.metadata["name"]
        self.register_outputs({"pool_label": self.pool_label, "node_labels": self.node_labels,
                               "node_pool_name": self.node_pool_name})


class KedaScaling(pulumi.ComponentResource):
    """ScaledObject for one model's Deployment; with `http`, the HTTPScaledObject and the
    ExternalName Service that sends clients to the interceptor (which holds requests while the
    Deployment scales from zero).

    Outputs: `url` (the held route when `http`, else None).
    """

    url: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: keda.KedaArgs, *, deployment_name: pulumi.Input[str],
                 service_name: pulumi.Input[str], labels: dict[str, str],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:KedaScaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta: specs.Json = {"namespace": args.namespace, "labels": labels}
        self.url = None
        http_name: Any = None
        if args.http:
            hold = k8s.core.v1.Service(
                f"{name}-hold", metadata=meta,
                spec=specs.as_json({"type": "ExternalName",
                                    "externalName": keda.interceptor_external_name(args.keda_namespace),
                                    "ports": [{"name": "http", "port": keda.INTERCEPTOR_PORT, "protocol": "TCP"}]}),
                opts=child)
            fqdn = pulumi.Output.concat(hold.metadata.name, ".", args.namespace, ".svc.cluster.local")
            hosts: list[Any] = [fqdn, pulumi.Output.concat(hold.metadata.name, ".", args.namespace, ".svc"),
                     pulumi.Output.concat(hold.metadata.name, ".", args.namespace)]
            if given(args.hostname):
                # The interceptor routes by Host and answers 404 to a name it has no route for
                # (kedacore/http-add-on v0.15.0 pkg/routing/table.go, interceptor/middleware/routing.go):
                # the public name an ingress sends here must be listed too.
                hosts.insert(0, args.hostname)
            hso: Any = k8s.apiextensions.CustomResource(  # (untyped outputs)
                f"{name}-http", api_version=keda.API_HTTPSCALEDOBJECT, kind="HTTPScaledObject",
                metadata=meta | {"annotations": {keda.SKIP_SCALEDOBJECT_ANNOTATION: "true"}},
                spec=keda.http_scaled_object_spec(args, deployment_name, service_name, hosts), opts=child)
            http_name = hso.metadata["name"]
            self.url = pulumi.Output.concat("http://", fqdn, f":{keda.INTERCEPTOR_PORT}")
        deployment = pulumi.Output.from_input(deployment_name)
        # The queries name the namespace: one given as an Output is resolved with the names.
        k8s.apiextensions.CustomResource(
            f"{name}-scaler", api_version=keda.API_SCALEDOBJECT, kind="ScaledObject", metadata=meta,
            spec=pulumi.Output.all(deployment, http_name, args.namespace).apply(
                lambda v: keda.scaled_object_spec(_with_namespace(args, v[2]), v[0], v[1])),
            opts=child)
        self.register_outputs({"url": self.url})


def _with_namespace(args: keda.KedaArgs, namespace: str) -> keda.KedaArgs:
    """`args` with its namespace known (the builders write it into PromQL)."""
    return args if is_plain(args.namespace) else dataclasses.replace(args, namespace=namespace)
