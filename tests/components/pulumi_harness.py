"""Run the real __main__.py under Pulumi's unit-test mocks and record the resource graph.

Only Pulumi's engine and providers are replaced (pulumi.runtime.set_mocks): the config is the
stack file merged over Pulumi.yaml's defaults (as the CLI merges them) and reaches the program
the way the CLI passes it (PULUMI_CONFIG and PULUMI_CONFIG_SECRET_KEYS in the environment, loaded
into the runtime as the language host's exec shim loads them), models.build runs for real, and
the mocks answer with realistic values (auto-names with suffixes, ECR URLs, sha256 digests, a
load balancer hostname, certificate ARNs known only after a preview) so the program's apply code
sees what it would see live.
"""
from __future__ import annotations

import asyncio
import atexit
import gc
import hashlib
import json
import logging
import os
import runpy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import SETTINGS, get_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "servedmodel"
STACKS = ("local", "dev", "prod", "burst", "graviton")
# EKS's Kubernetes version the objects are validated against (kubernetes-validate, strict).
KUBERNETES_VERSION = "1.33.0"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
TEST_SECRET = "test-secret-value-0123456789"
# The cluster's subnets and their tags: two private (tagged for internal load balancers), two public.
SUBNETS: dict[str, dict[str, str]] = {
    "subnet-0a1b2c3d4e5f60001": {"kubernetes.io/role/internal-elb": "1"},
    "subnet-0a1b2c3d4e5f60002": {"kubernetes.io/role/internal-elb": "1"},
    "subnet-0a1b2c3d4e5f60003": {"kubernetes.io/role/elb": "1"},
    "subnet-0a1b2c3d4e5f60004": {"kubernetes.io/role/elb": "1"},
    # A second public subnet in zone a: the load balancer gets one per zone (the lowest id).
    "subnet-0a1b2c3d4e5f60005": {"kubernetes.io/role/elb": "1"},
}
VPC_ID = "vpc-0a1b2c3d4e5f6000"
VPC_CIDR = "10.0.0.0/16"
# Each subnet's zone and CIDR (aws:ec2/getSubnet): private /19s for the pods, public /24s.
SUBNET_NETWORKS: dict[str, tuple[str, str]] = {
    "subnet-0a1b2c3d4e5f60001": (f"{REGION}a", "10.0.0.0/19"),
    "subnet-0a1b2c3d4e5f60002": (f"{REGION}b", "10.0.32.0/19"),
    "subnet-0a1b2c3d4e5f60003": (f"{REGION}a", "10.0.96.0/24"),
    "subnet-0a1b2c3d4e5f60004": (f"{REGION}b", "10.0.97.0/24"),
    "subnet-0a1b2c3d4e5f60005": (f"{REGION}a", "10.0.98.0/24"),
}
# The canonical hosted zone of Network Load Balancers in eu-west-1 (what aws:lb/getHostedZoneId
# answers for load_balancer_type "network"; kubernetes-sigs/external-dns v0.22.0
# provider/aws/aws.go keeps the same table of NLB zones).
NLB_ZONE_ID = "Z2IFOLAFXWLO4F"
# The public hosted zone aws:route53/getZone finds for any domain (examples/composed).
EXAMPLE_ZONE_ID = "Z0EXAMPLE00000000000"
# EC2 DescribeInstanceTypes figures answering aws:ec2/getInstanceType (source in the file).
EC2_INSTANCE_TYPES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).with_name("ec2_instance_types.json")).read_text())["instanceTypes"]


