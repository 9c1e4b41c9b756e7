"""Issue 21 under the mocks: who may call (named clients, OIDC), what each call leaves (the audit
stream and where it is kept), and a model nobody reads without its key (kms: the pods' own
identity unwraps it; local: a key file of this machine).

Every run is the real __main__.py; every Kubernetes object is validated strictly against the
cluster's schema; the engine's view (dependencies, options) is asserted from the mock monitor; the
KMS calls of the build go to moto in server mode (pulumi_harness.Kms), and the data key it wrapped
is unwrapped there again with the pods' encryption context.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from lifecycle_model import PlanError, Registry, plan
from pulumi_harness import (
    KUBERNETES_VERSION,
    ROOT,
    STACKS,
    TEST_SECRET,
    Kms,
    Run,
    kubernetes_manifest,
    run_program,
    stack_file,
)
from servedmodel.components import ArgsError, EncryptionArgs, ModelArgs, NetworkArgs, ServedModelArgs, specs
from servedmodel.components.args import LOG_RETENTION_DAYS
from servedmodel.components.settings import ConfigError, parse_settings
from servedmodel.models import contract
from test_settings import problems, raw_for

WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:argoproj.io/v1alpha1:Rollout")
TOKENS = {"billing": "billing-token-0123456789abcdef", "search": ["search-token-old-0123456789",
                                                                  "search-token-new-0123456789"]}
ROTATED = {"billing": ["billing-token-0123456789abcdef", "billing-token-next-0123456789"],
           "search": "search-token-new-0123456789"}
OIDC = {"servedmodel:oidcIssuer": "https://login.example.com/realms/models", "servedmodel:oidcAudience": "models-api",
        "servedmodel:oidcScope": "models.infer"}
SECRETS = {"servedmodel:authToken": TEST_SECRET}


def workloads(run: Run):
    return [r for t in WORKLOADS for r in run.of_type(t)]


def container(workload) -> dict:
    [c] = workload.inputs["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c["env"]}


def every_tokenish_value(run: Run) -> str:
    """Everything the engine would store or show: inputs, state and outputs of every resource."""
    return repr([(r.inputs, r.state) for r in run.resources]) + repr(run.outputs)


def all_tokens(clients: dict) -> list[str]:
    return [t for v in clients.values() for t in ([v] if isinstance(v, str) else v)]


@pytest.fixture(scope="module")
def with_clients(model_cache):
    return run_program("dev", OIDC, secrets={"servedmodel:clients": json.dumps(TOKENS)})


@pytest.fixture(scope="module")
def rotated(model_cache):
    return run_program("dev", OIDC, secrets={"servedmodel:clients": json.dumps(ROTATED)})


# ---- the server refuses what it does not know: every variable the components set is its -----------

def server_variables(run: Run) -> set[str]:
    names = {e["name"] for w in workloads(run) for e in container(w)["env"]}
    for c in run.of_type("docker:index/container:Container"):
        names |= {e.split("=", 1)[0] for e in c.inputs["envs"] if isinstance(e, str)}
    return {n for n in names if n.startswith(contract.ENV_PREFIX)}


def unknown_to_the_server(names: set[str]) -> set[str]:
    return {n for n in names if n.removeprefix(contract.ENV_PREFIX) not in contract.SERVER_VARIABLES}


@pytest.mark.parametrize("stack", STACKS)
def test_every_servedmodel_variable_the_components_set_is_one_the_server_reads(stack_runs, stack):
    """The server stops at start on a SERVEDMODEL_* variable it does not know (fail closed): every
    one the stack's pods and containers get is in serving/contract.py SERVER_VARIABLES."""
    names = server_variables(stack_runs[stack])
    assert names and not unknown_to_the_server(names)


