"""TEST SCAFFOLDING: a small model of how `pulumi up` turns two program runs into steps.

Never imported by the product. It lets tests/components/test_lifecycle.py play a stack's life
(first up, no-op, model change, revert, retry, rename) under Pulumi's mocks and assert what a real
engine would do, which the mocks alone cannot show: they accept any order and any state.

Four parts, each rule citing the source it was read from:

1. PROVIDER_RULES: per resource type, which changed inputs the provider's Diff answers with a
   replacement (everything else updates in place), and whether its replacement deletes first.
2. The engine's rules (pulumi/pulumi, pkg/resource/deploy/step_generator.go and
   step_executor.go), applied by `plan`:
   - a URN only in the new run is created; only in the old one, deleted; in both with no diff
     outside ignoreChanges, no step ("same");
   - a replacement is create-before-delete unless the provider's Diff or the resource option asks
     deleteBeforeReplace: then the old one is deleted right before its replacement is created;
   - creates, updates and replacements wait for the steps of the resources they depend on; every
     delete (of a removed resource, or of a replaced one under create-before-delete) runs after
     them, in reverse dependency order;
   - deleting or replacing a `protect`ed resource fails the update; `retainOnDelete` deletes it
     from the state only.
   A replacement also changes the outputs of an auto-named resource (a new name); the model does
   not propagate those to dependents (the mocks keep names stable). The scenarios that rely on
   it say so.
3. Registry and host facts that live outside the state, where an `up` can fail although the
   plan is valid: `Registry` (an ECR repository with IMMUTABLE tags refuses a push of an existing
   tag with another digest: ECR API reference, PutImage, ImageTagAlreadyExistsException; image
   builds are not bit-reproducible, so a rebuild always has another digest; ECR refuses to delete
   a repository that holds images unless the delete forces it: ECR API reference,
   DeleteRepository, RepositoryNotEmptyException, and hashicorp/terraform-provider-aws
   internal/service/ecr/repository.go resourceRepositoryDelete sends `force_delete` from the
   state as `Force`) and `HostPorts` (the Docker engine refuses a container whose published host
   port another container holds). The registry's tags also feed the next program run
   (`Registry.holding`: what aws:ecr/getImages lists), as the real registry does.
4. What the controllers do with the steps (CONTROLLER_RULES): `Cluster` plays KEDA's admission
   webhook (a ScaledObject for a workload an HPA already scales), its finalizer and the replica
   count a keda -> hpa switch leaves; `canary_up` plays what `pulumi up` reports for a canary from
   the Rollout states Argo Rollouts writes (the provider's await, then the RolloutWait).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from pulumi_harness import Res, Run


@dataclass(frozen=True)
class ProviderRule:
    """How one provider diffs one resource type."""

    source: str
    """Repository, path and what it says."""
    replace_on: tuple[str, ...] = ()
    """Input paths (dotted, `*` matches one segment or list index) whose change is a replacement."""
    update_only: Optional[tuple[str, ...]] = None
    """When set, the inverse: only these inputs update in place, any other change replaces."""
    delete_before_replace: bool = False
    """What the provider's Diff answers for a replacement."""
    ignored: tuple[str, ...] = ()
    """Inputs the provider's Diff never reports."""
    immutable: tuple[str, ...] = ()
    """Inputs the service refuses to change in place although the provider's Diff updates them
    (an update that touches one fails); a `replaceOnChanges` on them makes it a replacement."""
    mutable_with: Optional[tuple[str, tuple[str, ...]]] = None
    """(provider setting, inputs): those of `replace_on` update in place when the resource's
    provider has the setting true and the resource is not `immutable` (a Secret's data)."""

    def replaces(self, path: str) -> bool:
        top = _segments(path)
        if self.update_only is not None:
            return not any(_covers(_segments(p), top) for p in self.update_only)
        return any(_covers(_segments(p), top) for p in self.replace_on)

    def ignores(self, path: str) -> bool:
        return any(_covers(_segments(p), _segments(path)) for p in self.ignored)

    def refuses(self, path: str) -> bool:
        return any(_covers(_segments(p), _segments(path)) for p in self.immutable)


def _segments(path: str) -> list[str]:
    return path.replace("[", ".[").split(".")


def _covers(rule: list[str], path: list[str]) -> bool:
    """True when `path` is `rule` or lies under it."""
    return len(path) >= len(rule) and all(fnmatch.fnmatchcase(p, r) for r, p in zip(rule, path))