def project_config() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block: full key -> declaration."""
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def stack_file(stack: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()).get("config", {})


def _as_config_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def flat_stack(config: dict[str, Any]) -> dict[str, Any]:
    """A stack file's config with every group written as its flat keys (the same settings:
    components/settings.py reads both forms alike; tests/components/test_structured_config.py
    holds the two to give identical settings and resources)."""
    from servedmodel.components.settings import SCHEMA

    out: dict[str, Any] = {}
    for full, value in config.items():
        ns, _, key = full.partition(":")
        if ns == PROJECT and key in SCHEMA.groups and isinstance(value, dict):
            for name, item in value.items():
                out[f"{PROJECT}:{SCHEMA.in_group[(key, name)].key}"] = item
        else:
            out[full] = value
    return out


def merged_config(stack: str, overrides: Optional[dict[str, Any]] = None,
                  secrets: Optional[dict[str, str]] = None,
                  stack_values: Optional[dict[str, Any]] = None) -> tuple[dict[str, str], set[str]]:
    """Pulumi.yaml defaults, then the stack file, then overrides; `secrets` set as secret values.

    A `{secure: ...}` value in a stack file stands for a ciphertext the CLI would decrypt: the
    fixture puts a test value there and marks the key secret, as the CLI does. Overrides name
    flat keys: with overrides, the stack file's groups are written flat first (`flat_stack`), so
    an override replaces the setting wherever the file wrote it (in a group it would be a second
    value of the same setting). `stack_values` stands in for the stack file.
    """
    values: dict[str, Any] = {}
    for key, decl in project_config().items():
        if isinstance(decl, dict) and "default" in decl:
            values[key] = decl["default"]
    secret_keys: set[str] = set()
    written = stack_file(stack) if stack_values is None else stack_values
    if overrides:
        written = flat_stack(written)
    for key, value in {**written, **(overrides or {})}.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = TEST_SECRET
            secret_keys.add(key)
        values[key] = value
    for key, value in (secrets or {}).items():
        values[key] = value
        secret_keys.add(key)
    return {k: _as_config_string(v) for k, v in values.items()}, secret_keys


@dataclass
class Res:
    """One registered resource: what the program asked the engine for."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    inputs: dict[str, Any]
    secret_paths: list[str]
    protect: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    providers: dict[str, str]
    provider: str
    dependencies: list[str] = field(default_factory=list)
    """URNs the engine waits for before creating/updating this resource (depends_on + every
    resource behind an Output among the inputs)."""
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    """Per top-level input: the URNs its value came from."""
    delete_before_replace: bool = False
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    """create/update/delete durations ("10m") the program set; empty when none."""
    replace_on_changes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def waits_for(self, other: Res) -> bool:
        """True when the engine must finish `other` before it touches this resource."""
        return other.urn in self.dependencies


