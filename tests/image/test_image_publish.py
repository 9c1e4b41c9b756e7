"""Idempotent publishing, for real: the lifecycles that push a version tag that already exists.

A revert (model A -> B -> A), a retry after a push that landed but was not recorded, and a swap
of two models all push an existing version tag again, from a new build with a new digest (builds
are not bit-reproducible). The design (docs/deploy.md, "Why mutable tags, pinned by digest"):
the repository's tags are mutable and every workload runs `repo:version@digest` of the push its
own `up` made. This test does those pushes against the real registry on 127.0.0.1:5000 with the
real Docker engine and runs what the workload would be given.
"""
from __future__ import annotations

import json
import re
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from imagekit import SESSION, Container, docker, http_status

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from servedmodel.components import specs  # noqa: E402  (the reference the workload is given)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


def push(ref: str) -> str:
    """`docker push`; returns the digest of the manifest it pushed (what docker-build reports)."""
    out = docker("push", ref).stdout
    found = re.findall(r"digest: (sha256:[0-9a-f]{64})", out)
    assert len(found) == 1, out
    return found[0]


def registry_digest(registry: str, name: str, reference: str) -> str:
    """What the registry resolves a tag (or digest) to; raises when it does not know it."""
    req = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{reference}", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"]


def test_revert_and_repush_of_a_version_succeed_and_the_workload_serves_that_version(images, registry):
    a, b = images.get("mnist-mlp"), images.get("lenet")
    assert a.version != b.version and a.manifest["name"] != b.manifest["name"]
    # One served name's repository, new per run: the registry outlives test runs.
    name = f"servedmodel-test/publish-{SESSION}-{uuid.uuid4().hex[:6]}"
    repo = f"{registry}/{name}"
    tag_a, tag_b = f"{repo}:{a.version}", f"{repo}:{b.version}"
    container, first_a = None, None
    try:
        # 1. Model A: build (the session's image), push.
        docker("tag", a.image, tag_a)
        first_a = push(tag_a)
        # 2. Model B replaces it.
        docker("tag", b.image, tag_b)
        digest_b = push(tag_b)
        # 3. Revert to A: a new build of A's context (same version, a different build: another
        #    config, so another digest, as a rebuild on another day or machine would give),
        #    pushed under the tag that already exists. The same happens on a retry after a push
        #    that landed unrecorded, and on a swap of two models.
        rebuilt = docker("build", "--network", "host", "--quiet",
                         "--label", f"org.servedmodel.test.session={SESSION}",
                         "--label", f"org.servedmodel.test.build={uuid.uuid4().hex}",
                         "--tag", tag_a, str(a.context)).stdout.strip()
        assert rebuilt != a.image_id, "the rebuild must be a different build of the same version"
        second_a = push(tag_a)
        assert second_a != first_a

        # The tag moved to the newest build; the replaced build still resolves by digest (pods
        # pinned to it can pull it until the lifecycle policy expires it); B is untouched.
        assert registry_digest(registry, name, a.version) == second_a
        assert registry_digest(registry, name, first_a) == first_a
        assert registry_digest(registry, name, b.version) == digest_b
        tags = json.load(urllib.request.urlopen(f"http://{registry}/v2/{name}/tags/list", timeout=10))["tags"]
        assert sorted(tags) == sorted([a.version, b.version])

        # What the workload is given: the version tag pinned to the digest of this push. Remove
        # the local names first, so running it pulls it from the registry.
        workload_ref = specs.pinned_reference(tag_a, second_a)
        docker("rmi", tag_a, tag_b)
        container = Container(workload_ref)
        container.wait_ready()
        with urllib.request.urlopen(f"{container.url}/v2/models/{a.manifest['name']}", timeout=10) as resp:
            served = json.load(resp)
        assert served["name"] == a.manifest["name"] and served["versions"] == [a.version]
        assert http_status(f"{container.url}/v2/models/{b.manifest['name']}") == 404
        # The image that ran is the rebuild, fetched by its digest.
        assert docker("inspect", "--format", "{{.Image}}", container.id).stdout.strip() == rebuilt
    finally:
        if container is not None:
            container.remove()
        # (first_a is None when the first push never happened: nothing by digest to remove)
        for ref in (tag_a, tag_b, *([f"{repo}@{first_a}"] if first_a else [])):
            docker("rmi", ref, check=False)
        docker("image", "prune", "--force", "--filter", f"label=org.servedmodel.test.session={SESSION}",
               check=False)
