"""RegistryArgs: where the image is pushed (kubernetes target)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from ..inputs import given
from .checking import ArgsGroup, Checker, integer
from .setting import setting


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
    keep_versions: int = setting(10, "Image versions an ECR lifecycle policy keeps, so a rollback to any of them "
                                     "stays possible.", check=integer(1))

    def rules(self, c: Checker) -> None:
        if given(self.username) and self.password is None:
            c.bad("username", "needs the secret @{registry.password} (pulumi config set --secret)")
