"""ModelService: the Kubernetes objects that serve one model image."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from servedmodel.models.contract import DEFAULT_CLIENT

from . import canary, specs
from .args import ArgsError, AutoscalingArgs, NetworkArgs, Problem, ResourcesArgs, RolloutArgs, ServerArgs
from .args.network import client_tokens
from .inputs import given, lift
from .rollout_wait import RolloutWait, RolloutWaitArgs
from .timeouts import ReadinessTimeouts, minutes_to_seconds, readiness_timeouts

# Read only by KEDA's ScaledObject admission webhook (kedacore/keda v2.20.2
# apis/keda/v1alpha1/scaledobject_types.go ValidationsHpaOwnershipAnnotation).
KEDA_HPA_OWNERSHIP_ANNOTATION = "validations.keda.sh/hpa-ownership"


@dataclass
class ModelServiceArgs:
    served_name: str
    """The model's endpoint name (labels, selectors). Required."""
    image: pulumi.Input[str]
    """Digest-pinned image reference. Required."""
    version: str
    """Model version (label/annotation: a model change is a visible rollout). Required."""
    resources: ResourcesArgs = ResourcesArgs()
    """Requests == limits, GPUs (> 0 adds the toleration), priority."""
    autoscaling: AutoscalingArgs = AutoscalingArgs()
    """Replica bounds and the HPA's metric."""
    network: NetworkArgs = NetworkArgs()
    """Namespace, Service type, NetworkPolicy sources, the auth token."""
    server: ServerArgs = ServerArgs()
    """Drain and preStop (and the server's SERVEDMODEL_* settings)."""
    rollout: RolloutArgs = RolloutArgs()
    """rolling: a Deployment; canary: an Argo Rollouts Rollout gated by an AnalysisTemplate."""
    node_selector: Optional[pulumi.Input[dict]] = None
    """The pods' nodeSelector: the labels of the model's pool (from its component's outputs, so the
    pods wait for their capacity) and the nodes' architecture; None: any node. Default None."""
    gpu_mem_limit: Optional[int] = None
    """Bytes the server's CUDA provider may hold (SERVEDMODEL_GPU_MEM_LIMIT); None: no cap. Default None."""
    startup_seconds: Optional[float] = None
    """The model's measured start-up (manifest `startup`); sizes the timeouts. None: unknown. Default None."""
    node_max: int = 0
    """Maximum nodes of the GPU pool the pods need (sizes the rollout's wait). Default 0."""
    pull_seconds: Optional[float] = None
    """Image pull time from the model's cold-start budget (components/coldstart.py); None: the
    timeouts' per-device allowance. Default None."""
    node_seconds: Optional[float] = None
    """New-node time from the cold-start budget; None: the timeouts' allowance. Default None."""
    external_autoscaler: bool = False
    """Another controller (KEDA) owns the replica count: no HPA, `replicas` left unset. Default False."""
    load_balancer_subnets: Optional[pulumi.Input[list[dict[str, str]]]] = None
    """The public NLB's subnets ({id, zone, cidr}: components/edge.py), with a LoadBalancer: pinned
    on the Service, their CIDRs admitted by the NetworkPolicy. Default None."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """More labels on every object. Default {}."""
    kubeconfig: Optional[pulumi.Input[str]] = field(default=None, repr=False)
    """The cluster's kubeconfig, for the canary's RolloutWait; None: the Kubernetes client's own
    lookup. Default None."""
    encryption: str = "none"
    """kms or none: how the image's model is encrypted (the pod template says so; the policy pack
    reads it). Default "none"."""
    model_key_arn: Optional[pulumi.Input[str]] = None
    """With kms: the model's KMS key. The pods get their own identity (EKS Pod Identity: an IAM
    role allowed only kms:Decrypt on this key for this served name's data keys). Default None."""
    cluster_name: pulumi.Input[str] = ""
    """The EKS cluster (the Pod Identity association, the audit log group's name); another
    resource's output too. Default ""."""
    protect: bool = False
    """Protect the audit log group from deletion (prod). Default False."""
    retain_audit_log: bool = False
    """Keep the audit log group (and its records) when the stack deletes it. Default False."""


