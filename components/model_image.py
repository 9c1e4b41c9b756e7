"""ModelImage: a registry and the serving image built from a models.build context."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from . import specs
from .inputs import given, lift


@dataclass
class ModelImageArgs:
    context_dir: str
    """The build context written by models.build (Dockerfile at its root), relative to the
    project directory so the state does not depend on where the repository is checked out. Required."""
    version: str
    """The model version: the image tag. Required."""
    push: bool
    """True (kubernetes target): push to the registry. False (docker target): load into the local engine."""
    local_repository: str = "servedmodel"
    """Repository name of the locally loaded image (push False). Default "servedmodel"."""
    registry: pulumi.Input[str] = ""
    """An existing repository (host/path) to push to, or another resource's output (which counts
    as given); "" creates an ECR repository. Default ""."""
    registry_username: pulumi.Input[str] = ""
    """User for `registry` (another resource's output too); "" pushes without logging in. Default ""."""
    registry_password: Optional[pulumi.Input[str]] = None
    """Password for `registry`, a secret. Default None."""
    keep_versions: int = 10
    """Image versions the ECR lifecycle policy keeps (rollback window). Default 10."""
    protect: bool = False
    """Protect the ECR repository from deletion (prod). Default False."""
    platform: str = "linux/amd64"
    """Target platform of a pushed build (EKS nodes are x86_64). Default linux/amd64."""


class ModelImage(pulumi.ComponentResource):
    """The serving image, tagged with the model version; on push, in an ECR or a given registry.

    Outputs: `ref` (digest-pinned `repo:version@sha256:...` when pushed, the loaded tag otherwise;
    either way an output of the build, so a consumer waits for it), `tag`, `repository_url`.

    The image is `retain_on_delete`: when a new version replaces it, the old image stays in the
    registry, so pods still running it (and a rollback) can pull it. The ECR lifecycle policy is
    what expires old versions. `build_on_preview` builds (never pushes) during `pulumi preview`, so
    a PR with a broken Dockerfile fails its review.
    """

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]
    repository_url: pulumi.Output[str]

    def __init__(self, name: str, args: ModelImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        registries: list[docker_build.RegistryArgs] = []

        if not args.push:
            repository_url: pulumi.Output[str] = pulumi.Output.from_input(args.local_repository)
        elif given(args.registry):
            repository_url = pulumi.Output.from_input(args.registry)
            if given(args.registry_username):
                registries.append(docker_build.RegistryArgs(
                    address=lift(specs.registry_host, args.registry), username=args.registry_username,
                    password=pulumi.Output.secret(args.registry_password)))
        else:
            repo = aws.ecr.Repository(
                f"{name}-repo",
                # MUTABLE, and every workload pinned by digest: a build is not bit-reproducible,
                # so a revert (A -> B -> A), a retry after a push that landed but was not
                # recorded, or a model swap pushes an existing version tag again with a new
                # digest, which an IMMUTABLE repository refuses. The version is a content hash of
                # what is served, so every build under one tag serves the same model.
                # docs/deploy.md "Images and registries" gives the whole argument.
                image_tag_mutability="MUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS"}],
                force_delete=False,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-lifecycle", repository=repo.name,
                policy=specs.ecr_lifecycle_policy(args.keep_versions),
                # A new policy replaces this resource (policy is ForceNew), and its delete removes
                # the repository's one policy: create-before-delete would delete the new policy.
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
            token = aws.ecr.get_authorization_token_output(registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self))
            registries.append(docker_build.RegistryArgs(
                address=repo.repository_url.apply(specs.registry_host),
                username=token.user_name, password=pulumi.Output.secret(token.password)))
            repository_url = repo.repository_url

        tag = pulumi.Output.concat(repository_url, ":", args.version)
        image = docker_build.Image(
            f"{name}-image",
            context={"location": args.context_dir},
            tags=[tag],
            # The cluster's nodes are x86_64; the local engine builds for its own platform.
            platforms=[args.platform] if args.push else None,
            push=args.push,
            # Local target: load into the engine the containers run from; nothing is pushed.
            load=None if args.push else True,
            registries=registries or None,
            build_on_preview=True,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        if args.push:
            # The digest of the push that this very update made: a re-push of the same version
            # moves the tag, and the workload follows to the image just pushed.
            ref = pulumi.Output.all(tag, image.digest).apply(lambda td: specs.pinned_reference(td[0], td[1]))
        else:
            # The loaded tag, read back from the build so that whatever runs it waits for the build
            # (a plain string would let the engine start the container while the build runs, and
            # the docker provider pulls what it cannot find locally). Not `image.ref`: that is
            # tag@digest, and the local engine indexes a loaded image by tag, not by repo digest.
            # The version tag is content-addressed, so the tag alone names one image.
            ref = image.tags.apply(lambda tags: tags[0])
        self.ref = ref
        self.tag = tag
        self.repository_url = repository_url
        self.register_outputs({"ref": ref, "tag": tag, "repository_url": repository_url})
