"""RegistryArgs: where the image is pushed (kubernetes target)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from ..inputs import given
from ..specs import REVISION_HISTORY_LIMIT
from .checking import ArgsGroup, Checker, integer
from .setting import setting

# The versions one workload may pin at once: the ReplicaSets its rollout history keeps
# (revisionHistoryLimit, `kubectl rollout undo` targets), the current one and a canary. ECR's
# count rule keeps the newest pushes, so fewer kept versions could expire what still runs
# (issue 18, "ECR retention counts pushes"; docs/deploy.md).
KEEP_VERSIONS_FLOOR = REVISION_HISTORY_LIMIT + 2


@dataclass(frozen=True)
class RegistryArgs(ArgsGroup):
    """Where the image is pushed (kubernetes target). `url`, `username` and `password` accept
    another resource's outputs (a registry created in the same program)."""

    GROUP = "registry"

    url: pulumi.Input[str] = setting(
        "", "Registry prefix (host/path) to push to instead of ECR; each model goes to <registry>/<served name>. "
            "Empty creates an ECR repository per model (kubernetes target).", key="registry")
    username: pulumi.Input[str] = setting(
        "", "User for @{registry.url}; its password is the stack secret @{registry.password}.", key="registryUsername")
    password: Optional[pulumi.Input[str]] = setting(
        None, "Password for @{registry.url} / @{registry.username}. Secret only.",
        key="registryPassword", secret=True, repr=False, compare=False)
    keep_versions: int = setting(10, "Image versions the ECR lifecycle policy keeps, so a rollback to any of them "
                                     "stays possible. Counted in pushes, not in what runs - at least "
                                     f"{KEEP_VERSIONS_FLOOR} (what one workload may pin at once); docs/deploy.md.",
                                 check=integer(KEEP_VERSIONS_FLOOR))
    retain: bool = setting(
        False, "What pulumi destroy (or a served-name rename) does with the ECR repository - true leaves it and its "
               "images in the account (retain on delete; prod: the rollback source and audit trail), false deletes "
               "it with its images (force delete; dev and ephemeral stacks). Run pulumi up after changing it, before "
               "a destroy.", key="retainRegistry")

    def rules(self, c: Checker) -> None:
        if given(self.username) and self.password is None:
            c.bad("username", "needs the secret @{registry.password} (pulumi config set --secret)")
