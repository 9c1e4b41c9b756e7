"""Every policy rule with passing and violating inputs, and the program's own objects passing all."""
from __future__ import annotations

import ast
import copy
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("servedmodel_policy_rules", ROOT / "policy" / "rules.py")
assert _spec is not None and _spec.loader is not None
rules = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rules
_spec.loader.exec_module(rules)

DEPLOY = "kubernetes:apps/v1:Deployment"
DIGEST = "sha256:" + "ab" * 32


def good_deployment() -> dict:
    return {"spec": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "server",
            "image": f"123.dkr.ecr.eu-west-1.amazonaws.com/m:3f9c0a1b2c4d5e6f@{DIGEST}",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                          "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}},
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }]}}}}


def container(props: dict) -> dict:
    return props["spec"]["template"]["spec"]["containers"][0]


def test_a_good_deployment_passes_every_rule():
    assert rules.violations(DEPLOY, good_deployment()) == {}


@pytest.mark.parametrize("image, ok", [
    (f"repo/m:3f9c0a1b2c4d5e6f@{DIGEST}", True),
    (f"repo/m@{DIGEST}", True),
    ("repo/m:3f9c0a1b2c4d5e6f", True),       # a model version (content hash)
    ("registry:5000/m:1.4.2", True),          # a semantic version; the port is not a tag
    ("repo/m:v2.0", True),
    ("repo/m:latest", False),
    ("repo/m", False),
    ("registry:5000/m", False),
    ("repo/m:main", False),
    ("repo/m:stable", False),
])
def test_no_mutable_tags(image, ok):
    props = good_deployment()
    container(props)["image"] = image
    assert (rules.no_mutable_tags(DEPLOY, props) == []) is ok
    assert (rules.no_mutable_tags("docker-build:index:Image", {"tags": [image]}) == []) is ok


def test_a_build_may_also_push_the_stacks_build_marker_beside_its_version():
    """The marker (components/model_image.py) records which version the stack's build last
    pushed; it moves by design and no workload runs it."""
    sys.path.insert(0, str(ROOT))
    from servedmodel.components.model_image import BUILD_MARKER_PREFIX

    assert rules.BUILD_MARKER_PREFIX == BUILD_MARKER_PREFIX
    tags = ["repo/m:3f9c0a1b2c4d5e6f", f"repo/m:{BUILD_MARKER_PREFIX}prod"]
    assert rules.no_mutable_tags("docker-build:index:Image", {"tags": tags}) == []
    # Alone it is a mutable tag like any other, and a workload may never run it.
    assert rules.no_mutable_tags("docker-build:index:Image", {"tags": tags[1:]})
    props = good_deployment()
    container(props)["image"] = tags[1]
    assert rules.no_mutable_tags(DEPLOY, props)


def test_no_mutable_tags_ignores_values_unknown_during_preview():
    props = good_deployment()
    container(props)["image"] = None
    assert rules.no_mutable_tags(DEPLOY, props) == []


def test_requests_and_limits():
    props = good_deployment()
    del container(props)["resources"]["limits"]["memory"]
    [msg] = rules.requests_and_limits(DEPLOY, props)
    assert "resources.limits must set memory" in msg and "'server'" in msg
    props = good_deployment()
    del container(props)["resources"]
    assert len(rules.requests_and_limits(DEPLOY, props)) == 2


def test_gpu_limit_equals_request():
    props = good_deployment()
    container(props)["resources"]["limits"]["nvidia.com/gpu"] = "2"
    [msg] = rules.gpu_limit_equals_request(DEPLOY, props)
    assert "nvidia.com/gpu request (1) must equal its limit (2)" in msg
    del container(props)["resources"]["requests"]["nvidia.com/gpu"]
    assert rules.gpu_limit_equals_request(DEPLOY, props)
    for kind in ("requests", "limits"):
        container(props)["resources"][kind].pop("nvidia.com/gpu", None)
    assert rules.gpu_limit_equals_request(DEPLOY, props) == []  # CPU pods are fine


def test_probes_present():
    props = good_deployment()
    del container(props)["livenessProbe"]
    [msg] = rules.probes_present(DEPLOY, props)
    assert "livenessProbe missing" in msg
    del container(props)["readinessProbe"]
    assert "readinessProbe and livenessProbe missing" in rules.probes_present(DEPLOY, props)[0]