def _unwrap(value: Any, path: str, secret_paths: list[str]) -> Any:
    if rpc.is_rpc_secret(value):
        secret_paths.append(path)
        return _unwrap(rpc.unwrap_rpc_secret(value), path, secret_paths)
    if isinstance(value, dict):
        return {k: _unwrap(v, f"{path}.{k}" if path else k, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}[{i}]", secret_paths) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire has only doubles; Kubernetes' schema wants integers
    return value


_UNKNOWN = object()


def _known(value: Any) -> Any:
    """The inputs without the values unknown during a preview: a provider echoes an input it does
    not know yet as an unknown output (missing here, so the runtime resolves it unknown)."""
    if isinstance(value, pulumi.output.Unknown):
        return _UNKNOWN
    if isinstance(value, dict):
        kept = {k: _known(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _UNKNOWN}
    if isinstance(value, list):
        kept = [_known(v) for v in value]
        return _UNKNOWN if any(v is _UNKNOWN for v in kept) else kept
    return value


def _short_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def ecr_repository_url(repository_name: str) -> str:
    return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repository_name}"


class Kms:
    """AWS KMS for the program's encrypted builds: moto in server mode on 127.0.0.1, one per test
    process (real HTTP: the pipeline's boto3 GenerateDataKey, as docs/pipeline.md describes).

    A key the program creates (aws:kms/key:Key) is made here once per resource name, with moto's
    random numbers seeded from that name: every run, in every test process (pytest-xdist workers
    share the build folders and the build cache), gets the same key id and the same key material
    for it, as the state would give a live stack, and the sealed build cache keeps an unchanged
    model's bytes. `given()` makes a key a stack names with servedmodel:kmsKeyArn."""

    _instance: Optional[Kms] = None
    # A KMS endpoint another process serves (tests/components/test_installed.py passes its own to
    # the fresh venv, which has the wheel's dependencies and not moto's).
    URL_VARIABLE = "HARNESS_KMS_URL"

    def __init__(self, url: str = "") -> None:
        self.url = url
        if not url:
            import socket

            import moto.kms.models as kms_models
            from moto.moto_api._internal import mock_random
            from moto.server import ThreadedMotoServer

            # A key's material from moto's (seeded) random numbers, not os.urandom: see above.
            kms_models.__dict__["generate_master_key"] = lambda: bytes(mock_random.getrandbits(8) for _ in range(32))

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the test output
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            atexit.register(server.stop)
            self.url = f"http://127.0.0.1:{port}"
        self.keys: dict[str, tuple[str, str]] = {}

    @classmethod
    def get(cls) -> Kms:
        """The test process's KMS, started on first use (a run that makes no key starts none)."""
        if cls._instance is None:
            cls._instance = Kms(os.environ.get(cls.URL_VARIABLE, ""))
        return cls._instance

    def env(self) -> dict[str, str]:
        """What sends the program's boto3 to this KMS, with static test keys."""
        return {"AWS_ENDPOINT_URL_KMS": self.url, "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
                "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def client(self) -> Any:
        import boto3

        return boto3.client("kms", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="AKIATESTTESTTEST", aws_secret_access_key="secret")

    def key(self, name: str) -> tuple[str, str]:
        """(ARN, key id) of the key the resource `name` stands for."""
        if name not in self.keys:
            import urllib.request

            seed = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/seed?a={seed}", method="POST"),
                                   timeout=10).close()
            meta = self.client().create_key(Description=f"test key for {name}")["KeyMetadata"]
            self.keys[name] = (meta["Arn"], meta["KeyId"])
        return self.keys[name]

    def given(self, label: str = "given") -> str:
        """A key that exists before the stack (servedmodel:kmsKeyArn)."""
        return self.key(f"given:{label}")[0]

    def decrypt(self, blob: bytes, context: dict[str, str]) -> bytes:
        return self.client().decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]


