"""ModelImage: a registry and the serving image built from a models.build context."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, cast

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from . import registry, specs
from .inputs import given, is_plain, known, lift

# The tag each build of a stack also pushes, besides the version: which version the stack's own
# build resource last pushed (components/model_image.py, ModelImage._published). One per stack, so
# stacks that share a given registry do not read each other's.
BUILD_MARKER_PREFIX = "servedmodel-build-"


@dataclass
class ModelImageArgs:
    context_dir: pulumi.Input[str]
    """The build context written by models.build (Dockerfile at its root), relative to the
    project directory so the state does not depend on where the repository is checked out; an
    Output when the context is sealed with a key another resource makes (kms). Required."""
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
    """Password for `registry`, kept secret in the state. A plain str also lets the program ask the
    registry which versions it already holds (an Output cannot be read while the program decides
    what to declare: such a registry is then asked without credentials). Default None."""
    keep_versions: int = 10
    """Image versions the ECR lifecycle policy keeps (rollback window). Default 10."""
    protect: bool = False
    """Protect the ECR repository from deletion (prod). Default False."""
    platforms: Sequence[str] = ("linux/amd64",)
    """Platforms the image is built for (docker-build `platforms`). Pushed with two or more, the
    registry gets one image index (a manifest list) and `digest` is the index's, so the
    workload's `tag@digest` pulls each node's own architecture. Loaded (push False): one, the
    host's (a multi-platform image cannot be loaded into the engine). Default ("linux/amd64",)."""
    retain_repository: bool = False
    """What a delete of the ECR repository does (destroy, a served-name rename): True removes it
    from the state only (retain_on_delete: the repository and its images stay); False deletes it
    with its images (force_delete). Default False."""
    kms_key_arn: Optional[pulumi.Input[str]] = None
    """The KMS key the ECR repository is encrypted with (the model's own key, kms encryption);
    None: ECR's AWS-managed key. Fixed at the repository's creation: a change replaces it.
    Default None."""
    build_marker: str = ""
    """The tag every build also pushes, recording which version the stack's build resource last
    pushed; "" = BUILD_MARKER_PREFIX + the stack name. Default ""."""


