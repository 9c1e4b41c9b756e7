"""ServedModelArgs: everything one ServedModel needs, grouped; never the whole stack config."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import pulumi

from ..gpus import DEFAULT_GPU_INSTANCE_TYPES
from ..inputs import check_input, given, is_plain
from .autoscaling import AutoscalingArgs
from .checking import ArgsError, ArgsGroup, Checker, Problem, one_of
from .elastic import ElasticArgs
from .encryption import EncryptionArgs
from .model import ModelArgs
from .monitoring import MonitoringArgs
from .network import NetworkArgs
from .node_pool import NodePoolArgs
from .registry import RegistryArgs
from .resources import ResourcesArgs
from .rollout import RolloutArgs
from .rules import cross_group_problems
from .server import ServerArgs
from .setting import setting

TARGETS = ("docker", "kubernetes")


def _named_cluster(value: object) -> Optional[str]:
    """An Output given as the cluster must name one ("" falls back on the node pool's only when plain)."""
    return None if isinstance(value, str) and value else (
        "the name of an existing EKS cluster (given as an Output, it is the cluster: leave the field \"\" "
        "for the node pool's)")


@dataclass(frozen=True)
class ServedModelArgs:
    """Everything one ServedModel needs, grouped; never the whole stack config.

    Each group checked itself when it was created; this adds the rules that span groups
    (components/args/rules.py) and raises one ArgsError with every problem.
    """

    model: ModelArgs
    """Which model and its served name. Required."""
    out_dir: Path
    """Where models.build writes the build context (relative to the project directory). Required."""
    target: str = setting("docker", "Where the model is served. \"docker\" (local containers) or \"kubernetes\" (EKS).",
                          check=one_of(TARGETS))
    resources: ResourcesArgs = ResourcesArgs()
    """Requests == limits, GPUs, priority. Default: 1 CPU, 1Gi, no GPU."""
    autoscaling: AutoscalingArgs = AutoscalingArgs()
    """Replica bounds and the HPA's signal. Default: one replica."""
    network: NetworkArgs = NetworkArgs()
    """Namespace, Service type, NetworkPolicy sources, TLS, the auth token. Default: ClusterIP in "default"."""
    server: ServerArgs = ServerArgs()
    """Drain, preStop and batching. Default: the server's."""
    registry: RegistryArgs = RegistryArgs()
    """Where the image is pushed. Default: an ECR repository per model (kubernetes target)."""
    node_pool: Optional[NodePoolArgs] = None
    """The model's own node pool (kubernetes target): required with resources.gpu > 0; a CPU model
    with one (and its instance types) gets CPU nodes of its own, e.g. Graviton. Default None."""
    rollout: RolloutArgs = RolloutArgs()
    """rolling (default) or a metric-gated canary with Argo Rollouts (kubernetes target)."""
    monitoring: MonitoringArgs = MonitoringArgs()
    """PodMonitor, rules and alerts, dashboard (kubernetes target). Default: none."""
    elastic: ElasticArgs = field(default_factory=ElasticArgs)
    """Karpenter / KEDA / scale to zero and the cold-start budget's inputs. Default: managed nodes, HPA."""
    encryption: EncryptionArgs = EncryptionArgs()
    """The model's encryption in the image and its key. Default: kms on kubernetes, a local key on docker."""
    protect: bool = setting(False, "Protect the registry and the GPU node pool from deletion (set on prod).")
    cluster_name: pulumi.Input[str] = ""
    """The existing EKS cluster (kubernetes target): its VPC holds the public load balancer's
    subnets (components/edge.py). "" = the node pool's cluster_name. Another resource's output too
    (an `aws.eks.Cluster`'s name). Default ""."""
    cache_dir: Optional[Path] = None
    """models.build cache; None uses $SERVEDMODEL_CACHE or ~/.cache/servedmodel. Default None."""
    kubeconfig: Optional[pulumi.Input[str]] = field(default=None, repr=False, compare=False,
                                                    metadata={"secret": True})
    """The cluster's kubeconfig (a secret), for the canary's RolloutWait, which reads the Rollout
    itself (components/rollout_wait.py); the program passes the one its Kubernetes provider
    uses. None: the Kubernetes client's own lookup (KUBECONFIG, ~/.kube/config, in-cluster).
    Default None."""

    def __post_init__(self) -> None:
        for f in fields(self):
            expected = GROUP_TYPES.get(f.name)
            value = getattr(self, f.name)
            if (expected is not None and not isinstance(value, expected)
                    and not (f.name == "node_pool" and value is None)):
                raise TypeError(f"ServedModelArgs.{f.name} must be a {expected.__name__}")
        c = Checker("", self)
        c.declared()
        groups = {name: getattr(self, name) for name in GROUP_TYPES}
        if c.ok("target"):
            groups["target"] = self.target
        problems = c.problems + cross_group_problems(groups)
        if not is_plain(self.cluster_name):
            # Given as an Output, it is the cluster (whether to fall back on the node pool's is
            # decided now): it must turn out to name one.
            kept, _ = check_input(self.cluster_name, _named_cluster, lambda known, text: ArgsError(
                "ServedModelArgs", [Problem("cluster_name", known, text)]))
            object.__setattr__(self, "cluster_name", kept)
        if (self.kubernetes and self.network.service_type == "LoadBalancer" and not given(self.cluster_name)
                and self.node_pool is None and not self.network.load_balancer_subnet_ids):
            problems.append(Problem("cluster_name", self.cluster_name,
                                    "a public load balancer's subnets are found in the cluster's VPC: name the "
                                    "cluster, or list @{network.load_balancer_subnet_ids}"))
        if self.kubernetes and self.encryption_mode == "kms" and not given(self.eks_cluster):
            problems.append(Problem("cluster_name", self.cluster_name,
                                    "a kms-encrypted model is unwrapped by its pods' own identity, an EKS Pod Identity "
                                    "association in the cluster: name the cluster"))
        if problems:
            raise ArgsError("ServedModelArgs", problems)

    @property
    def kubernetes(self) -> bool:
        return self.target == "kubernetes"

    @property
    def encryption_mode(self) -> str:
        """kms, local or none: @{encryption.mode}, else the target's default."""
        return self.encryption.resolved(self.kubernetes)

    @property
    def eks_cluster(self) -> pulumi.Input[str]:
        """The EKS cluster the pods run in: `cluster_name`, else the node pool's ("" when neither
        names one: the docker target). An Output when the one it takes is (never tested for truth:
        `inputs.given` says whether it names one)."""
        if given(self.cluster_name):
            return self.cluster_name
        return self.node_pool.cluster_name if self.node_pool is not None else ""

    @property
    def pool_instance_types(self) -> tuple[str, ...]:
        """The instance types of the model's own pool (a GPU model's default when it lists none);
        () when it has no pool."""
        if not self.kubernetes or self.node_pool is None:
            return ()
        if self.node_pool.instance_types:
            return self.node_pool.instance_types
        return DEFAULT_GPU_INSTANCE_TYPES if self.resources.gpu > 0 else ()

    @property
    def has_pool(self) -> bool:
        """The model declares a node pool of its own (managed node group or Karpenter)."""
        return bool(self.pool_instance_types)


def _group_types() -> dict[str, type]:
    """ServedModelArgs field -> its group's class (node_pool may be None), from the annotations."""
    # pulumi.Input names Output[T] by a forward reference: resolving it needs both names.
    hints = typing.get_type_hints(ServedModelArgs, localns={"Output": pulumi.Output, "T": typing.TypeVar("T")})
    out = {}
    for f in fields(ServedModelArgs):
        tp = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        if isinstance(tp, type) and issubclass(tp, ArgsGroup):
            out[f.name] = tp
    return out


GROUP_TYPES = _group_types()