class RealisticMocks(pulumi.runtime.Mocks):
    """Answers like the providers do, deterministically (same inputs, same ids and names).

    `registry` holds the images already in the registries, repository URL -> {tag: digest}
    (what aws:ecr/getImages lists): empty, every version is new.
    """

    def __init__(self, registry: Optional[dict[str, dict[str, str]]] = None):
        super().__init__()
        self.registry = registry or {}
        self.invokes: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[Optional[str], dict]:
        state = json.loads(json.dumps(_known(_unwrap(args.inputs, "", [])), default=str))
        t, name = args.typ, args.name
        suffix = _short_hash(name)[:7]
        if t.startswith("kubernetes:") and not t.startswith("pulumi:providers"):
            meta = state.setdefault("metadata", {})
            meta.setdefault("name", f"{name}-{suffix}")  # Pulumi's auto-naming
            if t.endswith(":Service"):
                spec = state.get("spec", {})
                spec.setdefault("clusterIP", "172.20.12.34")
                if spec.get("type") == "LoadBalancer":
                    state["status"] = {"loadBalancer": {"ingress": [
                        {"hostname": f"a{suffix}-1234567890.{REGION}.elb.amazonaws.com"}]}}
            resource_id = f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/")
            return resource_id, state
        if t == "docker-build:index:Image":
            # The manifest digest of what was built from this context with these tags.
            # The provider (provider/internal/image.go, Create) sets `digest` from the exporter's
            # response, pushed or loaded, and then `ref` to the first tag plus "@digest".
            state["digest"] = "sha256:" + _short_hash(state.get("context"), state.get("tags"))
            tags = state.get("tags") or [""]
            state["ref"] = f"{tags[0]}@{state['digest']}"
            return state["digest"], state
        if t == "aws:ecr/repository:Repository":
            # Auto-named: a replacement (its encryption is ForceNew) is a new repository with a new
            # name and URL, which the image pushes to and the workload then pulls from.
            repo = f"{name}-{_short_hash(name, state.get('encryptionConfigurations'))[:7]}"
            state |= {"name": repo, "registryId": ACCOUNT, "arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repo}",
                      "repositoryUrl": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repo}"}
            return repo, state
        if t == "aws:kms/key:Key":
            # A new key's ARN is known only once it is created: unknown during a preview.
            if not pulumi.runtime.is_dry_run():
                kms = Kms.get()
                os.environ.update(kms.env())  # the build's GenerateDataKey goes there (_run restores)
                arn, key_id = kms.key(name)
                state |= {"arn": arn, "keyId": key_id, "enableKeyRotation": state.get("enableKeyRotation", False)}
                return key_id, state
            return f"{name}-{suffix}", state
        if t == "aws:kms/alias:Alias":
            state |= {"arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:{state.get('name')}"}
            return state.get("name"), state
        if t == "aws:eks/podIdentityAssociation:PodIdentityAssociation":
            association = f"a-{_short_hash(name)[:17]}"
            state |= {"associationId": association,
                      "associationArn": f"arn:aws:eks:{REGION}:{ACCOUNT}:podidentityassociation/"
                                        f"{state.get('clusterName')}/{association}"}
            return f"{state.get('clusterName')},{association}", state
        if t == "aws:cloudwatch/logGroup:LogGroup":
            state |= {"arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{state.get('name')}"}
            return state.get("name"), state
        if t == "aws:iam/role:Role":
            role = f"{name}-{suffix}"
            state |= {"name": role, "arn": f"arn:aws:iam::{ACCOUNT}:role/{role}"}
            return role, state
        if t == "aws:eks/nodeGroup:NodeGroup":
            group = f"{name}-{suffix}"
            state |= {"nodeGroupName": group, "status": "ACTIVE",
                      "arn": f"arn:aws:eks:{REGION}:{ACCOUNT}:nodegroup/{state.get('clusterName')}/{group}"}
            return f"{state.get('clusterName')}:{group}", state
        if t == "aws:acm/certificate:Certificate":
            # Computed by ACM on create: unknown during a preview, as the provider leaves it.
            if not pulumi.runtime.is_dry_run():
                digest = _short_hash(name)
                state["arn"] = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/{digest[:8]}-0000-4000-8000-{digest[8:20]}"
            return f"{name}-{suffix}", state
        if t == "docker:index/container:Container":
            state.setdefault("name", f"{name}-{suffix}")
            return _short_hash(name, state.get("image")), state
        if t == "aws:ec2/launchTemplate:LaunchTemplate":
            state |= {"arn": f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-{suffix}",
                      "latestVersion": 1, "defaultVersion": 1, "name": f"{name}-{suffix}"}
            return f"lt-0{suffix}", state
        if t == "aws:route53/record:Record":
            state |= {"fqdn": state.get("name")}
            return f"{state.get('zoneId')}_{state.get('name')}_{state.get('type')}", state
        return f"{name}-{suffix}", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Optional[list]]:
        token = args.token
        self.invokes.append((token, dict(args.args)))
        if token == "aws:eks/getCluster:getCluster":
            cluster = args.args.get("name")
            return {"name": cluster, "endpoint": f"https://{_short_hash(cluster)[:32].upper()}.gr7.{REGION}.eks.amazonaws.com",
                    "certificateAuthorities": [{"data": "LS0tLS1CRUdJTi1DRVJUSUZJQ0FURS0tLS0t"}],
                    "vpcConfig": {"subnetIds": sorted(SUBNETS)[:4],
                                  "vpcId": VPC_ID},
                    "version": KUBERNETES_VERSION.rsplit(".", 1)[0]}, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if token == "aws:index/getRegion:getRegion":
            return {"name": REGION, "region": REGION, "id": REGION}, []
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "ecr-token-" + "x" * 20,
                    "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com",
                    "authorizationToken": "QVdTOmVjci10b2tlbg==", "id": REGION}, []
        if token == "aws:ec2/getSubnets:getSubnets":
            ids = set(SUBNETS)
            for f in args.args.get("filters") or []:
                name, values = f["name"], set(f["values"])
                if name == "subnet-id":
                    ids &= values
                elif name == "vpc-id":
                    ids = ids if VPC_ID in values else set()
                elif name.startswith("tag:"):
                    ids = {i for i in ids if SUBNETS[i].get(name[4:]) in values}
                else:
                    raise AssertionError(f"unexpected subnet filter {name}")
            return {"ids": sorted(ids), "id": REGION}, []
        if token == "aws:ec2/getSubnet:getSubnet":
            subnet = args.args.get("id")
            if subnet not in SUBNET_NETWORKS:
                raise Exception(f"InvalidSubnetID.NotFound: The subnet ID '{subnet}' does not exist")
            zone, cidr = SUBNET_NETWORKS[subnet]
            return {"id": subnet, "availabilityZone": zone, "cidrBlock": cidr, "vpcId": VPC_ID,
                    "tags": SUBNETS[subnet]}, []
        if token == "aws:ec2/getInstanceType:getInstanceType":
            name = args.args.get("instanceType")
            if name not in EC2_INSTANCE_TYPES:
                raise Exception(f"InvalidInstanceType: The following supplied instance types do not exist: [{name}]")
            return dict(EC2_INSTANCE_TYPES[name]["describeInstanceTypes"], id=name), []
        if token == "aws:route53/getZone:getZone":
            name = args.args.get("name")
            return {"name": name, "zoneId": EXAMPLE_ZONE_ID, "id": EXAMPLE_ZONE_ID, "privateZone": False}, []
        if token == "aws:lb/getHostedZoneId:getHostedZoneId":
            assert args.args.get("loadBalancerType") == "network", args.args
            return {"id": NLB_ZONE_ID, "loadBalancerType": "network", "region": REGION}, []
        if token == "aws:ecr/getImages:getImages":
            images = self.registry.get(ecr_repository_url(args.args["repositoryName"]), {})
            return {"imageIds": [{"imageTag": tag, "imageDigest": digest} for tag, digest in sorted(images.items())],
                    "repositoryName": args.args["repositoryName"], "registryId": ACCOUNT, "region": REGION,
                    "id": args.args["repositoryName"]}, []
        raise AssertionError(f"the program called an unexpected function: {token}")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, also keeping what the engine would see of each registration: parent,
    dependencies and property dependencies (the edges that order the steps), and the resource
    options that change how steps run (deleteBeforeReplace, customTimeouts, ignoreChanges,
    retainOnDelete, protect, providers). Pulumi's own mocks accept any order; these records let
    the tests assert the order a real engine would follow."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.records: list[Res] = []

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        secret_paths: list[str] = []
        inputs = _unwrap(rpc.deserialize_properties(request.object), "", secret_paths)
        self.records.append(Res(
            urn=response.urn, type=request.type, name=request.name, custom=request.custom,
            parent=request.parent, inputs=inputs, secret_paths=secret_paths, protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete), ignore_changes=list(request.ignoreChanges),
            providers=dict(request.providers), provider=request.provider,
            dependencies=list(request.dependencies),
            property_dependencies={key: list(deps.urns) for key, deps in request.propertyDependencies.items()},
            delete_before_replace=bool(request.deleteBeforeReplace),
            custom_timeouts=({k: v for k in ("create", "update", "delete") if (v := getattr(request.customTimeouts, k))}
                             if request.HasField("customTimeouts") else {}),
            replace_on_changes=list(request.replaceOnChanges),
            state=self.resources[response.urn].state if response.urn in self.resources else {},
        ))
        return response


