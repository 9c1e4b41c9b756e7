"""The EKS cluster's name from another resource of the same program (issue 20).

A program that creates its cluster (pulumi-eks, `aws.eks.Cluster`) has only an Output of its name:
`NodePoolArgs.cluster_name` (and `ServedModelArgs.cluster_name`) take it. Every consumer of the
name (the managed node group, Karpenter's EC2NodeClass and default node role, the pods' EKS Pod
Identity, the audit log group, the public load balancer's subnet lookup) gets the value, and the
engine sees each of them wait for the cluster (dependencies recorded from the mock monitor). Its
check is deferred, not skipped: an Output that turns out bad fails the run with the message a
plain bad value gets at construction (tests/components/test_composed.py CASES holds
`node_pool.cluster_name` among the other such fields).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import pulumi_aws as aws
import pytest

from pulumi_harness import ACCOUNT, SUBNETS, TEST_SECRET, VPC_ID, Run, run_callable
from servedmodel.components import (
    ArgsError,
    AutoscalingArgs,
    ModelArgs,
    NetworkArgs,
    ResourcesArgs,
    ServedModel,
    ServedModelArgs,
    ServerArgs,
    specs,
)
from servedmodel.components.args import ElasticArgs, NodePoolArgs
from servedmodel.components.karpenter import DISCOVERY_TAG, KarpenterPoolArgs

CLUSTER = "platform-eks"
CLUSTER_TYPE = "aws:eks/cluster:Cluster"
# Behind a public NLB (components/edge.py reads its subnets from the cluster's VPC).
PUBLIC = NetworkArgs(namespace="models", service_type="LoadBalancer", allow_load_balancer=True, auth_token=TEST_SECRET,
                     tls_certificate_arn=f"arn:aws:acm:eu-west-1:{ACCOUNT}:certificate/0a1b2c3d-0000-4000-8000-0a1b2c3d",
                     hostname="digits.example.com", dns_zone_id="Z0123456789ABCDEFGHIJ")


def _cluster() -> aws.eks.Cluster:
    return aws.eks.Cluster("platform", name=CLUSTER, role_arn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster",
                           vpc_config={"subnet_ids": sorted(SUBNETS)[:2]})


def _program(name_of: Callable[[aws.eks.Cluster], pulumi.Input[str]], karpenter: bool = False,
             network: NetworkArgs = PUBLIC) -> Callable[[], None]:
    """A CPU model (lenet) with a Graviton pool of its own on the program's cluster, kms-encrypted
    (the pods' own identity), audited, behind a public NLB; `name_of` gives the node pool the
    cluster's name (the ServedModelArgs' own cluster_name stays unset: the pool's is the one)."""
    def main() -> None:
        cluster = _cluster()
        ServedModel("digits", ServedModelArgs(
            model=ModelArgs(served_name="eks-digits", model="lenet", compression="int8"),
            out_dir=Path("build") / "eks-digits",
            target="kubernetes",
            resources=ResourcesArgs(cpu="1", memory="1Gi"),
            autoscaling=AutoscalingArgs(replicas=1, max_replicas=2, metric="cpu"),
            network=network,
            server=ServerArgs(pre_stop_seconds=specs.NLB_DEREGISTRATION_LAG_SECONDS),
            node_pool=NodePoolArgs(cluster_name=name_of(cluster), instance_types=("c7g.xlarge",), max_size=2),
            elastic=ElasticArgs(node_provisioner="karpenter") if karpenter else ElasticArgs(),
        ))
    return main


@pytest.fixture(scope="module")
def managed(model_cache, tmp_path_factory) -> Run:
    return run_callable(_program(lambda c: c.name), "eks-program", "dev", cwd=tmp_path_factory.mktemp("managed"))


@pytest.fixture(scope="module")
def karpenter(model_cache, tmp_path_factory) -> Run:
    return run_callable(_program(lambda c: c.name, karpenter=True, network=NetworkArgs(namespace="models")),
                        "eks-program", "dev", cwd=tmp_path_factory.mktemp("karpenter"))


def _waits_for_cluster(run: Run, res: Any, prop: str) -> None:
    cluster = run.one(CLUSTER_TYPE)
    assert cluster.urn in res.property_dependencies[prop], (res.type, prop)
    assert res.waits_for(cluster), res.type


def test_the_node_group_joins_the_cluster_the_program_created(managed):
    group = managed.one("aws:eks/nodeGroup:NodeGroup")
    assert group.inputs["clusterName"] == CLUSTER
    _waits_for_cluster(managed, group, "clusterName")
    # Its subnets: the cluster's private ones, read by the cluster's (then known) name.
    assert group.inputs["subnetIds"] == sorted(i for i, tags in SUBNETS.items()
                                              if tags.get("kubernetes.io/role/internal-elb") == "1")
    looked_up = [args["name"] for token, args in managed.invokes if token == "aws:eks/getCluster:getCluster"]
    assert looked_up and set(looked_up) == {CLUSTER}


def test_the_pods_identity_and_audit_log_group_name_the_programs_cluster(managed):
    association = managed.one("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    assert association.inputs["clusterName"] == CLUSTER
    _waits_for_cluster(managed, association, "clusterName")
    role = next(r for r in managed.of_type("aws:iam/role:Role") if r.name.endswith("-pod-role"))
    [statement] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement["Condition"]["StringEquals"]["aws:RequestTag/eks-cluster-name"] == CLUSTER
    _waits_for_cluster(managed, role, "assumeRolePolicy")
    log_group = managed.one("aws:cloudwatch/logGroup:LogGroup")
    assert log_group.inputs["name"] == f"/servedmodel/{CLUSTER}/models/eks-digits/audit"
    _waits_for_cluster(managed, log_group, "name")


def test_the_load_balancer_subnets_come_from_the_programs_cluster(managed):
    service = managed.one("kubernetes:core/v1:Service")
    subnets = service.inputs["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-subnets"]
    public = sorted(i for i, tags in SUBNETS.items() if tags.get("kubernetes.io/role/elb") == "1")
    assert set(subnets.split(",")) <= set(public) and subnets
    vpc_filters = [f for token, args in managed.invokes if token == "aws:ec2/getSubnets:getSubnets"
                   for f in args.get("filters") or [] if f["name"] == "vpc-id"]
    assert vpc_filters == [{"name": "vpc-id", "values": [VPC_ID]}]


def test_karpenter_finds_the_programs_cluster_by_its_discovery_tag(karpenter):
    assert not karpenter.of_type("aws:eks/nodeGroup:NodeGroup")
    node_class = karpenter.one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
    spec = node_class.inputs["spec"]
    assert spec["subnetSelectorTerms"] == [{"tags": {DISCOVERY_TAG: CLUSTER}}]
    assert spec["securityGroupSelectorTerms"] == [{"tags": {DISCOVERY_TAG: CLUSTER}}]
    assert spec["role"] == f"KarpenterNodeRole-{CLUSTER}"  # the installation guide's name, of this cluster
    _waits_for_cluster(karpenter, node_class, "spec")
    association = karpenter.one("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    assert association.inputs["clusterName"] == CLUSTER


def _certificate_tied(value: str) -> Callable[[aws.eks.Cluster], pulumi.Input[str]]:
    """The name as an Output known only once a certificate exists (unknown during a preview)."""
    def name_of(_: aws.eks.Cluster) -> pulumi.Input[str]:
        certificate = aws.acm.Certificate("probe", domain_name="probe.example.com", validation_method="DNS")
        return certificate.arn.apply(lambda _: value)
    return name_of


def test_a_preview_with_the_cluster_name_unknown_declares_the_same_resources(model_cache, tmp_path):
    program = _program(_certificate_tied(CLUSTER))
    update = run_callable(program, "eks-program", "dev", cwd=tmp_path)
    preview = run_callable(program, "eks-program", "dev", cwd=tmp_path, preview=True)
    assert preview.counts() == update.counts()
    assert update.one("aws:eks/nodeGroup:NodeGroup").inputs["clusterName"] == CLUSTER
    # During the preview nothing was looked up by a name not known yet.
    assert not [args for token, args in preview.invokes if token == "aws:eks/getCluster:getCluster"]


def _construction_error(build: Callable[[], Any], error: type[Exception] = ArgsError) -> str:
    with pytest.raises(error) as err:
        build()
    return str(err.value)


def _raised(exc: BaseException) -> list[BaseException]:
    """The exception and the ones it was raised from (the SDK wraps an input's failure in the
    resource's and the input's names)."""
    chain: list[BaseException] = []
    at: Optional[BaseException] = exc
    while at is not None and at not in chain:
        chain.append(at)
        at = at.__cause__ or at.__context__
    return chain


def test_a_bad_cluster_name_from_another_resource_fails_the_run_like_a_plain_one(model_cache, tmp_path):
    plain = _construction_error(lambda: NodePoolArgs(cluster_name="", instance_types=("c7g.xlarge",)))
    assert "  - node_pool.cluster_name = '': the name of an existing EKS cluster" in plain
    # Deferred, not skipped: the resources that take the name fail with the same ArgsError once
    # the value is known, and the run's error says it.
    with pytest.raises(Exception) as err:
        run_callable(_program(_certificate_tied("")), "eks-program", "dev", cwd=tmp_path)
    raised = _raised(err.value)
    assert plain in str(raised[0])
    assert [str(e) for e in raised if isinstance(e, ArgsError)] == [plain]


def test_a_karpenter_pools_cluster_name_is_checked_when_known():
    base: dict[str, Any] = dict(pool_label="p", families=("g5",), supported_families=("g5",), node_role="r")
    plain = _construction_error(lambda: KarpenterPoolArgs(cluster_name="", **base), ValueError)
    assert "cluster_name is required" in plain

    def main() -> None:
        certificate = aws.acm.Certificate("probe", domain_name="probe.example.com", validation_method="DNS")
        args = KarpenterPoolArgs(cluster_name=certificate.arn.apply(lambda _: ""), **base)
        pulumi.export("cluster", args.cluster_name)
    with pytest.raises(pulumi.RunError) as err:
        run_callable(main, "probe", "probe")
    assert str(err.value) == plain
    run_callable(main, "probe", "probe", preview=True)  # unknown: nothing to check yet


def test_a_served_model_cluster_name_given_as_an_output_must_name_a_cluster():
    """"" falls back on the node pool's cluster only as a plain value: an Output is the cluster."""
    def main() -> None:
        certificate = aws.acm.Certificate("probe", domain_name="probe.example.com", validation_method="DNS")
        args = ServedModelArgs(model=ModelArgs(served_name="m", model="lenet"), out_dir=Path("build"),
                               target="kubernetes", cluster_name=certificate.arn.apply(lambda _: ""))
        assert args.eks_cluster is args.cluster_name  # given: taken as the cluster, checked when known
        pulumi.export("cluster", args.eks_cluster)
    with pytest.raises(pulumi.RunError) as err:
        run_callable(main, "probe", "probe")
    assert isinstance(err.value, ArgsError)
    assert "  - cluster_name = '': the name of an existing EKS cluster" in str(err.value)
