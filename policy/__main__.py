"""The ServedModel policy pack: `pulumi preview --policy-pack policy` runs it on every PR.

A thin wrapper: the rules live in rules.py (plain Python, unit-tested without pulumi_policy,
whose PolicyPack starts a gRPC server on construction). Every rule is mandatory: what it
rejects must never ship.
"""
import os
import sys

from pulumi_policy import EnforcementLevel, Policy, PolicyPack, ResourceValidationPolicy, StackValidationPolicy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rules


def _validator(rule):
    def validate(args, report_violation):
        for message in rule.check(args.resource_type, args.props):
            report_violation(message)
    return validate


def _stack_validator(rule):
    def validate(args, report_violation):
        for message in rule.check([(r.resource_type, dict(r.props)) for r in args.resources]):
            report_violation(message)
    return validate


policies: list[Policy] = [
    *(ResourceValidationPolicy(name=rule.name, description=rule.description, validate=_validator(rule))
      for rule in rules.RULES),
    *(StackValidationPolicy(name=rule.name, description=rule.description, validate=_stack_validator(rule))
      for rule in rules.STACK_RULES),
]
PolicyPack(
    name="servedmodel",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies,
)
