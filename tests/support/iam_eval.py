"""A small, local model of IAM's policy evaluation: enough to show what each statement of ours allows and denies.

Covers what the service's policies use: Allow/Deny, Action and Resource with `*`/`?` wildcards, and the condition
operators StringEquals/NotEquals/Like/NotLike, ArnEquals/Like/NotLike, Null, NumericGreaterThan/LessThan, Bool and
the ForAllValues:/ForAnyValue: set qualifiers, with IAM's documented semantics:
- the operators of one condition block are ANDed, and so are the keys within an operator;
- several values for one key are ORed for a positive operator, and must all differ for a negated one
  (StringNotEquals, ArnNotLike, ...);
- a key absent from the request makes a positive operator false and a negated one true; Null tests presence;
  ForAllValues is true on an absent key, ForAnyValue false;
- any matching Deny wins; otherwise a matching Allow allows; otherwise the request is implicitly denied.
A model, not AWS: which keys a real request carries is stated by each test's request (see the notes in
infra/constructs/permissions.py and domain/guardrails.py for where they come from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

ContextValue = str | Sequence[str]


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    # IAM wildcards: * any run (also across ':' and '/'), ? one character. fnmatch's [..] never appears in ours.
    return fnmatchcase(value, pattern) if case else fnmatchcase(value.lower(), pattern.lower())


def _number(text: str) -> float:
    return float(text)


_POSITIVE = {
    "StringEquals": lambda want, have: want == have,
    "StringLike": lambda want, have: _matches(want, have),
    "ArnEquals": lambda want, have: want == have,
    "ArnLike": lambda want, have: _matches(want, have),
    "NumericGreaterThan": lambda want, have: _number(have) > _number(want),
    "NumericLessThan": lambda want, have: _number(have) < _number(want),
    "Bool": lambda want, have: str(want).lower() == str(have).lower(),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


class UnmodelledOperatorError(ValueError):
    """A policy uses a condition operator this model does not evaluate (DateGreaterThan, IpAddress, ...): the test
    stops, naming it, rather than answer allow or deny on a guess. Model the operator before relying on it."""


def _check_operator(operator: str) -> None:
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in {"", "ForAllValues", "ForAnyValue"} or (
        base not in _POSITIVE and base not in _NEGATED and operator != "Null"
    ):
        raise UnmodelledOperatorError(f"condition operator {operator} is not modelled by tests/support/iam_eval.py")


def _condition_true(operator: str, key: str, wanted: Any, context: Mapping[str, ContextValue]) -> bool:
    _check_operator(operator)
    present = key in context and context[key] is not None
    values = _as_list(wanted)
    if operator == "Null":
        (flag,) = values
        return (not present) if str(flag).lower() == "true" else present
    qualifier, _, base = operator.rpartition(":")
    have = _as_list(context[key]) if present else []
    if qualifier == "ForAllValues":
        return all(any(_POSITIVE[base](want, item) for want in values) for item in have)
    if qualifier == "ForAnyValue":
        return any(any(_POSITIVE[base](want, item) for want in values) for item in have)
    if base in _NEGATED:
        if not present:
            return True
        return not any(_POSITIVE[_NEGATED[base]](want, item) for want in values for item in have)
    if not present:
        return False
    return any(_POSITIVE[base](want, item) for want in values for item in have)


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    actions = _as_list(statement.get("Action", []))
    if not any(_matches(action, request.action, case=False) for action in actions):
        return False
    resources = _as_list(statement.get("Resource", "*"))
    if not any(_matches(resource, request.resource) for resource in resources):
        return False
    for operator, keys in statement.get("Condition", {}).items():
        for key, wanted in keys.items():
            if not _condition_true(operator, key, wanted, request.context):
                return False
    return True


def evaluate(statements: Sequence[Mapping[str, Any]], request: Request, *, allow_by_default: bool = False) -> str:
    """ "Deny" (an explicit Deny matched), "Allow", or "ImplicitDeny". `allow_by_default` models an SCP next to the
    default FullAWSAccess policy: what no Deny of ours matches is allowed."""
    applying = [statement for statement in statements if statement_applies(statement, request)]
    if any(statement["Effect"] == "Deny" for statement in applying):
        return "Deny"
    if allow_by_default or any(statement["Effect"] == "Allow" for statement in applying):
        return "Allow"
    return "ImplicitDeny"


def resolve(node: Any, *, partition: str = "aws", region: str = "us-east-1", account: str = "123456789012") -> Any:
    """A synthesized policy with CloudFormation's pseudo parameters and joins resolved (a GetAtt becomes a
    placeholder naming its resource): what IAM would evaluate."""
    if isinstance(node, list):
        return [resolve(item, partition=partition, region=region, account=account) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        pseudo = {"AWS::Partition": partition, "AWS::Region": region, "AWS::AccountId": account}
        return pseudo.get(node["Ref"], f"ref:{node['Ref']}")
    if set(node) == {"Fn::Join"}:
        separator, parts = node["Fn::Join"]
        return separator.join(str(resolve(part, partition=partition, region=region, account=account)) for part in parts)
    if set(node) == {"Fn::GetAtt"}:
        return f"getatt:{'.'.join(node['Fn::GetAtt'])}"
    return {key: resolve(value, partition=partition, region=region, account=account) for key, value in node.items()}
