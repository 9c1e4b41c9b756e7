"""The ServedModel policy pack: `pulumi preview --policy-pack policy` runs it on every PR.

A thin wrapper: the rules live in rules.py (plain Python, unit-tested without pulumi_policy,
whose PolicyPack starts a gRPC server on construction). Every rule is mandatory: what it
rejects must never ship.
"""
import os
import sys

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rules


def _validator(rule):
    def validate(args, report_violation):
        for message in rule.check(args.resource_type, args.props):
            report_violation(message)
    return validate


def _stack_validator(rule):
    def validate(args, report_violation):
        # The stack's name is in every resource's URN (urn:pulumi:<stack>::...).
        stack = next((rules.stack_of(r.urn) for r in args.resources), "")
        protected = tuple((args.get_config() or {}).get("stacks") or rules.PROTECTED_STACKS)
        resources = [(r.resource_type, dict(r.props)) for r in args.resources]
        messages = (rule.check(resources, stack, protected) if rule.check is rules.model_encrypted_in_protected_stacks
                    else rule.check(resources, stack))
        for message in messages:
            report_violation(message)
    return validate


# Which stacks must serve encrypted models: `pulumi preview --policy-pack policy
# --policy-pack-config config.json` with {"model-encrypted-in-protected-stacks": {"stacks": [...]}}.
_STACKS = PolicyConfigSchema(properties={"stacks": {"type": "array", "items": {"type": "string"},
                                                    "default": list(rules.PROTECTED_STACKS)}})

policies: list[Policy] = [
    *(ResourceValidationPolicy(name=rule.name, description=rule.description, validate=_validator(rule))
      for rule in rules.RULES),
    *(StackValidationPolicy(name=rule.name, description=rule.description, validate=_stack_validator(rule),
                            config_schema=_STACKS if rule.check is rules.model_encrypted_in_protected_stacks else None)
      for rule in rules.STACK_RULES),
]
PolicyPack(
    name="servedmodel",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies,
)
