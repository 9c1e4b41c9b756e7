"""A revert deploys the digest already in the registry, for real (issue 18, finding 9).

The program asks a registry that is not ECR (`servedmodel:registry`) which versions it holds, with
the Docker Registry HTTP API v2 (components/registry.py: a manifest HEAD with docker's Accept
headers, the digest from Docker-Content-Digest). These tests ask the real registry on
127.0.0.1:5000 after real `docker push`es: the lookup's digest is the push's, an absent tag or
repository is absent, and the program run (under Pulumi's mocks, everything but this registry
mocked) declares no build for a version the registry holds from an earlier push and pins the
workload to that push's digest. The ECR path (aws.ecr.get_images) is played under the mocks in
tests/components/test_lifecycle.py.
"""
from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import pytest

from imagekit import SESSION, docker

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "components"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from servedmodel.components import registry as registry_api  # noqa: E402
from servedmodel.components.model_image import BUILD_MARKER_PREFIX  # noqa: E402

pytestmark = [pytest.mark.docker]


def push_tiny(tmp_path: Path, ref: str, content: str) -> str:
    """Build a one-file image (FROM scratch: nothing to pull), push it as `ref`; the pushed digest."""
    context = tmp_path / uuid.uuid4().hex[:8]
    context.mkdir()
    (context / "payload").write_text(content)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
    docker("build", "--quiet", "--label", f"org.servedmodel.test.session={SESSION}", "--tag", ref, str(context))
    out = docker("push", ref).stdout
    [digest] = re.findall(r"digest: (sha256:[0-9a-f]{64})", out)
    docker("rmi", ref, check=False)
    return digest


@pytest.fixture
def prefix(registry) -> str:
    """A repository prefix of its own on the real registry (the registry outlives test runs)."""
    return f"{registry}/servedmodel-test/reuse-{SESSION}-{uuid.uuid4().hex[:6]}"


def test_the_lookup_reads_the_pushed_digest_and_absent_tags(prefix, tmp_path):
    repo = f"{prefix}/model"
    digest = push_tiny(tmp_path, f"{repo}:v1", "one")
    assert registry_api.tag_digests(repo, ["v1", "v2"]) == {"v1": digest}
    # A repository nobody pushed to answers 404 (NAME_UNKNOWN): absent, not an error.
    assert registry_api.tag_digests(f"{prefix}/never-pushed", ["v1"]) == {}
    # A second tag on the same image names the same digest.
    docker("pull", f"{repo}:v1")
    docker("tag", f"{repo}:v1", f"{repo}:marker")
    docker("push", f"{repo}:marker")
    docker("rmi", f"{repo}:v1", f"{repo}:marker", check=False)
    assert registry_api.tag_digests(repo, ["v1", "marker"]) == {"v1": digest, "marker": digest}


def test_an_unreachable_registry_is_an_error_not_an_absence():
    with pytest.raises(registry_api.RegistryError):
        registry_api.tag_digests("127.0.0.1:9/servedmodel-test/x", ["v1"], timeout=2)


def test_a_revert_deploys_the_version_the_registry_holds_without_a_build(prefix, tmp_path, model_cache_dir):
    from pulumi_harness import TEST_SECRET, run_program

    config = {"servedmodel:registry": prefix}
    secrets = {"servedmodel:authToken": TEST_SECRET}
    first = run_program("dev", config, secrets=secrets)
    version = first.outputs["modelVersion"]["mnist-mlp"]
    # The registry holds nothing yet: both models are built.
    assert sorted(i.name for i in first.of_type("docker-build:index:Image")) == ["lenet-image", "mnist-mlp-image"]

    # An earlier `up` pushed mnist-mlp's version (the stack then moved on: its build marker names
    # another digest). The program finds it and deploys that digest, with no build for it.
    pushed = push_tiny(tmp_path, f"{prefix}/mnist-mlp:{version}", "model A, first push")
    push_tiny(tmp_path, f"{prefix}/mnist-mlp:{BUILD_MARKER_PREFIX}dev", "model B, the last build")
    back = run_program("dev", config, secrets=secrets)
    assert [i.name for i in back.of_type("docker-build:index:Image")] == ["lenet-image"]
    deployment = back.named("kubernetes:apps/v1:Deployment", "mnist-mlp-deploy")
    assert deployment.inputs["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"{prefix}/mnist-mlp:{version}@{pushed}"
    assert back.outputs["image"]["mnist-mlp"] == f"{prefix}/mnist-mlp:{version}@{pushed}"

    # When the stack's own build pushed it last (the marker names the same digest), the build
    # is declared again, unchanged: an unchanged commit after a push previews no change.
    docker("pull", f"{prefix}/mnist-mlp:{version}")
    docker("tag", f"{prefix}/mnist-mlp:{version}", f"{prefix}/mnist-mlp:{BUILD_MARKER_PREFIX}dev")
    docker("push", f"{prefix}/mnist-mlp:{BUILD_MARKER_PREFIX}dev")
    docker("rmi", f"{prefix}/mnist-mlp:{version}", f"{prefix}/mnist-mlp:{BUILD_MARKER_PREFIX}dev", check=False)
    again = run_program("dev", config, secrets=secrets)
    assert sorted(i.name for i in again.of_type("docker-build:index:Image")) == ["lenet-image", "mnist-mlp-image"]
    image = again.named("docker-build:index:Image", "mnist-mlp-image")
    assert image.inputs["tags"] == [f"{prefix}/mnist-mlp:{version}", f"{prefix}/mnist-mlp:{BUILD_MARKER_PREFIX}dev"]


@pytest.fixture(scope="session")
def model_cache_dir():
    from pulumi_harness import model_cache_dir as cache

    return cache()