def test_the_variables_of_identity_audit_and_encryption_are_the_servers_too(with_clients, stack_runs):
    names = server_variables(with_clients) | server_variables(stack_runs["local"])
    assert {"SERVEDMODEL_CLIENTS_FILE", "SERVEDMODEL_OIDC_ISSUER", "SERVEDMODEL_OIDC_AUDIENCE",
            "SERVEDMODEL_OIDC_SCOPE",
            "SERVEDMODEL_AUDIT_LOG", "SERVEDMODEL_MODEL_KEY_FILE"} <= names
    assert not unknown_to_the_server(names)
    # The check can fail: a misspelt name is reported.
    assert unknown_to_the_server(names | {"SERVEDMODEL_CLIENTS_FIL"}) == {"SERVEDMODEL_CLIENTS_FIL"}


@pytest.mark.parametrize("stack", ["dev", "prod", "burst", "graviton"])
def test_no_service_links_and_an_audit_stream_in_every_pod(stack_runs, stack):
    for w in workloads(stack_runs[stack]):
        pod = w.inputs["spec"]["template"]["spec"]
        assert pod["enableServiceLinks"] is False
        assert env_of(container(w))["SERVEDMODEL_AUDIT_LOG"] == "-"


# ---- named clients -----------------------------------------------------------------------------

def test_clients_become_a_secret_of_digests_mounted_read_only(with_clients):
    run = with_clients
    secrets = [s for s in run.of_type("kubernetes:core/v1:Secret") if specs.CLIENTS_KEY in s.inputs["stringData"]]
    assert len(secrets) == 2  # one per model
    for secret in secrets:
        document = json.loads(secret.inputs["stringData"][specs.CLIENTS_KEY])
        assert document == {"billing": [specs.token_digest(TOKENS["billing"])],
                            "search": [specs.token_digest(t) for t in TOKENS["search"]]}
        assert all(len(d) == 64 and d == d.lower() for ds in document.values() for d in ds)
        assert "stringData" in secret.secret_paths or f"stringData.{specs.CLIENTS_KEY}" in secret.secret_paths
        assert "immutable" not in secret.inputs  # updated in place on a rotation
    for w in workloads(run):
        pod = w.inputs["spec"]["template"]["spec"]
        c = container(w)
        assert env_of(c)["SERVEDMODEL_CLIENTS_FILE"] == specs.CLIENTS_PATH
        assert specs.clients_mount() in c["volumeMounts"] and specs.clients_mount()["readOnly"]
        [volume] = [v for v in pod["volumes"] if v["name"] == specs.CLIENTS_VOLUME]
        assert volume["secret"]["secretName"] in {s.state["metadata"]["name"] for s in secrets}
        annotation = w.inputs["spec"]["template"]["metadata"]["annotations"][specs.CLIENTS_ANNOTATION]
        assert annotation == specs.document_checksum(specs.clients_document(
            {k: [v] if isinstance(v, str) else v for k, v in TOKENS.items()}))
    for r in run.resources:
        if r.type.startswith("kubernetes:"):
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)


def test_no_client_token_is_in_the_state_or_the_outputs_in_plain_text(with_clients, rotated):
    for run, clients in ((with_clients, TOKENS), (rotated, ROTATED)):
        text = every_tokenish_value(run)
        for token in all_tokens(clients):
            assert token not in text
        assert not run.secret_outputs


def test_rotating_a_client_token_updates_the_secret_and_rolls_the_pods(with_clients, rotated):
    """A second token for a client, and the old one withdrawn from another: the clients Secret is
    updated in place (the program's provider makes Secrets mutable) and the pod template's
    checksum rolls the pods, which read the file at start. Nothing is replaced."""
    provider = rotated.one("pulumi:providers:kubernetes")
    assert provider.inputs["enableSecretMutable"] in (True, "true")
    steps = plan(with_clients, rotated)
    assert sorted(steps.summary()) == ["update lenet-clients", "update lenet-deploy", "update mnist-mlp-clients",
                                       "update mnist-mlp-deploy"]
    for name in ("lenet", "mnist-mlp"):
        secret, deploy = steps.find("update", f"{name}-clients"), steps.find("update", f"{name}-deploy")
        assert secret.paths == (f"stringData.{specs.CLIENTS_KEY}",)
        assert deploy.paths == (f"spec.template.metadata.annotations.{specs.CLIENTS_ANNOTATION}",)


