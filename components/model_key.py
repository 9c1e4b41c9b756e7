"""ModelKey: the KMS key that wraps a model's data key (issue 21; docs/deploy.md "Encryption")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from . import specs
from .inputs import given

# Days a deleted key waits before KMS destroys it (ScheduleKeyDeletion: 7-30): the most, so a
# destroy that should not have happened can still be undone (CancelKeyDeletion) while images and
# sealed models that need the key exist.
DELETION_WINDOW_DAYS = 30


@dataclass
class ModelKeyArgs:
    served_name: str
    """The model's served name (the alias, the description). Required."""
    kms_key_arn: pulumi.Input[str] = ""
    """A key the stack names (its ARN); "" creates a customer-managed key with an alias. Default ""."""
    protect: bool = False
    """Protect the created key and its alias from deletion (prod). Default False."""
    retain: bool = False
    """Keep the created key when the stack deletes it (a retained registry's images are encrypted with
    it). Default False."""


class ModelKey(pulumi.ComponentResource):
    """The model's KMS key: the one the stack names, or a customer-managed key created here
    (symmetric, yearly automatic rotation, a 30-day deletion window) and its alias
    `alias/<project>/<stack>/<served name>`.

    The key policy is KMS's default (the account's IAM policies decide): the machine that runs
    `up` needs kms:GenerateDataKey (the build wraps the data key), kms:DescribeKey and
    kms:CreateGrant (ECR encrypts the repository under it), the pod's role kms:Decrypt only
    (components/model_service.py). Outputs: `arn` (the key's ARN, which the build, the
    repository and the pod's policy take, so each waits for the key).
    """

    arn: pulumi.Output[str]

    def __init__(self, name: str, args: ModelKeyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:ModelKey", name, None, opts)
        if given(args.kms_key_arn):
            self.arn = pulumi.Output.from_input(args.kms_key_arn)
        else:
            key = aws.kms.Key(
                f"{name}-key",
                description=f"servedmodel {args.served_name}: wraps the model's data key (issue 21)",
                key_usage="ENCRYPT_DECRYPT", customer_master_key_spec="SYMMETRIC_DEFAULT",
                enable_key_rotation=True, deletion_window_in_days=DELETION_WINDOW_DAYS,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=args.retain))
            aws.kms.Alias(
                f"{name}-key-alias",
                name=specs.kms_alias_name(pulumi.get_project(), pulumi.get_stack(), args.served_name),
                target_key_id=key.key_id,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect))
            self.arn = key.arn
        self.register_outputs({"arn": self.arn})
