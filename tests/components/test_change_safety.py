"""Change safety without the CLI: what a preview would diff, proven on the program's inputs.

`pulumi preview` diffs each resource's inputs against the last deployment. Identical inputs for
an identical commit mean "no changes"; a model-only change must touch exactly the image and the
Deployment, and only fields that update in place (never the immutable selector).
"""
from __future__ import annotations

from typing import Any

import pytest

from lifecycle_model import changed_paths
from pulumi_harness import Run, variant_run


def by_urn(run: Run) -> dict[str, dict[str, Any]]:
    return {r.urn: r.inputs for r in run.resources}


def diff(before: Run, after: Run) -> dict[str, list[str]]:
    a, b = by_urn(before), by_urn(after)
    assert set(a) == set(b), f"resources created {set(b) - set(a)} / deleted {set(a) - set(b)}"
    return {urn: paths for urn in a if (paths := changed_paths(a[urn], b[urn]))}


@pytest.mark.parametrize("stack", ["local", "dev", "prod"])
def test_an_unchanged_commit_declares_identical_resources(stack_runs, stack):
    again = variant_run(stack, {})
    assert diff(stack_runs[stack], again) == {}
    assert again.outputs == stack_runs[stack].outputs


def test_a_model_only_change_updates_one_image_and_one_deployment(stack_runs):
    before = stack_runs["dev"]
    models = [{"name": "mnist-mlp", "model": "mnist-mlp", "compression": "fp16"},
              {"name": "lenet", "model": "lenet", "compression": "int8"}]
    after = variant_run("dev", {"servedmodel:models": models})
    changes = diff(before, after)
    kinds = sorted(urn.split("::")[-2].split("$")[-1] + " " + urn.split("::")[-1] for urn in changes)
    assert kinds == ["docker-build:index:Image mnist-mlp-image", "kubernetes:apps/v1:Deployment mnist-mlp-deploy"]
    for urn, paths in changes.items():
        if "Deployment" in urn:
            # In-place updates of the pod template (a rollout), never the immutable selector.
            allowed = ("metadata.annotations.", "spec.template.metadata.", "spec.template.spec.containers[0].image")
            assert all(p.startswith(allowed) for p in paths), paths
            assert "spec.template.spec.containers[0].image" in paths
        else:
            assert paths == ["tags[0]"], paths  # same context path, new version tag
    assert after.outputs["modelVersion"]["mnist-mlp"] != before.outputs["modelVersion"]["mnist-mlp"]
    assert after.outputs["modelVersion"]["lenet"] == before.outputs["modelVersion"]["lenet"]


def test_swapping_the_model_keeps_the_served_name_and_every_resource(stack_runs):
    """The flat config's served name does not follow the model: no rename, so no replacements."""
    before = stack_runs["local"]
    after = variant_run("local", {"servedmodel:model": "lenet"})
    changes = diff(before, after)
    assert sorted(urn.split("::")[-1] for urn in changes) == ["mnist-mlp-image", "port-8080"]