@dataclass
class Run:
    """The result of one program run: resources in registration order and stack outputs."""

    stack: str
    resources: list[Res]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    logs: list[str] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """The provider functions the program called (token, arguments), in order."""

    def of_type(self, type_: str) -> list[Res]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Res:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Res:
        return next(r for r in self.resources if r.urn == urn)

    def served_model_of(self, res: Res) -> str:
        """The URN of the ServedModel a resource belongs to (up its parent chain)."""
        while res.type != "servedmodel:index:ServedModel":
            res = self.by_urn(res.parent)
        return res.urn

    def sibling(self, type_: str, res: Res) -> Res:
        """The one resource of `type_` in the same ServedModel as `res`."""
        found = [r for r in self.of_type(type_) if self.served_model_of(r) == self.served_model_of(res)]
        assert len(found) == 1, f"expected one {type_} beside {res.urn}, found {len(found)}"
        return found[0]

    def named(self, type_: str, name: str) -> Res:
        found = [r for r in self.of_type(type_) if r.name == name]
        assert len(found) == 1, f"expected one {type_} named {name!r}, found {len(found)}"
        return found[0]

    def children(self, parent: Res) -> list[Res]:
        return [r for r in self.resources if r.parent == parent.urn]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.resources:
            out[r.type] = out.get(r.type, 0) + 1
        return out