K8S_DIFF = ("pulumi/pulumi-kubernetes provider/pkg/provider/diff.go (forceNewProperties): every kind "
            "replaces on .metadata.name and .metadata.namespace; provider.go (Diff) deletes before "
            "replacing only an object named explicitly (not auto-named) that keeps its name")
K8S_META = ("metadata.name", "metadata.namespace")

PROVIDER_RULES: dict[str, ProviderRule] = {
    "docker-build:index:Image": ProviderRule(
        source="pulumi/pulumi-docker-build provider/internal/image.go ((*Image) Diff): every changed "
               "input (tags, context, platforms, push, registries without their password, ...) and a "
               "changed build-context hash is provider.Update; Update re-runs Create (build and push). "
               "No input replaces the image.",
        ignored=("registries[*].password",),
    ),
    "docker:index/container:Container": ProviderRule(
        source="kreuzwerker/terraform-provider-docker internal/provider/resource_docker_container.go: "
               "every attribute is ForceNew (image, ports, envs, ...) except the ones listed here; "
               "pulumi/pulumi-docker provider/resources.go maps docker_container with "
               "DeleteBeforeReplace: true",
        update_only=("rm", "start", "wait", "waitTimeout", "attach", "logs", "mustRun", "restart",
                     "maxRetryCount", "removeVolumes", "tmpfs", "healthcheck", "destroyGraceSeconds",
                     "memory", "memoryReservation", "memorySwap", "cpuShares", "cpuSet", "cpuPeriod",
                     "cpuQuota", "init", "containerReadRefreshTimeoutMilliseconds",
                     "deviceReadBps", "deviceReadIops", "deviceWriteBps", "deviceWriteIops"),
        delete_before_replace=True,
    ),
    "aws:ecr/repository:Repository": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/ecr/repository.go: name and "
               "encryption_configuration are ForceNew; image_tag_mutability, "
               "image_scanning_configuration and tags are updated in place (resourceRepositoryUpdate)",
        replace_on=("name", "encryptionConfigurations"),
    ),
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/ecr/lifecycle_policy.go: policy "
               "and repository are ForceNew (no Update function); Delete calls "
               "DeleteLifecyclePolicy on the repository, so a create-before-delete replacement "
               "would delete the policy it just put",
        replace_on=("policy", "repository"),
    ),
    "aws:ec2/launchTemplate:LaunchTemplate": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/ec2/ec2_launch_template.go: name and "
               "name_prefix are ForceNew; any other change creates a new template version "
               "(CreateLaunchTemplateVersion) and moves latest_version, which a node group then rolls to",
        replace_on=("name", "namePrefix"),
    ),
    "aws:route53/record:Record": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/route53/record.go (resourceRecord): name "
               "and zone_id are ForceNew; alias, type and the rest are UPSERTed in place "
               "(resourceRecordUpdate); a create uses CREATE, which fails where the name already has a "
               "record of the type unless allow_overwrite",
        replace_on=("name", "zoneId"),
    ),
    "kubernetes:core/v1:NamespacePatch": ProviderRule(
        source="pulumi/pulumi-kubernetes provider/pkg/provider/provider.go (Patch resources, server-side "
               "apply under the resource's own field manager): a changed name or namespace targets "
               "another object (replace); a changed field is re-applied in place; a delete gives up the "
               "fields the manager owns (a label another manager also applies stays)",
        replace_on=K8S_META,
    ),
    "aws:iam/role:Role": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/iam/role.go: name, name_prefix and "
               "path are ForceNew; assume_role_policy and the rest update in place",
        replace_on=("name", "namePrefix", "path"),
    ),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/iam/role_policy_attachment.go: "
               "role and policy_arn are ForceNew (the resource has no Update)",
        replace_on=("role", "policyArn"),
    ),
    "aws:eks/nodeGroup:NodeGroup": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/eks/node_group.go: ami_type, "
               "capacity_type, cluster_name, disk_size, instance_types, node_group_name(_prefix), "
               "node_role_arn, remote_access, subnet_ids and launch_template id/name are ForceNew; "
               "labels, taint, scaling_config, update_config, version and tags update in place",
        replace_on=("amiType", "capacityType", "clusterName", "diskSize", "instanceTypes", "nodeGroupName",
                    "nodeGroupNamePrefix", "nodeRoleArn", "remoteAccess", "subnetIds",
                    "launchTemplate.id", "launchTemplate.name"),
    ),
    "kubernetes:apps/v1:Deployment": ProviderRule(
        source=K8S_DIFF + "; apps/v1 Deployment also replaces on .spec.selector (matchLabels, "
                          "matchExpressions); the pod template updates in place (a rollout)",
        replace_on=K8S_META + ("spec.selector",),
    ),
    "kubernetes:core/v1:Service": ProviderRule(
        source=K8S_DIFF + "; core/v1 Service also replaces on .spec.clusterIP",
        replace_on=K8S_META + ("spec.clusterIP",),
    ),
    "kubernetes:core/v1:Secret": ProviderRule(
        source=K8S_DIFF + "; a Secret also replaces on .type, and on .stringData and .data unless the "
                          "provider enables secret mutability (enableSecretMutable, the program's provider "
                          "sets it) and the Secret is not `immutable` (diff.go forceNewProperties: "
                          "IsSecret && (!enableSecretMutable || IsImmutable)); provider.go DiffConfig: a "
                          "changed enableSecretMutable updates the provider, only a changed cluster replaces it",
        replace_on=K8S_META + ("type", "stringData", "data"),
        mutable_with=("enableSecretMutable", ("stringData", "data")),
    ),
    "aws:kms/key:Key": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/kms/key.go: customer_master_key_spec, key_usage, "
               "multi_region, custom_key_store_id and xks_key_id are ForceNew; description, policy, "
               "enable_key_rotation, is_enabled and tags update in place (resourceKeyUpdate); "
               "deletion_window_in_days is read by the delete only (ScheduleKeyDeletion PendingWindowInDays)",
        replace_on=("customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId", "xksKeyId"),
        ignored=("deletionWindowInDays",),
    ),
    "aws:kms/alias:Alias": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/kms/alias.go: name and name_prefix are "
               "ForceNew; target_key_id updates in place (UpdateAlias)",
        replace_on=("name", "namePrefix"),
    ),
    "aws:iam/rolePolicy:RolePolicy": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/iam/role_policy.go: role, name and name_prefix "
               "are ForceNew; policy updates in place (PutRolePolicy)",
        replace_on=("role", "name", "namePrefix"),
    ),
    "aws:eks/podIdentityAssociation:PodIdentityAssociation": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/eks/pod_identity_association.go (Schema): "
               "cluster_name, namespace and service_account RequiresReplace; role_arn updates in place "
               "(UpdatePodIdentityAssociation)",
        replace_on=("clusterName", "namespace", "serviceAccount"),
    ),
    "aws:cloudwatch/logGroup:LogGroup": ProviderRule(
        source="hashicorp/terraform-provider-aws internal/service/logs/group.go: name, name_prefix and "
               "log_group_class are ForceNew; retention_in_days (PutRetentionPolicy), kms_key_id and tags "
               "update in place; a delete is DeleteLogGroup (its records go with it)",
        replace_on=("name", "namePrefix", "logGroupClass"),
    ),
    **{t: ProviderRule(source=K8S_DIFF + f"; {t.split(':')[1]} has no other force-new field", replace_on=K8S_META)
       for t in ("kubernetes:core/v1:ServiceAccount", "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
                 "kubernetes:policy/v1:PodDisruptionBudget", "kubernetes:networking.k8s.io/v1:NetworkPolicy")},
    "kubernetes:scheduling.k8s.io/v1:PriorityClass": ProviderRule(
        source=K8S_DIFF + "; PriorityClass has no other force-new field in the provider, but the API server "
                          "refuses to change `value` and `preemptionPolicy` (kubernetes/kubernetes "
                          "pkg/apis/scheduling/validation/validation.go, ValidatePriorityClassUpdate: "
                          "\"may not be changed in an update\"): an update of either fails with a 422",
        replace_on=K8S_META, immutable=("value", "preemptionPolicy"),
    ),
    # Our own dynamic provider (components/rollout_wait.py RolloutWaitProvider.diff, served by
    # pulumi/pulumi sdk/python/lib/pulumi/dynamic/__main__.py Diff): a change of the Rollout it
    # names or of that Rollout's spec is an update (the wait runs again); the kubeconfig, the
    # deadline and the poll period are how to wait and never a diff; nothing replaces it.
    "pulumi-python:dynamic/servedmodel:RolloutWait": ProviderRule(
        source="components/rollout_wait.py (RolloutWaitProvider.diff: changes only on namespace, name, "
               "specHash; replaces=[]); pulumi/pulumi sdk/python/lib/pulumi/dynamic/__main__.py (Diff answers "
               "the provider's DiffResult)",
        ignored=("__provider", "kubeconfig", "timeoutSeconds", "pollSeconds"),
    ),
    "kubernetes:core/v1:ConfigMap": ProviderRule(
        source=K8S_DIFF + "; a ConfigMap replaces on .data/.binaryData only when it is immutable, "
                          "and ours (dashboard, rule files) are not",
        replace_on=K8S_META,
    ),
    # Custom resources: the provider knows no schema-specific force-new field for a CRD kind,
    # so only the metadata rule applies (the Rollout's selector is immutable in Argo's
    # controller, not in the provider's diff; we never change it).
    **{t: ProviderRule(source=K8S_DIFF + f"; {t.split(':')[1]} is a custom resource: only the "
                                         "metadata rule applies", replace_on=K8S_META)
       for t in ("kubernetes:argoproj.io/v1alpha1:Rollout",
                 "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate",
                 "kubernetes:monitoring.coreos.com/v1:PodMonitor",
                 "kubernetes:monitoring.coreos.com/v1:PrometheusRule",
                 "kubernetes:karpenter.sh/v1:NodePool", "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
                 "kubernetes:keda.sh/v1alpha1:ScaledObject", "kubernetes:http.keda.sh/v1alpha1:HTTPScaledObject")},
}