class ModelImage(pulumi.ComponentResource):
    """The serving image, tagged with the model version; on push, in an ECR or a given registry.

    Outputs: `ref` (digest-pinned `repo:version@sha256:...` when pushed, the loaded tag otherwise;
    either way an output of what made it, so a consumer waits for it), `tag`, `repository_url`;
    `built` (plain): whether this run declares a build.

    A version the registry already holds from an earlier push that this stack's build resource no
    longer holds (a revert A -> B -> A, a swap of two models) is deployed by the digest the
    registry names for its tag: no build, no push, the very image that ran before (`_published`).
    Every other version is built and pushed (`build_on_preview` builds, never pushes, during
    `pulumi preview`, so a PR with a broken Dockerfile fails its review).

    The image is `retain_on_delete`: when a new version replaces it, the old image stays in the
    registry, so pods still running it (and a rollback) can pull it. The ECR lifecycle policy is
    what expires old versions.
    """

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]
    repository_url: pulumi.Output[str]
    built: bool

    def __init__(self, name: str, args: ModelImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelImage", name, None, opts)
        registries: list[docker_build.RegistryArgs] = []
        marker = args.build_marker or BUILD_MARKER_PREFIX + pulumi.get_stack()
        in_registry: Optional[dict[str, str]] = None  # tag -> digest; None: the registry cannot be asked

        if not args.push:
            repository_url: pulumi.Output[str] = pulumi.Output.from_input(args.local_repository)
        elif given(args.registry):
            repository_url = pulumi.Output.from_input(args.registry)
            if given(args.registry_username):
                registries.append(docker_build.RegistryArgs(
                    address=lift(specs.registry_host, args.registry), username=args.registry_username,
                    password=pulumi.Output.secret(args.registry_password)))
            in_registry = self._registry_tags(args, marker)
        else:
            repo = aws.ecr.Repository(
                f"{name}-repo",
                # MUTABLE, and every workload pinned by digest: a build is not bit-reproducible,
                # and a retry after a push that landed but was not recorded (or a version
                # re-deployed after a reuse, _published) pushes an existing version tag again with
                # a new digest, which an IMMUTABLE repository refuses; the build marker tag moves on
                # every build. The version is a content hash of what is served, so every build
                # under one tag serves the same model. docs/deploy.md "Images and registries".
                image_tag_mutability="MUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                # Fixed at creation: ECR has no call that changes a repository's encryption, so the
                # provider replaces the repository when this changes (a new, empty repository; the
                # image is pushed to it again and the pods roll to it: docs/deploy.md,
                # "Encryption"). With kms, the model's own key (the repository waits for it).
                encryption_configurations=[{"encryption_type": "KMS", "kms_key": args.kms_key_arn}
                                           if args.kms_key_arn is not None else {"encryption_type": "KMS"}],
                # A repository that holds images cannot be deleted without `force`
                # (ECR DeleteRepository: RepositoryNotEmptyException), and every build is retained,
                # so a destroy or a served-name rename either forces the delete (ephemeral stacks)
                # or leaves the repository in the account (retain_on_delete: prod's images are
                # its rollback source). force_delete is read from the state when the delete runs:
                # an `up` must record a change of it before a destroy can use it (docs/deploy.md).
                force_delete=not args.retain_repository,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect,
                                            retain_on_delete=args.retain_repository),
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-lifecycle", repository=repo.name,
                policy=specs.ecr_lifecycle_policy(args.keep_versions),
                # A new policy replaces this resource (policy is ForceNew), and its delete removes
                # the repository's one policy: create-before-delete would delete the new policy.
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
            token = aws.ecr.get_authorization_token_output(registry_id=repo.registry_id,
                                                           opts=pulumi.InvokeOutputOptions(parent=self))
            registries.append(docker_build.RegistryArgs(
                address=repo.repository_url.apply(specs.registry_host),
                username=token.user_name, password=pulumi.Output.secret(token.password)))
            repository_url = repo.repository_url
            in_registry = self._ecr_tags(repo)

        tag = pulumi.Output.concat(repository_url, ":", args.version)
        existing = self._published(args.version, marker, in_registry)
        self.built = existing is None
        if existing is not None:
            pulumi.log.info(f"version {args.version} is in the registry ({existing}) and this stack's build holds "
                            "another: deploying that image, without a build or a push", resource=self)
            ref = tag.apply(lambda t: specs.pinned_reference(t, existing))
            self.ref, self.tag, self.repository_url = ref, tag, repository_url
            self.register_outputs({"ref": ref, "tag": tag, "repository_url": repository_url})
            return

        image = docker_build.Image(
            f"{name}-image",
            context={"location": args.context_dir},
            # The marker tag records that this build resource pushed this version (_published).
            tags=[tag, pulumi.Output.concat(repository_url, ":", marker)] if args.push else [tag],
            # Kubernetes: amd64 and arm64 by default (one index; BuildKit runs the other
            # architecture's RUN steps under QEMU, docs/image.md); the local engine: its own.
            # (docker-build's Platform is a str enum: its values are these strings)
            platforms=cast("list[docker_build.Platform]", list(args.platforms)),
            push=args.push,
            # Local target: load into the engine the containers run from; nothing is pushed.
            load=None if args.push else True,
            registries=registries or None,
            # Kept on with two platforms: a PR whose image no longer builds for one architecture (a
            # dependency without an aarch64 wheel) fails its preview, not its merge. It costs an
            # emulated arm64 build per preview of a changed model only (an unchanged context has
            # no diff and is not built).
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
            ref = image.tags.apply(_first_tag)
        self.ref = ref
        self.tag = tag
        self.repository_url = repository_url
        self.register_outputs({"ref": ref, "tag": tag, "repository_url": repository_url})

    @staticmethod
    def _published(version: str, marker: str, in_registry: Optional[dict[str, str]]) -> Optional[str]:
        """The digest to deploy without a build, or None to build and push.

        Reuse when the registry holds the version and the stack's marker tag names another digest:
        the version was pushed before, and the build resource in the state now holds another
        version (a revert, a swap), so declaring the build would rebuild and re-push it. When the
        marker names the same digest, the build resource in the state pushed this very version:
        it is declared again, unchanged, and the engine does nothing (an unchanged commit
        previews no changes). A registry that cannot be asked (None: a repository this run
        creates, unknown during a preview) holds nothing yet.
        """
        if not in_registry or version not in in_registry:
            return None
        return in_registry[version] if in_registry.get(marker) != in_registry[version] else None

    def _ecr_tags(self, repo: aws.ecr.Repository) -> Optional[dict[str, str]]:
        """The repository's tags and digests (aws.ecr.get_images: ListImages, which lists a missing
        tag as absent instead of failing as get_image does). A plain invoke, because what the
        program declares depends on it; its input is the repository's name, an output: the
        invoke waits for it, and during a preview of a repository this run creates it is
        unknown (None: nothing is there yet, so the build is declared and previewed)."""
        result = pulumi.runtime.invoke("aws:ecr/getImages:getImages",
                                       {"repositoryName": repo.name, "registryId": repo.registry_id},
                                       opts=pulumi.InvokeOptions(parent=self))
        if not result.is_known or result.value is None:
            return None
        return {i["imageTag"]: i["imageDigest"] for i in result.value.get("imageIds") or []
                if i.get("imageTag") and i.get("imageDigest")}

    @staticmethod
    def _registry_tags(args: ModelImageArgs, marker: str) -> Optional[dict[str, str]]:
        """The version's and the marker's digests in a given registry (HTTP API v2); None when the
        registry, its user or its password is an Output the program cannot read while it decides
        what to declare (the build is declared, as before)."""
        password = args.registry_password if args.registry_username else ""
        if not all(is_plain(v) for v in (args.registry, args.registry_username, password)):
            return None
        try:
            return registry.tag_digests(known(args.registry), [args.version, marker], known(args.registry_username),
                                        known(password) or "")
        except (registry.RegistryError, ValueError) as exc:
            raise pulumi.RunError(f"registry {args.registry!r}: cannot tell whether version {args.version} is "
                                  f"already there: {exc}") from None


def _first_tag(tags: Optional[Sequence[str]]) -> str:
    """The version tag: the build declares it first (and one at least)."""
    assert tags, "the image is built with its version tag"
    return tags[0]
