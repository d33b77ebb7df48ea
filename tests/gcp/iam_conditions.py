"""A small evaluator for the part of CEL that the lab's IAM conditions use, as IAM evaluates it per request.

What IAM Conditions offer, and what this evaluator takes of it:
- the condition language is CEL (https://cloud.google.com/iam/docs/conditions-overview#cel), of which this
  knows string literals (double or single quoted), `==`, `!=`, `&&`, `||`, parentheses and the string method
  `startsWith` (https://cloud.google.com/iam/docs/conditions-attribute-reference, "Functions and operators");
- the resource attributes `resource.name` and `resource.type`
  (https://cloud.google.com/iam/docs/conditions-resource-attributes; for Cloud Storage a bucket is
  `projects/_/buckets/BUCKET` of type `storage.googleapis.com/Bucket`, an object
  `projects/_/buckets/BUCKET/objects/OBJECT` of type `storage.googleapis.com/Object`);
- the API attribute `api.getAttribute('storage.googleapis.com/objectListPrefix', DEFAULT)`: the `prefix` of an
  objects.list request, DEFAULT for every other request (https://cloud.google.com/iam/docs/conditions-attribute-reference#api-attributes,
  "objectListPrefix"; https://cloud.google.com/storage/docs/access-control/iam#conditions).

Anything else (another attribute, function, operator or a malformed expression) raises UnsupportedCondition: a
stand-in that guessed would prove nothing, so it refuses to evaluate rather than allow or deny.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

LIST_PREFIX = "storage.googleapis.com/objectListPrefix"
BUCKET_TYPE = "storage.googleapis.com/Bucket"
OBJECT_TYPE = "storage.googleapis.com/Object"


class UnsupportedCondition(Exception):
    """An IAM condition outside the subset this stand-in evaluates."""


@dataclass(frozen=True)
class Request:
    """What IAM knows of a request when it evaluates a condition."""

    resource_name: str
    resource_type: str
    api: dict[str, str] = field(default_factory=dict)  # API attributes, e.g. {LIST_PREFIX: "datasets/"}


Node = Callable[[Request], object]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>&&|\|\||==|!=|[().,])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)
_ATTRIBUTES = {"resource.name": lambda r: r.resource_name, "resource.type": lambda r: r.resource_type}


def _tokens(expression: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:  # only trailing blanks are left
            break
        position = match.end()
        kind = match.lastgroup or "other"
        found.append((kind, match.group(kind)))
    return found


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokens(expression)
        self.at = 0

    def fail(self, why: str) -> UnsupportedCondition:
        return UnsupportedCondition(
            f"IAM condition {self.expression!r}: {why} (the GCS stand-in evaluates only "
            "startsWith, ==, !=, &&, ||, parentheses, resource.name, resource.type and "
            f"api.getAttribute('{LIST_PREFIX}', ...))"
        )

    def peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise self.fail(f"it ends where {expected or 'more'} was expected")
        kind, text = self.tokens[self.at]
        if kind == "other":
            raise self.fail(f"{text!r} is not supported")
        if expected is not None and text != expected:
            raise self.fail(f"{expected!r} expected, found {text!r}")
        self.at += 1
        return kind, text

    def parse(self) -> Node:
        node = self.disjunction()
        if self.at != len(self.tokens):
            raise self.fail(f"{self.tokens[self.at][1]!r} is not supported here")
        return node

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.peek() == "||":
            self.take("||")
            left, right = node, self.conjunction()
            node = lambda r, a=left, b=right: _bool(a(r)) or _bool(b(r))  # noqa: E731
        return node

    def conjunction(self) -> Node:
        node = self.comparison()
        while self.peek() == "&&":
            self.take("&&")
            left, right = node, self.comparison()
            node = lambda r, a=left, b=right: _bool(a(r)) and _bool(b(r))  # noqa: E731
        return node

    def comparison(self) -> Node:
        node = self.call()
        if self.peek() in ("==", "!="):
            _, op = self.take()
            left, right = node, self.call()
            if op == "==":
                return lambda r, a=left, b=right: _str(a(r)) == _str(b(r))
            return lambda r, a=left, b=right: _str(a(r)) != _str(b(r))
        return node

    def call(self) -> Node:
        node = self.primary()
        while self.peek() == ".":
            self.take(".")
            _, method = self.take()
            if method != "startsWith":
                raise self.fail(f"the method {method!r} is not supported")
            self.take("(")
            argument = self.disjunction()
            self.take(")")
            node = lambda r, a=node, b=argument: _str(a(r)).startswith(_str(b(r)))  # noqa: E731
        return node

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "string":
            value = _unquote(text)
            return lambda r: value
        if text == "(":
            node = self.disjunction()
            self.take(")")
            return node
        if kind == "name" and text in ("resource", "api"):
            self.take(".")
            _, member = self.take()
            dotted = f"{text}.{member}"
            if dotted in _ATTRIBUTES:
                return _ATTRIBUTES[dotted]
            if dotted == "api.getAttribute":
                return self.get_attribute()
            raise self.fail(f"the attribute {dotted!r} is not supported")
        raise self.fail(f"{text!r} is not supported")

    def get_attribute(self) -> Node:
        self.take("(")
        kind, name = self.take()
        self.take(",")
        default_kind, default = self.take()
        self.take(")")
        if kind != "string" or default_kind != "string":
            raise self.fail("api.getAttribute takes two string literals")
        attribute, fallback = _unquote(name), _unquote(default)
        if attribute != LIST_PREFIX:
            raise self.fail(f"the API attribute {attribute!r} is not supported")
        return lambda r: r.api.get(attribute, fallback)


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise UnsupportedCondition(f"a condition's operand {value!r} is not a boolean")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise UnsupportedCondition(f"a condition's operand {value!r} is not a string")
    return value


@dataclass(frozen=True)
class Condition:
    """A parsed condition: `holds(request)`. Parsing fails loudly on anything outside the subset."""

    expression: str
    node: Node = field(repr=False, compare=False)

    @classmethod
    def parse(cls, expression: str) -> Condition:
        return cls(expression, _Parser(expression).parse())

    def holds(self, request: Request) -> bool:
        return _bool(self.node(request))
