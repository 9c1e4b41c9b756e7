"""ModelService: the Kubernetes objects that serve one model image."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from components import specs


@dataclass
class ModelServiceArgs:
    served_name: str
    """The model's endpoint name (labels, selectors). Required."""
    image: pulumi.Input[str]
    """Digest-pinned image reference. Required."""
    version: str
    """Model version (label/annotation: a model change is a visible rollout). Required."""
    namespace: str = "default"
    """Existing namespace. Default "default"."""
    device: str = "cpu"
    """SERVEDMODEL_DEVICE: cpu or cuda. Default "cpu"."""
    cpu: str = "1"
    """CPU request == limit. Default "1"."""
    memory: str = "1Gi"
    """Memory request == limit. Default "1Gi"."""
    gpu: int = 0
    """nvidia.com/gpu request == limit; > 0 adds the toleration and pool nodeSelector. Default 0."""
    pool_label: Optional[pulumi.Input[str]] = None
    """GPU pool label value to select (from GpuNodePool). Default None."""
    replicas: int = 1
    """Minimum replicas (exact without autoscaling). Default 1."""
    max_replicas: int = 1
    """Maximum replicas; above `replicas` an HPA owns the count. Default 1."""
    autoscale_metric: str = "inflight"
    """inflight | queue | cpu. Default "inflight"."""
    target_inflight: int = 4
    """Per-pod in-flight target. Default 4."""
    target_queue_ms: int = 50
    """Per-pod mean queue time target (ms). Default 50."""
    target_cpu_percent: int = 70
    """CPU utilisation target. Default 70."""
    service_type: str = "ClusterIP"
    """ClusterIP or LoadBalancer. Default "ClusterIP"."""
    allow_load_balancer: bool = False
    """The explicit opt-in a LoadBalancer needs (annotated for the policy pack). Default False."""
    ingress_namespaces: tuple[str, ...] = ()
    """Namespaces admitted by the NetworkPolicy besides the model's own. Default ()."""
    ingress_cidrs: tuple[str, ...] = ()
    """CIDRs admitted by the NetworkPolicy. Default ()."""
    priority: int = 0
    """> 0 creates a PriorityClass with this value. Default 0."""
    drain_seconds: int = 20
    """Server drain after SIGTERM. Default 20."""
    pre_stop_seconds: int = 5
    """preStop sleep. Default 5."""
    auth_token: Optional[pulumi.Input[str]] = None
    """Bearer token (a Pulumi secret) -> a Kubernetes Secret -> SERVEDMODEL_AUTH_TOKEN. Default None."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """More labels on every object. Default {}."""


class ModelService(pulumi.ComponentResource):
    """ServiceAccount, Deployment, Service, HPA, PDB, NetworkPolicy (and Secret, PriorityClass).

    Every object is auto-named (a replacement creates the new object before deleting the old),
    selects on stable labels only, and takes its provider from the consumer (opts.providers).
    Outputs: `url` (in-cluster DNS name, or the load balancer's address), `deployment_name`,
    `service_name`.
    """

    url: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    service_name: pulumi.Output[str]

    def __init__(self, name: str, args: ModelServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        selector = specs.selector_labels(args.served_name)
        obj_labels = specs.labels(args.served_name) | args.extra_labels

        def meta(**extra: Any) -> dict[str, Any]:
            return {"namespace": args.namespace, "labels": obj_labels} | extra

        sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=meta(), automount_service_account_token=False, opts=child)

        auth_secret_name = None
        if args.auth_token is not None:
            secret = k8s.core.v1.Secret(
                f"{name}-auth", metadata=meta(), type="Opaque",
                # Immutable: a new token replaces the Secret (new auto-name), which rolls the pods.
                immutable=True,
                string_data={"token": pulumi.Output.secret(args.auth_token)}, opts=child)
            auth_secret_name = secret.metadata.name

        priority_class_name = None
        if args.priority > 0:
            pc = k8s.scheduling.v1.PriorityClass(
                f"{name}-priority", metadata={"labels": obj_labels}, value=args.priority,
                global_default=False, preemption_policy="PreemptLowerPriority",
                description=f"servedmodel {args.served_name}", opts=child)
            priority_class_name = pc.metadata.name

        lifecycle, grace = specs.termination(args.pre_stop_seconds, args.drain_seconds)
        container: dict[str, Any] = {
            "name": "server",
            "image": args.image,
            "ports": [{"name": "http", "containerPort": specs.SERVER_PORT, "protocol": "TCP"}],
            "env": specs.server_env(args.device, args.drain_seconds, auth_secret_name),
            "resources": specs.resources(args.cpu, args.memory, args.gpu),
            "securityContext": specs.container_security_context(),
            "volumeMounts": [{"name": specs.TMP_VOLUME, "mountPath": "/tmp"}],
            **specs.probes(),
        }
        if lifecycle:
            container["lifecycle"] = lifecycle
        pod_spec: dict[str, Any] = {
            "serviceAccountName": sa.metadata.name,
            "automountServiceAccountToken": False,
            "securityContext": specs.pod_security_context(),
            "terminationGracePeriodSeconds": grace,
            "topologySpreadConstraints": specs.topology_spread(args.served_name),
            "volumes": [{"name": specs.TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}}],
            "containers": [container],
        }
        if args.gpu > 0:
            pod_spec["tolerations"] = specs.gpu_tolerations(args.gpu)
            pod_spec["nodeSelector"] = {specs.POOL_LABEL: args.pool_label}
        if priority_class_name is not None:
            pod_spec["priorityClassName"] = priority_class_name

        autoscaled = args.max_replicas > args.replicas
        deploy_spec: dict[str, Any] = {
            "selector": {"matchLabels": selector},
            "strategy": specs.rolling_update(),
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": specs.labels(args.served_name, args.version) | args.extra_labels,
                             "annotations": {specs.VERSION_ANNOTATION: args.version} | specs.scrape_annotations()},
                "spec": pod_spec,
            },
        }
        if not autoscaled:
            # With an HPA, `replicas` stays unset: setting it would reset the HPA's count on every up.
            deploy_spec["replicas"] = args.replicas
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deploy", metadata=meta(annotations={specs.VERSION_ANNOTATION: args.version}),
            spec=deploy_spec, opts=child)

        service_annotations = {specs.LOAD_BALANCER_OPT_IN: "true"} if (
            args.service_type == "LoadBalancer" and args.allow_load_balancer) else {}
        service = k8s.core.v1.Service(
            f"{name}-svc", metadata=meta(annotations=service_annotations) if service_annotations else meta(),
            spec={"type": args.service_type, "selector": selector,
                  "ports": [{"name": "http", "port": specs.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]},
            opts=child)

        if autoscaled:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa", metadata=meta(),
                spec={"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": deployment.metadata.name},
                      "minReplicas": args.replicas, "maxReplicas": args.max_replicas,
                      "metrics": [specs.hpa_metric(args.autoscale_metric, args.target_inflight,
                                                   args.target_queue_ms, args.target_cpu_percent)],
                      "behavior": specs.hpa_behavior()},
                opts=child)

        if args.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata=meta(),
                spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}}, opts=child)

        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", metadata=meta(),
            spec={"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                  "ingress": specs.network_policy_ingress(args.ingress_namespaces, args.ingress_cidrs)},
            opts=child)

        if args.service_type == "LoadBalancer":
            url = service.status.apply(_load_balancer_url)
        else:
            url = pulumi.Output.concat("http://", service.metadata.name, ".", args.namespace, ".svc.cluster.local")
        self.url = url
        self.deployment_name = deployment.metadata.name
        self.service_name = service.metadata.name
        self.register_outputs({"url": url, "deployment_name": self.deployment_name,
                               "service_name": self.service_name})


def _load_balancer_url(status: Any) -> str:
    ingress = (status and status.load_balancer and status.load_balancer.ingress) or []
    if not ingress:
        return ""
    return f"http://{ingress[0].hostname or ingress[0].ip}"
