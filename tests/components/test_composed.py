"""Composable args (issue 20): what another resource produces goes into the args as an Output.

examples/composed creates a Namespace and an ACM certificate and passes their outputs into
ServedModel; the engine must see the dependencies (recorded from the mock monitor), and the args'
checks of such values are deferred to when they are known, never skipped: a known bad value
fails at construction, an Output that resolves to the same bad value fails the run with the same
message, and an unknown value during a preview fails nothing.
"""
from __future__ import annotations

import kubernetes_validate
import pulumi
import pulumi_aws as aws
import pytest

from pulumi_harness import KUBERNETES_VERSION, ROOT, TEST_SECRET, kubernetes_manifest, run_callable, run_file
from servedmodel.components import ArgsError, NetworkArgs
from servedmodel.components.args import ElasticArgs, NodePoolArgs, RegistryArgs

PROGRAM = ROOT / "examples" / "composed" / "__main__.py"
PROJECT = "served-composed"
CONFIG = {"served-composed:kubeconfig": "apiVersion: v1\nkind: Config\n", "served-composed:authToken": TEST_SECRET,
          "served-composed:domain": "example.com", "served-composed:clusterName": "servedmodel-dev"}
SECRETS = {"served-composed:kubeconfig", "served-composed:authToken"}


def run_example(preview: bool = False):
    return run_file(PROGRAM, PROJECT, "example", CONFIG, SECRETS, preview=preview)


@pytest.fixture(scope="module")
def composed(model_cache):
    return run_example()


def test_the_model_runs_in_the_namespace_the_program_created(composed):
    check_namespace(composed)


def check_namespace(composed) -> None:
    ns = composed.one("kubernetes:core/v1:Namespace")
    name = ns.state["metadata"]["name"]
    for kind in ("kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Service", "kubernetes:core/v1:Secret",
                 "kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        res = composed.one(kind)
        assert res.inputs["metadata"]["namespace"] == name, kind
        # The namespace came from the Namespace's output: the engine creates it first.
        assert ns.urn in res.property_dependencies["metadata"] and res.waits_for(ns), kind
    assert composed.outputs["namespace"] == name


def test_the_load_balancer_terminates_tls_with_the_programs_certificate(composed):
    check_tls(composed)


def check_tls(composed) -> None:
    certificate = composed.one("aws:acm/certificate:Certificate")
    issued = composed.one("aws:acm/certificateValidation:CertificateValidation")
    service = composed.one("kubernetes:core/v1:Service")
    annotations = service.inputs["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] == certificate.state["arn"]
    assert service.waits_for(issued) and issued.waits_for(certificate)
    assert composed.outputs["url"] == "https://digits.example.com"
    assert composed.outputs["inferUrl"] == "https://digits.example.com/v2/models/digits/infer"


def test_the_composed_objects_are_valid_and_use_the_programs_provider(composed):
    check_objects(composed)


def check_objects(composed) -> None:
    provider = composed.one("pulumi:providers:kubernetes")
    for r in composed.resources:
        if r.type.startswith("kubernetes:"):
            assert r.provider.startswith(provider.urn + "::"), r.type
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)


def test_a_preview_with_the_certificate_not_yet_known_declares_the_same_resources(composed):
    preview = run_example(preview=True)
    assert preview.counts() == composed.counts()


# ---- every checked field that accepts another resource's output --------------------------------

LOAD_BALANCER = dict(service_type="LoadBalancer", allow_load_balancer=True, auth_token="t", tls_certificate_arn=
                     "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d", hostname="m.example.com",
                     dns_zone_id="Z0123456789ABCDEFGHIJ")
CASES = {
    "network.namespace": (NetworkArgs, "namespace", "Bad_NS", {}),
    "network.tls_certificate_arn": (NetworkArgs, "tls_certificate_arn", "my-cert", LOAD_BALANCER),
    "network.hostname": (NetworkArgs, "hostname", "Not A Host", LOAD_BALANCER),
    "network.dns_zone_id": (NetworkArgs, "dns_zone_id", "zone-1", LOAD_BALANCER),
    "node_pool.cluster_name": (NodePoolArgs, "cluster_name", "", {}),
    "node_pool.subnet_ids": (NodePoolArgs, "subnet_ids", ["subnet_1"], {"cluster_name": "c"}),
    "elastic.karpenter_subnet_ids": (ElasticArgs, "karpenter_subnet_ids", ["subnet_1"], {}),
    "elastic.karpenter_security_group_ids": (ElasticArgs, "karpenter_security_group_ids", ["group-1"], {}),
    "elastic.karpenter_node_role": (ElasticArgs, "karpenter_node_role", "arn:aws:iam::123456789012:role/n", {}),
}


def construction_error(case: str) -> str:
    cls, field, bad, others = CASES[case]
    with pytest.raises(ArgsError) as err:
        cls(**(others | {field: bad}))
    return str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_a_known_bad_value_fails_at_construction(case):
    text = construction_error(case)
    assert text.count("\n  - ") == 1 and f"  - {case} = " in text, text


def _probe(case: str):
    """A program whose args get the bad value as an Output of a certificate: known after the
    certificate is created (an update), unknown during a preview (its ARN is computed by ACM)."""
    cls, field, bad, others = CASES[case]

    def main() -> None:
        certificate = aws.acm.Certificate("probe", domain_name="probe.example.com", validation_method="DNS")
        args = cls(**(others | {field: certificate.arn.apply(lambda _: bad)}))
        pulumi.export("value", getattr(args, field))
    return main


@pytest.mark.parametrize("case", CASES)
def test_an_output_that_resolves_to_a_bad_value_fails_the_run_with_the_same_message(case):
    with pytest.raises(pulumi.RunError) as err:
        run_callable(_probe(case), "probe", "probe")
    assert str(err.value) == construction_error(case)


@pytest.mark.parametrize("case", CASES)
def test_an_unknown_value_during_a_preview_fails_nothing(case):
    run = run_callable(_probe(case), "probe", "probe", preview=True)
    assert run.one("aws:acm/certificate:Certificate")


def test_a_registry_from_another_resource_is_used_as_given():
    def main() -> None:
        certificate = aws.acm.Certificate("probe", domain_name="probe.example.com", validation_method="DNS")
        args = RegistryArgs(url=certificate.arn.apply(lambda _: "registry.example.com/team"), username="bot",
                            password=pulumi.Output.secret("pw"))
        pulumi.export("url", args.url)
    assert run_callable(main, "probe", "probe").outputs["url"] == "registry.example.com/team"