def test_without_secret_mutability_a_rotation_would_replace_the_secret(with_clients, rotated):
    """The rule the provider setting changes (pulumi-kubernetes diff.go): a program whose provider
    leaves Secrets immutable gets a replacement (a new name, so still a rollout)."""
    import dataclasses

    def without_mutability(run: Run) -> Run:
        return Run(stack=run.stack, outputs={}, secret_outputs=set(), resources=[
            dataclasses.replace(r, inputs={k: v for k, v in r.inputs.items() if k != "enableSecretMutable"})
            if r.type == "pulumi:providers:kubernetes" else r for r in run.resources])

    steps = plan(without_mutability(with_clients), without_mutability(rotated))
    assert "create-replacement mnist-mlp-clients" in steps.summary()


def test_a_client_named_like_the_token_or_a_shared_token_is_refused_naming_the_client_not_the_token():
    found = problems("dev", secrets={"servedmodel:clients": json.dumps({"a": "x" * 20, "b": ["x" * 20],
                                                                        "c d": "y" * 20, "e": "short"})})
    text = "\n".join(found)
    assert "servedmodel:clients = 'b': a token of client 'a' too" in text
    assert "servedmodel:clients = 'c d'" in text and "servedmodel:clients = 'e'" in text
    assert "x" * 20 not in text and "short" not in text and "y" * 20 not in text
    found = problems("dev", secrets={"servedmodel:authToken": TEST_SECRET,
                                     "servedmodel:clients": json.dumps({"default": "d" * 20})})
    assert any(p.startswith("servedmodel:clients = 'default': the client 'default' is the one servedmodel:authToken "
                            "names") for p in found), found
    assert "d" * 20 not in "\n".join(found)
    assert problems("dev", secrets={"servedmodel:clients": "not json"}) == [
        "servedmodel:clients = '[secret]': a map of client name -> token (or a list of 2: the current and the next), "
        "e.g. {\"billing\": \"<token>\"}; set it with `pulumi config set --secret --path 'servedmodel:clients.billing' "
        "<token>`"]
    found = problems("dev", {"servedmodel:clients": json.dumps(TOKENS)})
    assert any("servedmodel:clients = [given in plain text]: must be a secret" in p for p in found), found