class _ListHandler(logging.Handler):
    """Keeps what the program logs through the engine (pulumi.log) for the tests to read."""

    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


_CACHE_DIR: Optional[Path] = None


def model_cache_dir() -> Path:
    """One models.build cache for every run in this test process (each model exported once).

    An existing $SERVEDMODEL_CACHE (e.g. CI's persistent cache) is used as it is; otherwise a
    temporary directory is made for the session and removed at exit.
    """
    global _CACHE_DIR  # noqa: PLW0603 - the process's one cache, made on first use
    if _CACHE_DIR is None:
        if os.environ.get("SERVEDMODEL_CACHE"):
            _CACHE_DIR = Path(os.environ["SERVEDMODEL_CACHE"])
        else:
            _CACHE_DIR = Path(tempfile.mkdtemp(prefix="servedmodel-test-cache-"))
            atexit.register(shutil.rmtree, _CACHE_DIR, True)
            os.environ["SERVEDMODEL_CACHE"] = str(_CACHE_DIR)
    return _CACHE_DIR


_RUNS: dict[str, Run] = {}


def stack_run(stack: str) -> Run:
    """The real stack file run once per test process (auth token given as a secret), shared by
    every test that only reads it."""
    if stack not in _RUNS:
        _RUNS[stack] = run_program(stack, secrets={"servedmodel:authToken": TEST_SECRET})
    return _RUNS[stack]


_VARIANTS: dict[str, Run] = {}


def variant_run(stack: str, overrides: Optional[dict[str, Any]] = None,
                registry: Optional[dict[str, dict[str, str]]] = None) -> Run:
    """A fresh run of `stack` with `overrides` (auth token given as a secret) against the images
    already in `registry` (repository URL -> {tag: digest}), once per test process: the lifecycle
    and change-safety tests share them. `{}` is an unchanged rerun."""
    key = json.dumps([stack, overrides or {}, registry or {}], sort_keys=True)
    if key not in _VARIANTS:
        _VARIANTS[key] = run_program(stack, overrides, secrets={"servedmodel:authToken": TEST_SECRET},
                                     registry=registry)
    return _VARIANTS[key]


def run_program(stack: str, overrides: Optional[dict[str, Any]] = None,
                secrets: Optional[dict[str, str]] = None, preview: bool = False,
                stack_values: Optional[dict[str, Any]] = None,
                registry: Optional[dict[str, dict[str, str]]] = None) -> Run:
    """Run ROOT/__main__.py for `stack` under the mocks; raises what the program raises.
    `stack_values` stands in for the stack file's config; `registry` holds the images already in
    the registries (RealisticMocks)."""
    config, secret_keys = merged_config(stack, overrides, secrets, stack_values)
    return run_file(ROOT / "__main__.py", PROJECT, stack, config, secret_keys, preview=preview, registry=registry)


CONFIG_ENV = ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS")


def run_file(program: Path, project: str, stack: str, config: dict[str, str], secret_keys: set[str],
             preview: bool = False, registry: Optional[dict[str, dict[str, str]]] = None) -> Run:
    """Run any Pulumi program file under the mocks, in its own directory (as the CLI does)."""
    def main() -> None:
        runpy.run_path(str(program), run_name="__main__")

    return run_callable(main, project, stack, config, secret_keys, preview=preview, cwd=program.parent,
                        registry=registry)