class ModelService(pulumi.ComponentResource):
    """ServiceAccount, Deployment, Service, HPA, PDB, NetworkPolicy (and Secret, PriorityClass).

    With `rollout.strategy: canary` the Deployment is an Argo Rollouts `Rollout` with the same
    pod template (and an `AnalysisTemplate` for its background analysis); the HPA scales it.
    Behind the public NLB the namespace carries the load balancer controller's readiness-gate
    label (a NamespacePatch: the namespace is the platform's), and the workload waits for it and
    for the Service, so every pod is created with its target-health gate.

    Every object is auto-named (a replacement creates the new object before deleting the old),
    selects on stable labels only, and takes its provider from the consumer (opts.providers).
    The namespace, certificate ARN and hostname may be other resources' outputs.
    Outputs: `url` (in-cluster DNS name, or https://<hostname> of the public endpoint),
    `deployment_name` (the Deployment's or the Rollout's: the workload), `service_name`,
    `load_balancer_hostname` (the NLB's own name; "" without one).
    """

    url: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    service_name: pulumi.Output[str]
    load_balancer_hostname: pulumi.Output[str]

    def __init__(self, name: str, args: ModelServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        res, scale, net, srv = args.resources, args.autoscaling, args.network, args.server
        lifecycle, grace = specs.termination(srv.pre_stop_seconds, srv.drain_seconds)
        waits = readiness_timeouts(args.startup_seconds, res.device, scale.max_replicas, args.node_max,
                                   pull_seconds=args.pull_seconds, node_seconds=args.node_seconds,
                                   termination_seconds=grace)
        selector = specs.selector_labels(args.served_name)
        obj_labels = specs.labels(args.served_name) | args.extra_labels

        def meta(**extra: Any) -> specs.Json:
            return {"namespace": net.namespace, "labels": obj_labels} | extra

        sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=meta(), automount_service_account_token=False, opts=child)
        # What the workload waits for besides its capacity: the pods' AWS identity must exist
        # before a pod is created (EKS injects the Pod Identity credentials at admission only).
        identity_deps: list[pulumi.Resource] = []
        template_annotations: dict[str, Any] = {specs.ENCRYPTION_ANNOTATION: args.encryption}
        if args.encryption == "kms" and args.model_key_arn is not None:
            identity_deps = self._pod_identity(name, args, sa, args.model_key_arn)
            template_annotations[specs.KEY_ANNOTATION] = args.model_key_arn

        clients_secret_name = None
        if net.clients is not None:
            document = self._clients_document(net)
            clients = k8s.core.v1.Secret(
                f"{name}-clients", metadata=meta(), type="Opaque",
                # Mutable: a rotation updates it in place (the program's provider enables secret
                # mutability; pulumi-kubernetes provider/pkg/provider/diff.go); the checksum on the
                # pod template rolls the pods, which read the file only at start.
                string_data={specs.CLIENTS_KEY: document}, opts=child)
            clients_secret_name = clients.metadata.name
            # The checksum of the digests' document is not secret (it names no token and no
            # digest); in the clear, a preview shows that the clients changed.
            template_annotations[specs.CLIENTS_ANNOTATION] = pulumi.Output.unsecret(
                document.apply(specs.document_checksum))

        if srv.audit and srv.audit_retention_days and given(args.cluster_name):
            # The audit records' durable home: the cluster's log shipper (Fluent Bit, the CloudWatch
            # agent) routes the `"log":"audit"` lines here (docs/deploy.md, "Audit"). Named, so the
            # shipper can compute it; kept on delete where the stack keeps its registry.
            aws.cloudwatch.LogGroup(
                f"{name}-audit",
                name=lift(lambda cluster, ns: specs.audit_log_group_name(cluster, ns, args.served_name),
                          args.cluster_name, net.namespace),
                retention_in_days=srv.audit_retention_days,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=args.retain_audit_log))

        auth_secret_name = None
        if net.auth_token is not None:
            secret = k8s.core.v1.Secret(
                f"{name}-auth", metadata=meta(), type="Opaque",
                # Immutable: a new token replaces the Secret (new auto-name), which rolls the pods.
                immutable=True,
                string_data={specs.AUTH_TOKEN_KEY: pulumi.Output.secret(net.auth_token)}, opts=child)
            auth_secret_name = secret.metadata.name

        priority_class_name = None
        if res.priority > 0:
            # `value` and `preemptionPolicy` are immutable in the API server
            # (kubernetes/kubernetes pkg/apis/scheduling/validation/validation.go,
            # ValidatePriorityClassUpdate) and pulumi-kubernetes does not replace on them
            # (provider/pkg/provider/diff.go): a changed priority replaces the (auto-named) class,
            # the pods then roll to the new name.
            pc = k8s.scheduling.v1.PriorityClass(
                f"{name}-priority", metadata={"labels": obj_labels}, value=res.priority,
                global_default=False, preemption_policy="PreemptLowerPriority",
                description=f"servedmodel {args.served_name}",
                opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["value", "preemptionPolicy"]))
            priority_class_name = pc.metadata.name

        container: dict[str, Any] = {
            "name": "server",
            "image": args.image,
            "ports": specs.container_ports(net.grpc_port),
            "env": specs.server_env(res.device, srv.drain_seconds, auth_secret_name is not None,
                                    model_name=args.served_name, grpc_port=net.grpc_port,
                                    settings=srv.batching_env(), gpu_mem_limit=args.gpu_mem_limit,
                                    identity=specs.Identity(
                                        clients_file=clients_secret_name is not None,
                                        oidc_issuer=net.oidc_issuer, oidc_audience=net.oidc_audience,
                                        oidc_scope=net.oidc_scope, audit=srv.audit)),
            "resources": specs.resources(res.cpu, res.memory, res.gpu),
            "securityContext": specs.container_security_context(),
            "volumeMounts": [{"name": specs.TMP_VOLUME, "mountPath": "/tmp"}]
            + ([specs.auth_token_mount()] if auth_secret_name is not None else [])
            + ([specs.clients_mount()] if clients_secret_name is not None else []),
            **specs.probes(net.grpc_port, waits.startup_failure_threshold),
        }
        if lifecycle:
            container["lifecycle"] = lifecycle
        pod_spec: dict[str, Any] = {
            "serviceAccountName": sa.metadata.name,
            "automountServiceAccountToken": False,
            # No SERVEDMODEL_*_SERVICE_HOST/_PORT variables from the namespace's Services: the server
            # refuses SERVEDMODEL_* variables it does not know (it lets these pass, but a pod of
            # another tool's Service named servedmodel-... should not depend on that).
            "enableServiceLinks": False,
            "securityContext": specs.pod_security_context(),
            "terminationGracePeriodSeconds": grace,
            # Spread per revision: Argo labels its pods rollouts-pod-template-hash instead.
            "topologySpreadConstraints": specs.topology_spread(
                args.served_name, canary.HASH_POD_LABEL if args.rollout.canary else "pod-template-hash"),
            "volumes": [{"name": specs.TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}}]
            + ([specs.auth_token_volume(auth_secret_name)] if auth_secret_name is not None else [])
            + ([specs.clients_volume(clients_secret_name)] if clients_secret_name is not None else []),
            "containers": [container],
        }
        if res.gpu > 0:
            pod_spec["tolerations"] = specs.gpu_tolerations(res.gpu)
        if args.node_selector is not None:
            pod_spec["nodeSelector"] = args.node_selector
        if priority_class_name is not None:
            pod_spec["priorityClassName"] = priority_class_name

        public = net.service_type == "LoadBalancer"
        subnets = pulumi.Output.from_input(args.load_balancer_subnets or [])
        if public:
            def annotations(found: list[dict[str, str]]) -> dict[str, str]:
                out = specs.public_load_balancer_annotations(
                    net.tls_certificate_arn, net.grpc_port, pre_stop_seconds=srv.pre_stop_seconds,
                    drain_seconds=srv.drain_seconds, subnet_ids=[s["id"] for s in found])
                if net.allow_load_balancer:
                    out[specs.LOAD_BALANCER_OPT_IN] = "true"
                return out
            service_meta: Any = subnets.apply(lambda found: meta(annotations=annotations(found)))
        else:
            service_meta = meta()
        # Declared before the workload: the load balancer controller injects a pod's readiness
        # gate only when a Service (its target group) already selects the pod at its creation.
        service = k8s.core.v1.Service(
            f"{name}-svc", metadata=service_meta,
            spec=specs.as_json({"type": net.service_type, "selector": selector,
                                "ports": specs.service_ports(net.grpc_port, tls=public)}),
            # A LoadBalancer's await lasts until its NLB has a name (pods, created after it, are
            # not waited for: an empty Endpoints settles after 10 s).
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=pulumi.CustomTimeouts(
                create=waits.service, update=waits.service)) if public else child)
        workload_deps: list[pulumi.Resource] = list(identity_deps)
        if public:
            key, value = specs.READINESS_GATE_LABEL
            gates = k8s.core.v1.NamespacePatch(
                f"{name}-readiness-gates", metadata={"name": net.namespace, "labels": {key: value}}, opts=child)
            workload_deps += [gates, service]

        # With KEDA (external_autoscaler) the ScaledObject owns the replica count: no HPA here.
        autoscaled = scale.max_replicas > scale.replicas and not args.external_autoscaler
        template = {
            "metadata": {"labels": specs.labels(args.served_name, args.version) | args.extra_labels,
                         "annotations": {specs.VERSION_ANNOTATION: args.version} | specs.scrape_annotations()
                         | template_annotations},
            "spec": pod_spec,
        }
        if args.rollout.canary:
            workload = self._canary(name, args, meta, selector, template, autoscaled or args.external_autoscaler,
                                    waits, pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                                        depends_on=workload_deps)))
            workload_name = _name_of(workload)
            scale_target = {"apiVersion": canary.ROLLOUT_API_VERSION, "kind": "Rollout"}
        else:
            deploy_spec: specs.Json = {
                "selector": {"matchLabels": selector},
                "strategy": specs.rolling_update(),
                "revisionHistoryLimit": specs.REVISION_HISTORY_LIMIT,
                "progressDeadlineSeconds": waits.progress_deadline_seconds,
                "template": template,
            }
            if not autoscaled and not args.external_autoscaler:
                # With an HPA (or KEDA), `replicas` stays unset: setting it would reset the HPA's count on every up.
                deploy_spec["replicas"] = scale.replicas
            workload = k8s.apps.v1.Deployment(
                f"{name}-deploy", metadata=meta(annotations={specs.VERSION_ANNOTATION: args.version}),
                spec=deploy_spec, opts=pulumi.ResourceOptions(parent=self, depends_on=workload_deps,
                                                              custom_timeouts=pulumi.CustomTimeouts(
                                                                  create=waits.deployment, update=waits.deployment)))
            workload_name = workload.metadata.name
            scale_target = {"apiVersion": "apps/v1", "kind": "Deployment"}


        if autoscaled:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                # KEDA's admission webhook refuses a ScaledObject for a workload an HPA scales,
                # unless the HPA carries this annotation (kedacore/keda v2.20.2
                # apis/keda/v1alpha1/scaledobject_webhook.go verifyHpas): Pulumi creates the new
                # ScaledObject before it deletes this HPA, so `autoscaler: hpa -> keda` works in
                # one `up` only with it. Nothing else reads it.
                f"{name}-hpa", metadata=meta(annotations={KEDA_HPA_OWNERSHIP_ANNOTATION: "false"}),
                spec=specs.as_json({"scaleTargetRef": scale_target | {"name": workload_name},
                                    "minReplicas": scale.replicas, "maxReplicas": scale.max_replicas,
                                    "metrics": [specs.hpa_metric(scale.metric, scale.target_inflight,
                                                                 scale.target_queue_ms, scale.target_cpu_percent)],
                                    "behavior": specs.hpa_behavior()}),
                opts=child)

        if scale.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata=meta(),
                spec=specs.as_json({"maxUnavailable": 1, "selector": {"matchLabels": selector}}), opts=child)

        # The NLB's forwarded connections and health checks come from its own subnets (client IP
        # preservation off): those CIDRs, never the VPC range (components/edge.py).
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", metadata=meta(),
            spec=subnets.apply(lambda found: specs.as_json({
                "podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                "ingress": specs.network_policy_ingress(
                    net.ingress_namespaces,
                    tuple(dict.fromkeys(net.ingress_cidrs + tuple(sorted(s["cidr"] for s in found)))),
                    net.grpc_port)})),
            opts=child)

        if public:
            # The public name (its certificate covers it; required with a LoadBalancer), never the
            # NLB's own: known once the load balancer is.
            url = pulumi.Output.all(service.status, net.hostname).apply(lambda v: f"https://{v[1]}")
            lb_hostname = service.status.apply(_load_balancer_hostname)
        else:
            url = pulumi.Output.concat("http://", service.metadata.name, ".", net.namespace, ".svc.cluster.local")
            lb_hostname = pulumi.Output.from_input("")
        self.url = url
        self.load_balancer_hostname = lb_hostname
        self.deployment_name = workload_name
        self.service_name = service.metadata.name
        # One pod from scheduling to ready (new node, pull, startup probe budget): the KEDA HTTP
        # interceptor holds a request this long for an idle model.
        self.pod_seconds = waits.pod_seconds
        self.register_outputs({"url": url, "deployment_name": self.deployment_name,
                               "service_name": self.service_name, "load_balancer_hostname": lb_hostname})

    def _pod_identity(self, name: str, args: ModelServiceArgs, sa: k8s.core.v1.ServiceAccount,
                      key_arn: pulumi.Input[str]) -> list[pulumi.Resource]:
        """The pods' own AWS identity (EKS Pod Identity; docs/deploy.md, "The pods' identity"): an
        IAM role that only EKS Pod Identity may assume, for this cluster, namespace and service
        account; allowed only kms:Decrypt on the model's key for data keys whose encryption
        context names this served name; associated with the pods' service account."""
        namespace = args.network.namespace
        role = aws.iam.Role(
            f"{name}-pod-role",
            description=f"servedmodel {args.served_name}: the pods' identity, which unwraps the model's data key",
            assume_role_policy=pulumi.Output.all(args.cluster_name, namespace, sa.metadata.name).apply(
                lambda v: specs.pod_identity_trust_policy(v[0], v[1], v[2])),
            opts=pulumi.ResourceOptions(parent=self))
        decrypt = aws.iam.RolePolicy(
            f"{name}-pod-decrypt", role=role.id,
            policy=pulumi.Output.from_input(key_arn).apply(
                lambda arn: specs.model_decrypt_policy(arn, args.served_name)),
            opts=pulumi.ResourceOptions(parent=self))
        association = aws.eks.PodIdentityAssociation(
            f"{name}-pod-identity", cluster_name=args.cluster_name, namespace=namespace,
            service_account=sa.metadata.name, role_arn=role.arn, opts=pulumi.ResourceOptions(parent=self))
        return [decrypt, association]

    @staticmethod
    def _clients_document(net: NetworkArgs) -> pulumi.Output[str]:
        """The clients file (specs.clients_document: digests only), a secret Output. A name the
        auth token already takes is refused here too when the clients were an Output."""
        def document(clients: Any) -> str:
            if net.auth_token is not None and DEFAULT_CLIENT in clients:
                raise ArgsError("NetworkArgs", [Problem("network.clients", DEFAULT_CLIENT, (
                    f"the client {DEFAULT_CLIENT!r} is the one @{{network.auth_token}} names: rename it, or move "
                    "that token into @{network.clients}"))])
            return specs.clients_document(client_tokens(clients))
        return pulumi.Output.secret(pulumi.Output.from_input(net.clients).apply(document))

    @staticmethod
    def _canary(name: str, args: ModelServiceArgs, meta: Any, selector: dict[str, str], template: dict[str, Any],
                autoscaled: bool, waits: ReadinessTimeouts,
                child: pulumi.ResourceOptions) -> k8s.apiextensions.CustomResource:
        """The AnalysisTemplate, the Rollout (full pod template, not a workloadRef: one owner of
        the pods; docs/deploy.md) and, when the steps end on their own, the RolloutWait that
        makes `pulumi up` return when the new revision is fully promoted and fail when the
        canary aborts (the Rollout itself is not awaited: components/rollout_wait.py)."""
        rollout, namespace = args.rollout, args.network.namespace
        analysis = k8s.apiextensions.CustomResource(
            f"{name}-analysis", api_version=canary.ROLLOUT_API_VERSION, kind="AnalysisTemplate",
            metadata=meta(), spec=lift(lambda ns: canary.analysis_template_spec(rollout, ns), namespace), opts=child)
        base = canary.RolloutSpec(selector=selector, template=template,
                                  replicas=None if autoscaled else args.autoscaling.replicas,
                                  progress_deadline_seconds=waits.progress_deadline_seconds)
        workload: Any = k8s.apiextensions.CustomResource(  # (a custom resource's outputs: untyped)
            f"{name}-rollout", api_version=canary.ROLLOUT_API_VERSION, kind="Rollout",
            metadata=meta(annotations={specs.VERSION_ANNOTATION: args.version} | canary.rollout_annotations()),
            spec=canary.rollout_spec(base, rollout, _name_of(analysis)), opts=child)
        if canary.awaitable(rollout):
            timeout = canary.rollout_timeout_seconds(rollout, base.progress_deadline_seconds,
                                                     pods_seconds=minutes_to_seconds(waits.deployment))
            RolloutWait(f"{name}-rollout-wait", RolloutWaitArgs(
                namespace=namespace, name=_name_of(workload), spec=workload.spec, timeout_seconds=timeout,
                kubeconfig=args.kubeconfig),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[workload])))
        return workload


def _name_of(resource: Any) -> pulumi.Output[str]:
    """A custom resource's (auto-)name: its metadata is an untyped object."""
    return resource.metadata.apply(lambda m: m["name"] if isinstance(m, dict) else m.name)


def _load_balancer_hostname(status: Any) -> str:
    """The NLB's DNS name from the Service's status (the alias record's target)."""
    ingress = (status and status.load_balancer and status.load_balancer.ingress) or []
    if not ingress:
        return ""
    return ingress[0].hostname or ingress[0].ip
