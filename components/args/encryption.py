"""EncryptionArgs: how the model travels and rests (issue 21, docs/deploy.md "Encryption")."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import pulumi

from ..inputs import given
from .checking import ArgsGroup, Checker, one_of
from .setting import setting

# kms: a KMS data key the pod's own identity unwraps (kubernetes); local: a key file on this
# machine mounted into the container (docker); none: the model in clear in the image.
ENCRYPTION_MODES = ("kms", "local", "none")
# The key itself, never an alias: the pod's IAM policy names the key the data key was wrapped
# with (KMS returns the key ARN as KeyId), and an alias ARN never matches it.
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$")


def _kms_key_arn(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and _KMS_KEY_ARN.match(value)):
        return ("a KMS key ARN such as arn:aws:kms:eu-west-1:123456789012:key/<id> (the key, not an alias), or empty "
                "to let the stack create one")
    return None


@dataclass(frozen=True)
class EncryptionArgs(ArgsGroup):
    """How the model is encrypted in the image, and whose key unwraps it.

    `kms_key_arn` accepts another resource's output (a key made elsewhere in the program).
    """

    GROUP = "encryption"
    STACK_GROUP = "encryption"

    mode: Optional[str] = setting(
        None, "Encryption of the model in the image - kms (AES-256-GCM under a data key that AWS KMS wraps; the pod's "
              "own identity, EKS Pod Identity, unwraps it, and the ECR repository is encrypted with the same key), "
              "local (a key file on this machine, generated under the build folder with mode 0600 and mounted "
              "read-only into the container) or none. Empty - kms on @{target} kubernetes, local on docker. Turning "
              "kms on replaces an existing ECR repository (docs/deploy.md, \"Encryption\").",
        key="modelEncryption", unset="", check=one_of(ENCRYPTION_MODES))
    kms_key_arn: pulumi.Input[str] = setting(
        "", "The KMS key (its ARN) that wraps the model's data key with kms. Empty - the stack creates a "
            "customer-managed key per model, with yearly rotation and an alias alias/<project>/<stack>/<served name>.",
        check=_kms_key_arn)

    def resolved(self, kubernetes: bool) -> str:
        """The mode in force: the one given, else the target's (kms on kubernetes, local on docker)."""
        if self.mode is not None:
            return self.mode
        return "kms" if kubernetes else "local"

    def rules(self, c: Checker) -> None:
        if given(self.kms_key_arn) and c.ok("mode", "kms_key_arn") and self.mode not in (None, "kms"):
            c.bad("kms_key_arn", "a KMS key is for @{encryption.mode} kms: leave it empty with "
                                 f"{self.mode}")