def run_callable(main: Callable[[], None], project: str, stack: str, config: Optional[dict[str, str]] = None,
                 secret_keys: Optional[set[str]] = None, preview: bool = False, cwd: Path = ROOT,
                 registry: Optional[dict[str, dict[str, str]]] = None) -> Run:
    """Run `main` as a Pulumi program under the mocks, with `config` as the CLI would pass it."""
    model_cache_dir()
    saved = {name: os.environ.get(name) for name in CONFIG_ENV}
    # What the CLI's language host gives the program: the whole config as JSON text values.
    os.environ["PULUMI_CONFIG"] = json.dumps(config or {})
    os.environ["PULUMI_CONFIG_SECRET_KEYS"] = json.dumps(sorted(secret_keys or ()))
    try:
        return _run(main, project, stack, preview, cwd, registry)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(main: Callable[[], None], project: str, stack: str, preview: bool, cwd: Path,
         registry: Optional[dict[str, dict[str, str]]] = None) -> Run:
    mocks = RealisticMocks(registry)
    monitor = RecordingMonitor(mocks)
    # The encrypted builds' AWS calls go to the test KMS (Kms.get, when the program makes or names
    # a key), never to an account of the machine.
    aws_env = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in aws_env:
        del os.environ[name]
    if Kms._instance is not None:
        os.environ.update(Kms._instance.env())
    try:
        return _run_mocked(main, mocks, monitor, stack, project, preview, cwd)
    finally:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(aws_env)


def _retrieve_failed_futures() -> None:
    """After a failed run: mark the errors of its futures as seen. The outputs of a resource whose
    registration failed hold the run's error, and nothing awaits them; asyncio would report each
    ("Future exception was never retrieved") when it is collected, at the interpreter's exit,
    long after the test that expected the failure. The run's error itself goes to the caller."""
    for obj in gc.get_objects():
        # type(), not isinstance: a lazy module (torch's) warns when asked for its __class__.
        if issubclass(type(obj), asyncio.Future) and obj.done() and not obj.cancelled():
            obj.exception()


def _run_mocked(main: Callable[[], None], mocks: RealisticMocks, monitor: RecordingMonitor, stack: str,
                project: str, preview: bool, cwd: Path) -> Run:
    logs: list[str] = []
    logger = logging.getLogger(f"servedmodel-mocks-{len(_RUNS)}-{stack}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers = [_ListHandler(logs)]
    # A fresh root Stack per run: set_mocks makes one when none is active.
    pulumi.runtime.settings.ROOT.set(None)
    # Nothing of an earlier run in this process: a run that failed leaves its failed Outputs (and
    # RPCs) tracked, and the next run's wait for outstanding work would raise their errors again
    # (Pulumi's own `pulumi.runtime.test` clears them the same way).
    runtime: Any = SETTINGS  # its fields are context variables behind properties the stubs do not show
    runtime.rpc_manager.clear()
    runtime.outputs.clear()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, monitor=monitor,
                             logger=logger)
    # As the exec shim (pulumi-language-python-exec) loads the environment into the runtime.
    pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())

    # The CLI runs the program in the project directory.
    before = os.getcwd()
    os.chdir(cwd)
    try:
        _sync_await(run_pulumi_func(main))
    except BaseException:
        _retrieve_failed_futures()
        raise
    finally:
        os.chdir(before)
    root = get_root_resource()
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    for key, value in root.outputs.items():  # type: ignore[union-attr]
        out = pulumi.Output.from_input(value)
        outputs[key] = _sync_await(out.future())
        if _sync_await(out.is_secret()):
            secret_outputs.add(key)
    return Run(stack=stack, resources=monitor.records, outputs=outputs, secret_outputs=secret_outputs, logs=logs,
               invokes=mocks.invokes)


def kubernetes_manifest(res: Res) -> dict[str, Any]:
    """The object as the Kubernetes provider would send it (auto-name filled in)."""
    doc = json.loads(json.dumps(res.inputs))
    doc.setdefault("metadata", {}).setdefault("name", res.state.get("metadata", {}).get("name"))
    return doc