@pytest.mark.parametrize("mutate, needle", [
    (lambda p: container(p)["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation false"),
    (lambda p: container(p)["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem true"),
    (lambda p: container(p)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "capabilities.drop [ALL]"),
    (lambda p: p["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot true"),
    (lambda p: p["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile RuntimeDefault"),
    (lambda p: container(p)["securityContext"].update(privileged=True), "no privileged"),
])
def test_hardened_security_context(mutate, needle):
    props = good_deployment()
    mutate(props)
    [msg] = rules.hardened_security_context(DEPLOY, props)
    assert needle in msg


def test_container_level_run_as_non_root_false_overrides_the_pod():
    props = good_deployment()
    container(props)["securityContext"]["runAsNonRoot"] = False
    assert "runAsNonRoot true" in rules.hardened_security_context(DEPLOY, props)[0]


def test_cronjob_pod_spec_is_found():
    props = {"spec": {"jobTemplate": copy.deepcopy(good_deployment())}}
    container(props["spec"]["jobTemplate"])["image"] = "busybox:latest"
    assert rules.no_mutable_tags("kubernetes:batch/v1:CronJob", props)


def test_rollout_pod_template_gets_the_same_rules():
    """A canary's pods come from an Argo Rollouts Rollout: its pod template is checked too."""
    rollout = good_deployment()
    assert rules.violations("kubernetes:argoproj.io/v1alpha1:Rollout", rollout) == {}
    container(rollout)["image"] = "example/model:latest"
    del container(rollout)["readinessProbe"]
    found = rules.violations("kubernetes:argoproj.io/v1alpha1:Rollout", rollout)
    assert len(found) >= 2, found


def test_load_balancer_needs_the_opt_in():
    svc = {"metadata": {}, "spec": {"type": "LoadBalancer"}}
    [msg] = rules.no_unapproved_load_balancer("kubernetes:core/v1:Service", svc)
    assert rules.LOAD_BALANCER_OPT_IN in msg
    svc["metadata"]["annotations"] = {rules.LOAD_BALANCER_OPT_IN: "true"}
    assert rules.no_unapproved_load_balancer("kubernetes:core/v1:Service", svc) == []
    assert rules.no_unapproved_load_balancer("kubernetes:core/v1:Service", {"spec": {"type": "ClusterIP"}}) == []


LBC = "service.beta.kubernetes.io/aws-load-balancer-"
ARN = "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"


def public_service(**annotations) -> dict:
    return {"metadata": {"name": "svc", "annotations": {
        rules.LOAD_BALANCER_OPT_IN: "true", LBC + "type": "external", LBC + "ssl-cert": ARN,
        LBC + "ssl-ports": "https,grpc"} | annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": "m"},
                 "ports": [{"name": "https", "port": 443}, {"name": "grpc", "port": 9000}]}}


def test_a_public_service_must_terminate_tls_on_every_port():
    svc = "kubernetes:core/v1:Service"
    assert rules.load_balancer_terminates_tls(svc, public_service()) == []
    [msg] = rules.load_balancer_terminates_tls(svc, public_service(**{LBC + "ssl-ports": "https"}))
    assert "in clear text now: grpc" in msg
    no_cert = public_service()
    del no_cert["metadata"]["annotations"][LBC + "ssl-cert"]
    del no_cert["metadata"]["annotations"][LBC + "type"]
    [msg] = rules.load_balancer_terminates_tls(svc, no_cert)
    assert f"{LBC}ssl-cert" in msg and f"{LBC}type: external" in msg and "servedmodel:tlsCertificateArn" in msg
    assert rules.load_balancer_terminates_tls(svc, {"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}) == []


def test_a_public_endpoint_requires_a_bearer_token_on_what_it_selects():
    deploy = good_deployment()
    deploy["metadata"] = {"name": "model"}
    deploy["spec"]["template"]["metadata"] = {"labels": {"app": "m", "v": "1"}}
    resources = [("kubernetes:core/v1:Service", public_service()), (DEPLOY, deploy)]
    [msg] = rules.public_endpoint_requires_auth(resources)
    assert "'svc'" in msg and "'model'" in msg and "SERVEDMODEL_AUTH_TOKEN" in msg
    container(deploy)["env"] = [{"name": "SERVEDMODEL_AUTH_TOKEN",
                                 "valueFrom": {"secretKeyRef": {"name": "a", "key": "token"}}}]
    assert rules.public_endpoint_requires_auth(resources) == []
    # A ClusterIP Service, or a workload it does not select, is not the rule's business.
    del container(deploy)["env"]
    deploy["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    assert rules.public_endpoint_requires_auth(resources) == []


@pytest.fixture(scope="module")
def model_cache_for_policy():
    sys.path.insert(0, str(ROOT / "tests" / "components"))
    sys.path.insert(0, str(ROOT))
    import pulumi_harness

    return pulumi_harness.model_cache_dir()


def test_a_public_endpoint_knows_its_callers_by_token_clients_or_oidc():
    deploy = good_deployment()
    deploy["metadata"] = {"name": "model"}
    deploy["spec"]["template"]["metadata"] = {"labels": {"app": "m"}}
    resources = [("kubernetes:core/v1:Service", public_service()), (DEPLOY, deploy)]
    [msg] = rules.public_endpoint_requires_auth(resources)
    assert "without a client identity" in msg and "servedmodel:clients" in msg and "servedmodel:oidcIssuer" in msg
    for name in ("SERVEDMODEL_CLIENTS_FILE", "SERVEDMODEL_OIDC_ISSUER", "SERVEDMODEL_AUTH_TOKEN_FILE"):
        container(deploy)["env"] = [{"name": name, "value": "x"}]
        assert rules.public_endpoint_requires_auth(resources) == [], name


def served(mode=None, key=None, **annotations) -> dict:
    deploy = good_deployment()
    deploy["metadata"] = {"name": "model"}
    notes = {rules.VERSION_ANNOTATION: "3f9c0a1b2c4d5e6f"} | annotations
    if mode is not None:
        notes[rules.ENCRYPTION_ANNOTATION] = mode
    if key is not None:
        notes[rules.KEY_ANNOTATION] = key
    deploy["spec"]["template"]["metadata"] = {"annotations": notes}
    return deploy


KEY = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d"


def test_an_unencrypted_model_is_refused_in_a_protected_stack_only():
    check = rules.model_encrypted_in_protected_stacks
    assert check([(DEPLOY, served("kms", KEY))], "prod") == []
    assert check([(DEPLOY, served("kms", None))], "prod") == []   # the key unknown during a preview
    [msg] = check([(DEPLOY, served("none"))], "prod")
    assert "serves a model in clear" in msg and "'model'" in msg and "servedmodel:modelEncryption kms" in msg
    assert check([(DEPLOY, served())], "prod")                     # no annotation: not shown encrypted
    assert check([(DEPLOY, served("kms", ""))], "prod")            # kms naming no key
    assert check([(DEPLOY, served("none"))], "dev") == []          # not a protected stack
    assert check([(DEPLOY, served("none"))], "staging", ("prod", "staging"))
    assert check([(DEPLOY, good_deployment())], "prod") == []      # not a served model (no version annotation)
    rollout = served("none")
    assert check([("kubernetes:argoproj.io/v1alpha1:Rollout", rollout)], "prod")
    # A local container: its labels say it; one that serves no model is not the rule's business.
    container_props = {"name": "c", "envs": ["SERVEDMODEL_PORT=8080"],
                       "labels": [{"label": rules.ENCRYPTION_ANNOTATION, "value": "local"}]}
    assert check([("docker:index/container:Container", container_props)], "prod") == []
    container_props["labels"] = []
    assert check([("docker:index/container:Container", container_props)], "prod")
    assert check([("docker:index/container:Container", {"envs": ["OTHER=1"]})], "prod") == []
    # The repository: the model's key, not ECR's AWS-managed one (unknown during a preview: passes).
    repo = "aws:ecr/repository:Repository"
    assert check([(repo, {"encryptionConfigurations": [{"encryptionType": "KMS", "kmsKey": KEY}]})], "prod") == []
    assert check([(repo, {"encryptionConfigurations": [{"encryptionType": "KMS", "kmsKey": None}]})], "prod") == []
    assert check([(repo, {"encryptionConfigurations": [{"encryptionType": "KMS"}]})], "prod")
    assert check([(repo, {})], "prod")


def test_the_stack_is_read_from_the_urn():
    urn = "urn:pulumi:prod::servedmodel::servedmodel:index:ServedModel$aws:kms/key:Key::c-key"
    assert rules.stack_of(urn) == "prod"
    assert rules.stack_of("urn:pulumi:dev::p::t::n") == "dev"
    assert rules.stack_of("not-a-urn") == ""


def test_rules_module_does_not_import_pulumi_policy():
    tree = ast.parse((ROOT / "policy" / "rules.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pulumi_policy", "pulumi"}


def test_the_pack_wraps_every_rule():
    main = (ROOT / "policy" / "__main__.py").read_text()
    assert "EnforcementLevel.MANDATORY" in main and "rules.RULES" in main
    assert len({r.name for r in rules.RULES}) == len(rules.RULES) == 7
    assert "rules.STACK_RULES" in main and "StackValidationPolicy" in main
    assert [r.name for r in rules.STACK_RULES] == ["public-endpoint-requires-auth",
                                                   "model-encrypted-in-protected-stacks"]


def test_the_programs_own_resources_pass_every_rule():
    """The objects the real __main__.py declares for each stack (under the mocks) are compliant."""
    sys.path.insert(0, str(ROOT / "tests" / "components"))
    sys.path.insert(0, str(ROOT))
    import pulumi_harness

    for stack in pulumi_harness.STACKS:
        run = pulumi_harness.stack_run(stack)
        for r in run.resources:
            assert rules.violations(r.type, r.inputs) == {}, f"{stack}: {r.type} {r.name}"
        for rule in rules.STACK_RULES:
            assert rule.check(_as_the_pack_sees(run), rules.stack_of(run.resources[0].urn)) == [], \
                f"{stack}: {rule.name}"


def _as_the_pack_sees(run) -> list:
    sys.path.insert(0, str(ROOT / "tests" / "components"))
    import pulumi_harness

    return [(r.type, pulumi_harness.kubernetes_manifest(r) if r.type.startswith("kubernetes:") else r.inputs)
            for r in run.resources]


def test_prod_served_in_clear_is_refused_by_the_pack(model_cache_for_policy):
    """The program's own prod stack with servedmodel:modelEncryption none: the workload serves a
    model in clear and its repository uses ECR's own key; the same objects in dev pass."""
    import pulumi_harness

    clear = pulumi_harness.run_program("prod", {"servedmodel:modelEncryption": "none"})
    assert rules.stack_of(clear.resources[0].urn) == "prod"
    found = rules.model_encrypted_in_protected_stacks(_as_the_pack_sees(clear), "prod")
    assert any("Rollout" in m and "serves a model in clear" in m for m in found), found
    assert any("ECR repository" in m and "AWS-managed key" in m for m in found), found
    assert rules.model_encrypted_in_protected_stacks(_as_the_pack_sees(clear), "dev") == []
    # prod's identity is OIDC here: the public endpoint's rule is satisfied without a token.
    assert rules.public_endpoint_requires_auth(_as_the_pack_sees(clear), "prod") == []


POLICY_VENV_PYTHON = ROOT / "policy" / "venv" / "bin" / "python"


@pytest.mark.skipif(not POLICY_VENV_PYTHON.exists(),
                    reason="policy/venv not created: python3.11 -m venv policy/venv && "
                           "policy/venv/bin/pip install -r policy/requirements.txt "
                          "(as `pulumi preview --policy-pack` does)")
def test_the_pack_loads_with_pulumi_policy_in_its_own_venv():
    """policy/__main__.py with the real pulumi_policy: PolicyPack replaced by a recorder (its
    constructor would start the gRPC server the CLI talks to), every policy mandatory and live."""
    import subprocess

    script = (
        "import runpy, pulumi_policy\n"
        "seen = {}\n"
        "class Recorder:\n"
        "    def __init__(self, **kw): seen.update(kw)\n"
        "pulumi_policy.PolicyPack = Recorder\n"
        f"runpy.run_path({str(ROOT / 'policy' / '__main__.py')!r}, run_name='__main__')\n"
        "svc = {'metadata': {'name': 's'}, 'spec': {'type': 'LoadBalancer', 'selector': {'app': 'm'},\n"
        "       'ports': [{'name': 'http', 'port': 80}]}}\n"
        "deploy = {'metadata': {'name': 'd'}, 'spec': {'template': {'metadata': {'labels': {'app': 'm'},\n"
        "          'annotations': {'servedmodel.io/model-version': '3f9c0a1b2c4d5e6f'}},\n"
        "          'spec': {'containers': [{'name': 'server', 'env': []}]}}}}\n"
        "resources = [pulumi_policy.PolicyResource(t, p, 'urn:pulumi:prod::servedmodel::' + t + '::n', t, None, None,\n"
        "                                          None, [], {})\n"
        "             for t, p in [('kubernetes:core/v1:Service', svc), ('kubernetes:apps/v1:Deployment', deploy)]]\n"
        "class Args:\n"
        "    resource_type = 'kubernetes:core/v1:Service'\n"
        "    props = svc\n"
        "msgs = []\n"
        "for p in seen['policies']:\n"
        "    stack = isinstance(p, pulumi_policy.StackValidationPolicy)\n"
        "    args = pulumi_policy.StackValidationArgs(resources) if stack else Args()\n"
        "    p.validate(args, lambda m, urn=None, name=p.name: msgs.append(name))\n"
        "print(seen['enforcement_level'].name, len(seen['policies']), sorted(set(msgs)))\n"
        # The protected stacks come from the policy's config (`--policy-pack-config`), prod by default.
        "enc = next(p for p in seen['policies'] if p.name == 'model-encrypted-in-protected-stacks')\n"
        "other = []\n"
        "enc.validate(pulumi_policy.StackValidationArgs(resources, config={'stacks': ['staging']}),\n"
        "             lambda m, urn=None: other.append(m))\n"
        "print(len(other), enc.config_schema.properties['stacks']['default'])\n"
    )
    out = subprocess.run([str(POLICY_VENV_PYTHON), "-c", script], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip().splitlines() == [
        "MANDATORY 9 ['load-balancer-terminates-tls', 'model-encrypted-in-protected-stacks', "
        "'no-load-balancer-without-opt-in', 'public-endpoint-requires-auth']",
        "0 ['prod']"]