def test_clients_on_the_local_target_are_a_private_file_mounted_read_only(model_cache):
    run = run_program("local", secrets={"servedmodel:clients": json.dumps(TOKENS)})
    c = run.one("docker:index/container:Container").inputs
    [mount] = [m for m in c["mounts"] if m["target"] == specs.LOCAL_CLIENTS_PATH]
    path = Path(mount["source"])
    assert mount["readOnly"] is True and mount["type"] == "bind" and path.is_absolute()
    assert json.loads(path.read_text()) == json.loads(specs.clients_document(
        {k: [v] if isinstance(v, str) else v for k, v in TOKENS.items()}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "SERVEDMODEL_CLIENTS_FILE=" + specs.LOCAL_CLIENTS_PATH in c["envs"]
    labels = {label["label"]: label["value"] for label in c["labels"]}
    assert labels[specs.CLIENTS_ANNOTATION] == specs.document_checksum(path.read_text())
    for token in all_tokens(TOKENS):
        assert token not in every_tokenish_value(run)


# ---- OIDC ----------------------------------------------------------------------------------------

def test_oidc_settings_reach_the_server_and_the_network_policy_leaves_egress_open(with_clients, stack_runs):
    for w in workloads(with_clients):
        env = env_of(container(w))
        assert (env["SERVEDMODEL_OIDC_ISSUER"], env["SERVEDMODEL_OIDC_AUDIENCE"], env["SERVEDMODEL_OIDC_SCOPE"]) == (
            OIDC["servedmodel:oidcIssuer"], OIDC["servedmodel:oidcAudience"], OIDC["servedmodel:oidcScope"])
    # The pods fetch the issuer's key set, ask the Pod Identity agent (169.254.170.23) for
    # credentials and call KMS: no NetworkPolicy of ours restricts egress. A policy that did would
    # have to admit all three (docs/deploy.md, "The pods' identity").
    for run in (with_clients, stack_runs["prod"]):
        for np in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
            assert np.inputs["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np.inputs["spec"]
    prod = env_of(container(workloads(stack_runs["prod"])[0]))
    assert prod["SERVEDMODEL_OIDC_ISSUER"] == stack_file("prod")["servedmodel:network"]["oidcIssuer"]


@pytest.mark.parametrize("overrides, needle", [
    ({"servedmodel:oidcIssuer": "http://login.example.com"}, "servedmodel:oidcIssuer = 'http://login.example.com'"),
    ({"servedmodel:oidcIssuer": "https://login.example.com"}, "OIDC needs both"),
    ({"servedmodel:oidcAudience": "api"}, "OIDC needs both"),
    ({"servedmodel:oidcScope": "a b"}, "one scope, group or role name"),
    ({"servedmodel:oidcScope": "models.infer"}, "a required scope is for OIDC callers"),
])
def test_oidc_settings_are_checked(overrides, needle):
    assert any(needle in p for p in problems("dev", overrides)), problems("dev", overrides)


# ---- audit ---------------------------------------------------------------------------------------

def test_the_audit_records_have_a_log_group_with_the_stacks_retention(stack_runs):
    for stack, days, kept in (("dev", 365, False), ("prod", 400, True)):
        run = stack_runs[stack]
        for group in run.of_type("aws:cloudwatch/logGroup:LogGroup"):
            served = run.by_urn(run.served_model_of(group)).name
            assert group.inputs["name"] == specs.audit_log_group_name(
                stack_file(stack)["servedmodel:clusterName"], "servedmodel", served)
            assert group.inputs["retentionInDays"] == days
            assert group.retain_on_delete is kept and group.protect is (stack == "prod")
    assert not stack_runs["local"].of_type("aws:cloudwatch/logGroup:LogGroup")
    env = stack_runs["local"].one("docker:index/container:Container").inputs["envs"]
    assert "SERVEDMODEL_AUDIT_LOG=-" in env


def test_audit_off_and_no_log_group(model_cache):
    run = run_program("dev", {"servedmodel:audit": False}, secrets=SECRETS)
    assert not run.of_type("aws:cloudwatch/logGroup:LogGroup")
    assert all("SERVEDMODEL_AUDIT_LOG" not in env_of(container(w)) for w in workloads(run))
    run = run_program("dev", {"servedmodel:auditRetentionDays": 0}, secrets=SECRETS)
    assert not run.of_type("aws:cloudwatch/logGroup:LogGroup")
    assert problems("dev", {"servedmodel:auditRetentionDays": 42}) == [
        "servedmodel:auditRetentionDays = 42: a retention CloudWatch Logs accepts: one of "
        + ", ".join(map(str, LOG_RETENTION_DAYS)) + " (0: no log group)"]


# ---- kms: the model's key, the pods' identity, the repository ---------------------------------------

def manifest_of(run: Run, served: str) -> dict:
    image = next(i for i in run.of_type("docker-build:index:Image") if i.name == f"{served}-image")
    return json.loads((ROOT / image.inputs["context"]["location"] / "model" / "manifest.json").read_text())


@pytest.mark.parametrize("stack", ["dev", "prod", "burst", "graviton"])
def test_kms_the_key_the_repository_the_build_and_the_pods_identity(stack_runs, stack):
    run = stack_runs[stack]
    cluster = stack_file(stack)["servedmodel:clusterName"]
    for key in run.of_type("aws:kms/key:Key"):
        served = run.by_urn(run.served_model_of(key)).name
        arn = key.state["arn"]
        assert key.inputs["enableKeyRotation"] is True and key.inputs["deletionWindowInDays"] == 30
        assert key.inputs["keyUsage"] == "ENCRYPT_DECRYPT" and key.protect is (stack == "prod")
        alias = run.sibling("aws:kms/alias:Alias", key)
        assert alias.inputs == {"name": f"alias/servedmodel/{stack}/{served}", "targetKeyId": key.state["keyId"]}
        # The repository is encrypted with it, and waits for it.
        repo = run.sibling("aws:ecr/repository:Repository", key)
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": arn}]
        assert repo.waits_for(key)
        workload = next(w for w in workloads(run) if run.served_model_of(w) == run.served_model_of(key))
        env = env_of(container(workload))
        assert env["SERVEDMODEL_MODEL_NAME"] == served and "SERVEDMODEL_MODEL_KEY_FILE" not in env
        image = run.sibling("docker-build:index:Image", key)
        assert image.waits_for(key) and image.waits_for(repo)
        annotations = workload.inputs["spec"]["template"]["metadata"]["annotations"]
        assert annotations[specs.ENCRYPTION_ANNOTATION] == "kms" and annotations[specs.KEY_ANNOTATION] == arn
        # The pods' own identity: a role only EKS Pod Identity may assume, for this cluster,
        # namespace and ServiceAccount; allowed only kms:Decrypt on this key for this served name.
        sa = run.sibling("kubernetes:core/v1:ServiceAccount", key)
        role = next(r for r in run.of_type("aws:iam/role:Role") if run.by_urn(r.parent).type.endswith("ModelService")
                    and run.served_model_of(r) == run.served_model_of(key))
        trust = json.loads(role.inputs["assumeRolePolicy"])
        [statement] = trust["Statement"]
        assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert sorted(statement["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
        assert statement["Condition"]["StringEquals"] == {
            "aws:RequestTag/eks-cluster-name": cluster, "aws:RequestTag/kubernetes-namespace": "servedmodel",
            "aws:RequestTag/kubernetes-service-account": sa.state["metadata"]["name"]}
        policy = run.sibling("aws:iam/rolePolicy:RolePolicy", key)
        assert policy.inputs["role"] == role.state["name"]
        [allowed] = json.loads(policy.inputs["policy"])["Statement"]
        assert allowed == {"Sid": "DecryptThisModelsDataKey", "Effect": "Allow", "Action": "kms:Decrypt",
                           "Resource": arn, "Condition": {"StringEquals": {
                               f"kms:EncryptionContext:{contract.ENCRYPTION_CONTEXT_NAME}": served}}}
        association = run.sibling("aws:eks/podIdentityAssociation:PodIdentityAssociation", key)
        assert (association.inputs["clusterName"], association.inputs["namespace"],
                association.inputs["serviceAccount"], association.inputs["roleArn"]) == (
            cluster, "servedmodel", sa.state["metadata"]["name"], role.state["arn"])
        # The pods are created only once their identity exists (EKS injects it at admission).
        assert workload.waits_for(association) and workload.waits_for(policy)
        assert workload.inputs["spec"]["template"]["spec"]["serviceAccountName"] == sa.state["metadata"]["name"]


# Served names of their own: the build folders of these runs are theirs (pytest-xdist workers share
# build/stacks/<stack>/<served name>, and other runs of dev write a model in clear there).
SEALED = [{"name": "sealed-lenet", "model": "lenet", "compression": "int8"},
          {"name": "sealed-mlp", "model": "mnist-mlp", "compression": "none"}]


@pytest.fixture(scope="module")
def sealed(model_cache):
    return run_program("dev", {"servedmodel:models": SEALED}, secrets=SECRETS)


def test_the_build_seals_the_model_with_the_key_for_the_served_name(sealed):
    """models.build ran with the encryption: the model's key, the name the server answers under."""
    run = sealed
    for key in run.of_type("aws:kms/key:Key"):
        served = run.by_urn(run.served_model_of(key)).name
        workload = next(w for w in workloads(run) if run.served_model_of(w) == run.served_model_of(key))
        manifest = manifest_of(run, served)
        block = manifest["encryption"]
        assert block["key"]["provider"] == "kms" and block["key"]["key_id"] == key.state["arn"]
        assert block["key"]["encryption_context"] == {
            contract.ENCRYPTION_CONTEXT_NAME: env_of(container(workload))["SERVEDMODEL_MODEL_NAME"],
            contract.ENCRYPTION_CONTEXT_VERSION: run.outputs["modelVersion"][served]}
        context = ROOT / run.sibling("docker-build:index:Image", key).inputs["context"]["location"]
        assert (context / "model" / "model.onnx.enc").exists() and not (context / "model" / "model.onnx").exists()
        # The version is the plaintext's: the same as the model's in clear (issue 21).
        assert manifest["version"] == run.outputs["modelVersion"][served]


def test_the_wrapped_data_key_opens_only_with_the_models_context(sealed):
    """What the pods' KMS Decrypt does (serving/aws.py), against the same KMS the build used: the
    served name and version in the context open it; another served name does not."""
    kms = Kms.get()
    block = manifest_of(sealed, "sealed-lenet")["encryption"]["key"]
    blob = base64.b64decode(block["wrapped_key"])
    assert len(kms.decrypt(blob, block["encryption_context"])) == 32
    with pytest.raises(Exception, match="InvalidCiphertext"):
        kms.decrypt(blob, block["encryption_context"] | {contract.ENCRYPTION_CONTEXT_NAME: "sealed-mlp"})


def test_an_unchanged_sealed_model_keeps_its_bytes(sealed):
    """The sealed build cache: the next run seals nothing anew (same context bytes, so no image
    update and no rollout of an unchanged model)."""
    before = (ROOT / "build/stacks/dev/sealed-lenet/model/model.onnx.enc").read_bytes()
    again = run_program("dev", {"servedmodel:models": SEALED}, secrets=SECRETS)
    assert (ROOT / "build/stacks/dev/sealed-lenet/model/model.onnx.enc").read_bytes() == before
    assert plan(sealed, again).steps == []


def test_a_key_the_stack_names_is_used_and_none_is_created(model_cache):
    given = Kms.get().given("dev")
    run = run_program("dev", {"servedmodel:kmsKeyArn": given,
                              "servedmodel:models": [{"name": "named-key", "model": "mnist-mlp"}]}, secrets=SECRETS)
    assert not run.of_type("aws:kms/key:Key") and not run.of_type("aws:kms/alias:Alias")
    for repo in run.of_type("aws:ecr/repository:Repository"):
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": given}]
    for policy in run.of_type("aws:iam/rolePolicy:RolePolicy"):
        assert json.loads(policy.inputs["policy"])["Statement"][0]["Resource"] == given
    assert manifest_of(run, "named-key")["encryption"]["key"]["key_id"] == given


def test_a_first_preview_knows_no_key_yet_and_builds_nothing_sealed(model_cache):
    """During the preview of a stack that creates its key, the key's ARN is unknown: the sealed
    context (and so the image's) is unknown, the rest is declared as in the update."""
    preview = run_program("graviton", secrets=SECRETS, preview=True)
    image = preview.one("docker-build:index:Image")
    assert not isinstance(image.inputs["context"]["location"], str)  # unknown until the key exists
    assert preview.one("aws:kms/key:Key") and preview.one("aws:eks/podIdentityAssociation:PodIdentityAssociation")


def test_encryption_none_declares_no_key_and_leaves_ecrs_own_key(model_cache):
    run = run_program("dev", {"servedmodel:modelEncryption": "none",
                              "servedmodel:models": [{"name": "in-clear", "model": "lenet", "compression": "int8"}]},
                      secrets=SECRETS)
    for kind in ("aws:kms/key:Key", "aws:iam/rolePolicy:RolePolicy",
                 "aws:eks/podIdentityAssociation:PodIdentityAssociation"):
        assert not run.of_type(kind), kind
    for repo in run.of_type("aws:ecr/repository:Repository"):
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS"}]
    assert "encryption" not in manifest_of(run, "in-clear")
    for w in workloads(run):
        assert w.inputs["spec"]["template"]["metadata"]["annotations"][specs.ENCRYPTION_ANNOTATION] == "none"


def test_turning_kms_on_for_a_live_stack(stack_runs):
    """A stack deployed in clear (or before issue 21) gets its key, the pods' identity, a new
    repository (its encryption is ForceNew: the new one, auto-named, first), the image pushed there
    and the pods rolled to it, then the old repository deleted with its images (force_delete on dev;
    prod keeps it: docs/deploy.md, "Encryption")."""
    clear, kms = run_program("dev", {"servedmodel:modelEncryption": "none"}, secrets=SECRETS), stack_runs["dev"]
    registry = Registry()
    from test_lifecycle import up
    up(None, clear, registry)
    steps = up(clear, kms, registry)
    for name in ("lenet", "mnist-mlp"):
        key = steps.find("create", f"{name}-key")
        repo = steps.find("create-replacement", f"{name}-repo")
        assert repo.paths == ("encryptionConfigurations[0].kmsKey",)
        image, deploy = steps.find("update", f"{name}-image"), steps.find("update", f"{name}-deploy")
        for created in ("key-alias", "pod-role", "pod-decrypt", "pod-identity"):
            steps.find("create", f"{name}-{created}")
        assert steps.precedes(key, repo) and steps.precedes(repo, image) and steps.precedes(image, deploy)
        assert steps.precedes(steps.find("create", f"{name}-pod-identity"), deploy)
        old = steps.find("delete-replaced", f"{name}-repo")
        assert steps.precedes(deploy, old) and not old.retain
        # The new repository's name is new: its lifecycle policy follows (delete first).
        assert steps.find("create-replacement", f"{name}-lifecycle")
    assert all(url.endswith(tuple(r.state["name"] for r in kms.of_type("aws:ecr/repository:Repository")))
               for url in registry.holding())


def test_turning_kms_on_stops_at_prods_protected_repository(stack_runs):
    prod = stack_runs["prod"]
    clear = run_program("prod", {"servedmodel:modelEncryption": "none"}, secrets=SECRETS)
    with pytest.raises(PlanError, match="classifier-repo is protected and would be replaced"):
        plan(clear, prod)


# ---- local: a key file of this machine ---------------------------------------------------------------

def test_the_local_stack_mounts_its_key_read_only_and_keeps_it_private(stack_runs):
    run = stack_runs["local"]
    c = run.one("docker:index/container:Container").inputs
    [mount] = [m for m in c["mounts"] if m["target"] == specs.LOCAL_KEY_PATH]
    key = Path(mount["source"])
    assert mount == {"type": "bind", "source": str(key), "target": specs.LOCAL_KEY_PATH, "readOnly": True}
    assert key == (ROOT / "build" / "stacks" / "local" / ".keys" / "mnist-mlp.key").resolve()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.stat().st_size == 32
    # Never in git: the build folder is ignored.
    assert subprocess.run(["git", "check-ignore", "-q", str(key)], cwd=ROOT).returncode == 0
    assert f"SERVEDMODEL_MODEL_KEY_FILE={specs.LOCAL_KEY_PATH}" in c["envs"]
    # The container's user owns the key: the image's user when `up` runs as root (the key given to
    # it), else the user that runs `up` (components/local_files.py).
    if os.getuid() == 0:
        assert c["user"] == str(specs.RUN_AS) and key.stat().st_uid == specs.RUN_AS
    else:
        assert c["user"] == f"{os.getuid()}:{os.getgid()}" and key.stat().st_uid == os.getuid()
    block = manifest_of(run, "mnist-mlp")["encryption"]["key"]
    import hashlib
    fingerprint = "local:" + hashlib.sha256(key.read_bytes()).hexdigest()[:16]
    assert block["provider"] == "local" and block["key_id"] == fingerprint
    assert block["encryption_context"][contract.ENCRYPTION_CONTEXT_NAME] == "mnist-mlp"
    labels = {label["label"]: label["value"] for label in c["labels"]}
    assert labels[specs.ENCRYPTION_ANNOTATION] == "local"


# ---- the rules --------------------------------------------------------------------------------------

def test_encryption_fits_the_target():
    assert any("kms is unwrapped by the pod's own AWS identity" in p
               for p in problems("local", {"servedmodel:modelEncryption": "kms"}))
    assert any("a local key is a file on this machine" in p
               for p in problems("dev", {"servedmodel:modelEncryption": "local"}, secrets=SECRETS))
    assert any("a KMS key ARN such as" in p for p in problems(
        "dev", {"servedmodel:kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:alias/models"}))
    assert any("a KMS key is for servedmodel:modelEncryption kms" in p for p in problems(
        "dev", {"servedmodel:modelEncryption": "none",
                "servedmodel:kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/0a1b"}))
    s = parse_settings(*raw_for("dev"))
    assert {a.encryption_mode for a in s.served} == {"kms"}
    assert parse_settings(*raw_for("local")).served[0].encryption_mode == "local"


def test_the_python_api_asks_for_the_cluster_with_kms():
    model = ModelArgs(served_name="m", model="mnist-mlp")
    with pytest.raises(ArgsError, match="name the cluster"):
        ServedModelArgs(model=model, out_dir=Path("build/m"), target="kubernetes")
    assert ServedModelArgs(model=model, out_dir=Path("build/m"), target="kubernetes",
                           encryption=EncryptionArgs(mode="none")).encryption_mode == "none"
    assert ServedModelArgs(model=model, out_dir=Path("build/m"), target="kubernetes",
                           cluster_name="c").encryption_mode == "kms"
    assert ServedModelArgs(model=model, out_dir=Path("build/m")).encryption_mode == "local"
    with pytest.raises(ArgsError, match="the docker target's model is sealed with a local key"):
        ServedModelArgs(model=model, out_dir=Path("build/m"),
                        encryption=EncryptionArgs(kms_key_arn="arn:aws:kms:eu-west-1:123456789012:key/0a1b"))
    with pytest.raises(ArgsError, match=r"network\.clients = 'x'"):
        NetworkArgs(clients={"x": ["a" * 20, "b" * 20, "c" * 20]})


def test_a_public_endpoint_takes_any_client_identity():
    base: dict[str, Any] = dict(service_type="LoadBalancer", allow_load_balancer=True,
                                tls_certificate_arn="arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d",
                                hostname="m.example.com", dns_zone_id="Z0123456789ABCDEFGHIJ")
    identities: list[dict[str, Any]] = [{"auth_token": "t"}, {"clients": {"a": "a" * 20}},
                                        {"oidc_issuer": "https://login.example.com", "oidc_audience": "api"}]
    for identity in identities:
        NetworkArgs(**base, **identity)
    with pytest.raises(ArgsError, match="needs a client identity"):
        NetworkArgs(**base)
    with pytest.raises(ConfigError):
        parse_settings(*raw_for("prod", {"servedmodel:oidcIssuer": "", "servedmodel:oidcAudience": "",
                                         "servedmodel:oidcScope": ""}))