@dataclass(frozen=True)
class Step:
    op: str
    """create | update | create-replacement | delete-replaced | delete"""
    urn: str
    paths: tuple[str, ...] = ()
    """The changed inputs (update, replacement)."""
    retain: bool = False
    """A delete of a retainOnDelete resource: removed from the state only."""

    @property
    def name(self) -> str:
        return self.urn.split("::")[-1]

    @property
    def type(self) -> str:
        return self.urn.split("::")[-2].split("$")[-1]

    def __str__(self) -> str:
        return f"{self.op} {self.name}"


class PlanError(AssertionError):
    """The engine would refuse this update (protect) or a provider would fail it."""


@dataclass
class Plan:
    steps: list[Step]
    edges: set[tuple[Step, Step]] = field(default_factory=set)
    """(a, b): the engine must finish a before it starts b."""

    def __iter__(self):
        return iter(self.steps)

    def summary(self) -> list[str]:
        return [str(s) for s in self.steps]

    def find(self, op: str, name: str) -> Step:
        found = [s for s in self.steps if s.op == op and s.name == name]
        assert len(found) == 1, f"no single {op} {name} in {self.summary()}"
        return found[0]

    def precedes(self, a: Step, b: Step) -> bool:
        """True when the engine is obliged to finish `a` before it starts `b`."""
        frontier, seen = [a], {a}
        while frontier:
            step = frontier.pop()
            for x, y in self.edges:
                if x == step and y not in seen:
                    if y == b:
                        return True
                    seen.add(y)
                    frontier.append(y)
        return False


def changed_paths(a: Any, b: Any, path: str = "") -> list[str]:
    # A nested block that appears or goes reports its leaves (a launch template added to a node
    # group changes launchTemplate.id, which is what the provider's ForceNew is on).
    if isinstance(a, dict) and b is None:
        b = {}
    if isinstance(b, dict) and a is None:
        a = {}
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += changed_paths(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in changed_paths(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def _custom(run: Optional[Run]) -> list[Res]:
    """The resources a provider manages (components have no steps of their own)."""
    return [r for r in (run.resources if run else []) if r.custom]


def rule_for(res: Res) -> Optional[ProviderRule]:
    if res.type.startswith("pulumi:providers:"):
        return None
    rule = PROVIDER_RULES.get(res.type)
    assert rule is not None, f"no diff rule for {res.type}: add one (with its source) to PROVIDER_RULES"
    return rule


def _mutable_paths(rule: ProviderRule, res: Res, run: Run) -> tuple[str, ...]:
    """The inputs `rule.mutable_with` lets update in place for this resource under its provider."""
    if rule.mutable_with is None or res.inputs.get("immutable") is True:
        return ()
    setting, paths = rule.mutable_with
    provider_urn = res.provider.split("::")
    provider = next((r for r in run.resources if r.urn == "::".join(provider_urn[:-1])), None)
    return paths if provider is not None and provider.inputs.get(setting) in (True, "true") else ()


def plan(before: Optional[Run], after: Run) -> Plan:
    """The steps `pulumi up` takes from the state `before` left to the program `after`."""
    old = {r.urn: r for r in _custom(before)}
    new = {r.urn: r for r in _custom(after)}
    steps: list[Step] = []
    forward: dict[str, Step] = {}      # urn -> its create/update/create-replacement
    deletes: list[Step] = []
    edges: set[tuple[Step, Step]] = set()

    for res in new.values():
        was = old.get(res.urn)
        rule = rule_for(res)
        if was is None:
            step = Step("create", res.urn)
        else:
            paths = [p for p in changed_paths(was.inputs, res.inputs)
                     if not (rule and rule.ignores(p))
                     and not any(_covers(_segments(i), _segments(p)) for i in res.ignore_changes)]
            if not paths:
                continue
            if rule is None:
                raise AssertionError(f"{res.urn}: provider configuration changed ({paths}); not modelled")
            mutable = _mutable_paths(rule, res, after)
            replacing = [p for p in paths if (rule.replaces(p) and not any(_covers(_segments(m), _segments(p))
                                                                          for m in mutable))
                         or any(_covers(_segments(r), _segments(p)) for r in res.replace_on_changes)]
            refused = [p for p in paths if rule.refuses(p)]
            if refused and not replacing:
                raise PlanError(f"{res.urn}: the service refuses to update {refused} in place (immutable); "
                                f"{rule.source}")
            if not replacing:
                step = Step("update", res.urn, tuple(paths))
            else:
                if was.protect:
                    raise PlanError(f"{res.urn} is protected and would be replaced (changed: {replacing})")
                step = Step("create-replacement", res.urn, tuple(paths))
                gone = Step("delete-replaced", res.urn, tuple(paths), retain=was.retain_on_delete)
                if res.delete_before_replace or rule.delete_before_replace:
                    steps.append(gone)
                    edges.add((gone, step))
                else:
                    deletes.append(gone)
        steps.append(step)
        forward[res.urn] = step
        for dep in res.dependencies:
            if dep in forward:
                edges.add((forward[dep], step))
            for s in steps:
                # A dependency deleted first (deleteBeforeReplace) is gone before this step too.
                if s.urn == dep and s.op == "delete-replaced":
                    edges.add((s, step))

    for was in old.values():
        if was.urn not in new:
            if was.protect:
                raise PlanError(f"{was.urn} is protected and would be deleted")
            deletes.append(Step("delete", was.urn, retain=was.retain_on_delete))

    # Deletes run last, dependents before what they depend on (reverse registration order of the
    # old state, which is a dependency order: a resource registers after what it uses).
    order = {r.urn: i for i, r in enumerate(_custom(before))}
    deletes.sort(key=lambda s: -order[s.urn])
    for d in deletes:
        for s in steps:
            edges.add((s, d))
    for i, d in enumerate(deletes):
        for e in deletes[i + 1:]:
            if d.urn in old and e.urn in old[d.urn].dependencies:
                edges.add((d, e))
    steps += deletes
    return Plan(steps, edges)


class Registry:
    """The image registry, which outlives the state: tags pushed by earlier `up`s stay there
    even when the state does not record them (a push that landed before the run failed).

    `tags` maps a repository URL to its tags and the digest each names. A push moves its tags to
    the build's digest; a repository deleted with force loses its images."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}

    def holding(self) -> dict[str, dict[str, str]]:
        """What the next program run finds in the registries (pulumi_harness RealisticMocks)."""
        return {repo: dict(tags) for repo, tags in self.tags.items() if tags}

    def publish(self, run: Run, steps: Iterable[Step]) -> list[str]:
        """Apply the pushes of `steps`; returns the tags pushed. Raises PlanError where the
        repository refuses a push, as ECR does for an existing tag under IMMUTABLE."""
        pushed = []
        for step in steps:
            if step.type != "docker-build:index:Image" or step.op not in ("create", "update", "create-replacement"):
                continue
            image = run.by_urn(step.urn)
            if not image.inputs.get("push"):
                continue
            for tag in image.inputs["tags"]:
                repo, version = tag.rsplit(":", 1)
                if version in self.tags.get(repo, {}) and self.mutability(run, repo) == "IMMUTABLE":
                    raise PlanError(f"{step}: {tag} already exists in an IMMUTABLE repository and this build "
                                    "has another digest (ImageTagAlreadyExistsException)")
                self.tags.setdefault(repo, {})[version] = image.state["digest"]
                pushed.append(tag)
        return pushed

    def delete_repositories(self, before: Optional[Run], steps: Iterable[Step]) -> None:
        """Apply the deletes of ECR repositories in `steps`: a retained one stays (state only), a
        forced one goes with its images, any other one that holds images is refused."""
        for step in steps:
            if step.type != "aws:ecr/repository:Repository" or step.op not in ("delete", "delete-replaced"):
                continue
            if step.retain:
                continue
            repo = before.by_urn(step.urn)
            url = repo.state.get("repositoryUrl", "")
            if self.tags.get(url) and not repo.inputs.get("forceDelete"):
                raise PlanError(f"{step}: ECR Repository ({repo.state.get('name')}) not empty, consider using "
                                "force_delete (RepositoryNotEmptyException)")
            self.tags.pop(url, None)

    @staticmethod
    def mutability(run: Run, repo: str) -> str:
        for r in run.of_type("aws:ecr/repository:Repository"):
            if r.state.get("repositoryUrl") == repo:
                # The provider's default (repository.go: Default ecr.ImageTagMutabilityMutable).
                return r.inputs.get("imageTagMutability", "MUTABLE")
        return "MUTABLE"  # a given registry: docs/deploy.md requires it to accept a re-push


class HostPorts:
    """Host ports held by the containers of the docker target. The Docker engine refuses to start
    a container on a published host port another container holds ("port is already allocated")."""

    def __init__(self, run: Optional[Run] = None) -> None:
        self.held: dict[tuple[str, int], str] = {}
        for c in (run.of_type("docker:index/container:Container") if run else []):
            for key in self._ports(c):
                self.held[key] = c.urn

    @staticmethod
    def _ports(container: Res) -> list[tuple[str, int]]:
        return [(p.get("ip", "0.0.0.0"), int(p["external"])) for p in container.inputs.get("ports", [])]

    def apply(self, after: Run, steps: Iterable[Step]) -> None:
        for step in steps:
            if step.type != "docker:index/container:Container":
                continue
            if step.op in ("delete", "delete-replaced"):
                self.held = {k: u for k, u in self.held.items() if u != step.urn}
            elif step.op in ("create", "create-replacement"):
                for key in self._ports(after.by_urn(step.urn)):
                    holder = self.held.get(key)
                    if holder is not None:  # another container, or the one this replaces (create first)
                        raise PlanError(f"{step}: host port {key[0]}:{key[1]} is still held by "
                                        f"{holder.split('::')[-1]}")
                    self.held[key] = step.urn


# --- 4. What the controllers do with the steps (issue 18) ------------------------------------------
# The engine's plan can be valid and the `up` still fail, or succeed too early, because of what a
# controller does with the objects as they reach the API server. Each rule below names the
# upstream source it was read from; docs/deploy.md's controller table says the same in prose.

HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
ROLLOUT_WAIT = "pulumi-python:dynamic/servedmodel:RolloutWait"

KEDA_WEBHOOK = (
    "kedacore/keda v2.20.2 apis/keda/v1alpha1/scaledobject_webhook.go: on CREATE and UPDATE of a "
    "ScaledObject (config/webhooks/validation_webhooks.yaml) verifyHpas lists the namespace's HPAs and "
    "refuses one whose scaleTargetRef has the ScaledObject's group/kind and name, unless the HPA is "
    "annotated validations.keda.sh/hpa-ownership: \"false\", is owned by this ScaledObject, or the "
    "ScaledObject carries scaledobject.keda.sh/transfer-hpa-ownership: \"true\" and names the HPA in "
    "spec.advanced.horizontalPodAutoscalerConfig.name; verifyScaledObjects refuses a second ScaledObject "
    "for the same workload")
KEDA_FINALIZER = (
    "kedacore/keda v2.20.2 controllers/keda/scaledobject_finalizer.go: deleting a ScaledObject stops "
    "its scale loop and, only with spec.advanced.restoreToOriginalReplicaCount, scales the target back "
    "to status.originalReplicaCount (recorded once when KEDA first reads the target: "
    "controllers/keda/scaledobject_controller.go); KEDA's own HPA goes by garbage collection")
HPA_AT_ZERO = (
    "kubernetes/kubernetes pkg/controller/podautoscaler/horizontal.go (reconcileAutoscaler): an HPA "
    "whose target has 0 replicas does nothing (ScalingActive False, reason ScalingDisabled)")
PK_AWAIT = (
    "pulumi/pulumi-kubernetes provider/pkg/metadata/overrides.go ReadyCondition: pulumi.com/skipAwait "
    "\"true\", or a custom resource without pulumi.com/waitFor, is ready at once; "
    "provider/pkg/await/condition/jsonpath.go Satisfied: an older status is skipped only when "
    "unstructured.NestedInt64 reads status.observedGeneration, and Argo writes it as a string "
    "(argoproj/argo-rollouts v1.9.1 pkg/apis/rollouts/v1alpha1/types.go); the match is string equality "
    "of the first selected value (provider/pkg/jsonpath/jsonpath.go)")
ARGO_VIEW = (
    "argoproj/argo-rollouts v1.9.1 utils/rollout/rolloututil.go GetRolloutPhase/IsFullyPromoted: phase "
    "counts only once status.observedGeneration equals metadata.generation; fully promoted is stableRS == "
    "currentPodHash; rollout/sync.go and rollout/analysis.go: an abort (status.abort, condition "
    "RolloutAborted) and an inconclusive analysis (pause condition InconclusiveAnalysisRun) stay until a "
    "spec change or a person. RolloutWait reads this view (components/rollout_wait.py rollout_verdict)")
CONTROLLER_RULES = {"keda-webhook": KEDA_WEBHOOK, "keda-finalizer": KEDA_FINALIZER, "hpa-at-zero": HPA_AT_ZERO,
                    "pulumi-kubernetes-await": PK_AWAIT, "argo-rollouts-view": ARGO_VIEW}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _target(res: Res) -> tuple[str, str, str, str]:
    """(namespace, group, kind, name) of an HPA's or ScaledObject's scale target."""
    ref = _get(res.inputs, "spec", "scaleTargetRef") or {}
    return (_get(res.inputs, "metadata", "namespace") or "default", _group(ref.get("apiVersion", "apps/v1")),
            ref.get("kind", "Deployment"), ref.get("name", ""))


def _name(res: Res) -> str:
    return _get(res.state, "metadata", "name") or _get(res.inputs, "metadata", "name") or res.name


class Cluster:
    """The autoscalers of a namespace as KEDA and the HPA controller see them while one `up`'s
    steps reach the API server: KEDA's admission of a ScaledObject (KEDA_WEBHOOK), its finalizer
    (KEDA_FINALIZER) and the replica count it leaves, and an HPA left facing 0 replicas
    (HPA_AT_ZERO). `scaled_to_zero`: the state's scale-to-zero workloads are idle (at 0), the
    case that matters for keda -> hpa."""

    def __init__(self, run: Optional[Run] = None, scaled_to_zero: bool = True) -> None:
        self.live: list[Res] = [r for r in _custom(run) if r.type in (HPA, SCALED_OBJECT)]
        self.replicas: dict[tuple[str, str, str, str], int] = {}
        self.original: dict[str, int] = {}
        for r in self.live:
            key = _target(r)
            if r.type == SCALED_OBJECT:
                low = _get(r.inputs, "spec", "minReplicaCount") or 0
                # KEDA first read a new Deployment created without `replicas`: the API default, 1.
                self.original[r.urn] = 1
                self.replicas[key] = 0 if scaled_to_zero and low == 0 else max(1, low)
            else:
                self.replicas.setdefault(key, _get(r.inputs, "spec", "minReplicas") or 1)

    def _admit(self, so: Res) -> None:
        namespace, group, kind, name = _target(so)
        annotations = _get(so.inputs, "metadata", "annotations") or {}
        transfer = annotations.get("scaledobject.keda.sh/transfer-hpa-ownership") == "true"
        named = _get(so.inputs, "spec", "advanced", "horizontalPodAutoscalerConfig", "name")
        for other in self.live:
            if other.urn == so.urn or _target(other) != (namespace, group, kind, name):
                continue
            if other.type == SCALED_OBJECT:
                raise PlanError(f"create {so.name}: the workload '{name}' is already managed by the ScaledObject "
                                f"'{_name(other)}' ({KEDA_WEBHOOK})")
            annotations = _get(other.inputs, "metadata", "annotations") or {}
            if annotations.get("validations.keda.sh/hpa-ownership") == "false":
                continue
            if transfer and named == _name(other):
                continue
            if transfer:
                raise PlanError(f"create {so.name}: the existing hpa '{_name(other)}' for workload '{name}' must be "
                                f"specified by name in advanced settings to enable ownership transfer ({KEDA_WEBHOOK})")
            raise PlanError(f"create {so.name}: the workload '{name}' of type '{kind}.{group}' is already managed by "
                            f"the hpa '{_name(other)}' ({KEDA_WEBHOOK})")

    def apply(self, before: Optional[Run], after: Run, steps: Iterable[Step]) -> None:
        """Play the steps in the order the plan lists them (every delete after every create);
        raises PlanError where a controller refuses or strands the workload."""
        for step in steps:
            if step.type not in (HPA, SCALED_OBJECT):
                continue
            if step.op in ("create", "update", "create-replacement"):
                res = after.by_urn(step.urn)
                if res.type == SCALED_OBJECT:
                    self._admit(res)
                    if step.op != "update":
                        self.original[res.urn] = self.replicas.get(_target(res)) or 1
                if step.op == "update":
                    self.live = [r for r in self.live if r.urn != res.urn]
                self.live.append(res)
                if res.type == HPA:
                    key = _target(res)
                    self.replicas.setdefault(key, _get(res.inputs, "spec", "minReplicas") or 1)
            else:
                gone = next(r for r in self.live if r.urn == step.urn)
                self.live.remove(gone)
                if (gone.type == SCALED_OBJECT
                        and _get(gone.inputs, "spec", "advanced", "restoreToOriginalReplicaCount")):
                    self.replicas[_target(gone)] = self.original.get(gone.urn, 1)
        for hpa in (r for r in self.live if r.type == HPA):
            if self.replicas.get(_target(hpa)) == 0:
                raise PlanError(f"{hpa.name}: the workload '{_target(hpa)[3]}' is left at 0 replicas and the HPA never "
                                f"scales it ({HPA_AT_ZERO}; {KEDA_FINALIZER})")


@dataclass(frozen=True)
class UpOutcome:
    """What `pulumi up` reports for a canary: `ok`, and the index of the Rollout state at which it
    returned (None: it waited until its timeout)."""

    ok: bool
    at: Optional[int]
    message: str = ""


def _provider_await(rollout: Res, states: list[dict[str, Any]]) -> Optional[int]:
    """The index of the state at which pulumi-kubernetes' own await of the Rollout is satisfied
    (PK_AWAIT); None: never, it times out."""
    annotations = _get(rollout.inputs, "metadata", "annotations") or {}
    expr = annotations.get("pulumi.com/waitFor")
    if annotations.get("pulumi.com/skipAwait") == "true" or expr is None:
        return 0
    assert expr.startswith("jsonpath={.") and "}=" in expr, f"waitFor form not modelled: {expr}"
    path, value = expr[len("jsonpath={."):].split("}=", 1)
    for i, obj in enumerate(states):
        observed = _get(obj, "status", "observedGeneration")
        if isinstance(observed, int) and observed < _get(obj, "metadata", "generation"):
            continue  # the guard: only for an int64 observedGeneration
        if str(_get(obj, *path.split("."))) == value:
            return i
    return None


def canary_up(run: Run, states: list[dict[str, Any]]) -> UpOutcome:
    """How `pulumi up` ends after it updated the Rollout's pod template, when Argo then leaves
    the Rollout in `states`, in order (the first one read right after the update). The Rollout
    step ends when the provider's await is satisfied (PK_AWAIT); a RolloutWait depending on it
    then reads the states from there on (ARGO_VIEW)."""
    rollout = run.one(ROLLOUT)
    at = _provider_await(rollout, states)
    if at is None:
        return UpOutcome(False, None, "the Rollout's await timed out")
    waits = [w for w in run.of_type(ROLLOUT_WAIT) if rollout.urn in w.dependencies]
    if not waits:
        return UpOutcome(True, at)
    from servedmodel.components.rollout_wait import DONE, FAILED, rollout_verdict
    for i in range(at, len(states)):
        verdict = rollout_verdict(states[i])
        if verdict.state == DONE:
            return UpOutcome(True, i, verdict.message)
        if verdict.state == FAILED:
            return UpOutcome(False, i, verdict.message)
    return UpOutcome(False, None, "RolloutWait timed out")
