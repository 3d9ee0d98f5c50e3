"""CSV `mapping_rule` (spec §6): a JSON-schema copy of the request, compiled to a row → request builder.

Every scalar leaf (`string`, `number`, `integer`, `boolean`) carries an `index`, the 0-based CSV
column it takes its value from; a leaf whose index is -1, missing or not an integer is left out of
the request. An object keeps its properties in schema order; an array whose `items` is one schema
becomes a one-element list, and one whose `items` is a list of schemas becomes one element each.
So columns `5.1,3.5,1.4,0.2` with indices 0-3 under `data.req_data[].input_1..4` become
`{"data": {"req_data": [{"input_1": 5.1, ..., "input_4": 0.2}]}}`.

Invariant: `Mapping.build(row)` either returns the whole request or raises `RowError` naming the
field and column at fault; it never returns a partial request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_SCALARS = ("string", "number", "integer", "boolean")
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})


class RuleError(ValueError):
    """The mapping_rule itself is malformed (found at validation, before anything runs)."""


class RowError(ValueError):
    """One CSV row does not fit the mapping_rule; that record fails with this message."""


def _integral(text: str) -> bool:
    return text.isascii() and text.lstrip("+-").isdigit()


def _to_number(text: str) -> float | int:
    if _integral(text):  # checked, not tried: an exception per float would cost more than the rest
        return int(text)
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _to_integer(text: str) -> int:
    if _integral(text):
        return int(text)
    value = float(text)
    if not value.is_integer():
        raise ValueError("not an integer")
    return int(value)


def _to_boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("not a boolean (true/false, 1/0, yes/no)")


_CONVERT: dict[str, Callable[[str], Any]] = {
    "string": str,
    "number": _to_number,
    "integer": _to_integer,
    "boolean": _to_boolean,
}


@dataclass(frozen=True, slots=True)
class _Leaf:
    where: str
    column: int
    kind: str


@dataclass(frozen=True, slots=True)
class _Object:
    fields: tuple[tuple[str, _Node], ...]


@dataclass(frozen=True, slots=True)
class _Array:
    items: tuple[_Node, ...]


_Node = _Leaf | _Object | _Array


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["number", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        if "index" in schema:
            return "string"
    return kind if isinstance(kind, str) else None


def _index(schema: dict[str, Any]) -> int | None:
    index = schema.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None  # -1 or not a column number: the field is dropped (spec §6)
    return index


def _compile(schema: Any, where: str) -> _Node | None:
    if not isinstance(schema, dict):
        raise RuleError(f"{where or 'mapping_rule'} must be a JSON-schema object, got {type(schema).__name__}")
    kind = _type_of(schema)
    if kind == "object":
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise RuleError(f"{where or 'mapping_rule'}.properties must be an object")
        fields = []
        for name, sub in props.items():
            node = _compile(sub, f"{where}.{name}" if where else name)
            if node is not None:
                fields.append((name, node))
        return _Object(tuple(fields))
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, list):
            nodes = [_compile(sub, f"{where}[{i}]") for i, sub in enumerate(items)]
            return _Array(tuple(n for n in nodes if n is not None))
        node = _compile(items, f"{where}[0]")
        return _Array(() if node is None else (node,))
    if kind in _SCALARS:
        column = _index(schema)
        return None if column is None else _Leaf(where, column, kind)
    raise RuleError(f"{where or 'mapping_rule'} has unsupported type {schema.get('type')!r}")


Builder = Callable[[Sequence[str]], Any]


@dataclass(frozen=True)
class Mapping:
    """A compiled mapping_rule: `build(row)` makes the request for one CSV row."""

    root: _Node
    columns: int  # columns a row needs: 1 + the highest index used
    _build: Builder = field(repr=False, compare=False)

    def build(self, row: Sequence[str]) -> Any:
        if len(row) < self.columns:
            raise RowError(f"row has {len(row)} column(s) but mapping_rule reads column {self.columns - 1} (0-based)")
        return self._build(row)


def _builder(node: _Node) -> Builder:
    """The tree turned into closures once, so building a request is a few calls per field."""
    if isinstance(node, _Leaf):
        column, kind, where = node.column, node.kind, node.where
        if kind == "string":
            return lambda row: row[column]
        convert = _CONVERT[kind]

        def leaf(row: Sequence[str]) -> Any:
            try:
                return convert(row[column])
            except ValueError:
                raise RowError(f"column {column} value {row[column]!r} is not a valid {kind} for {where}") from None

        return leaf
    if isinstance(node, _Object):
        fields = tuple((name, _builder(sub)) for name, sub in node.fields)
        return lambda row: {name: build(row) for name, build in fields}
    items = tuple(_builder(sub) for sub in node.items)
    return lambda row: [build(row) for build in items]


def _max_column(node: _Node) -> int:
    if isinstance(node, _Leaf):
        return node.column
    subs = [sub for _n, sub in node.fields] if isinstance(node, _Object) else list(node.items)
    return max((_max_column(s) for s in subs), default=-1)


def compile_rule(rule: Any) -> Mapping:
    """Compile a mapping_rule; `RuleError` says what is wrong with it."""
    root = _compile(rule, "")
    if root is None:
        raise RuleError("mapping_rule maps no column: give at least one leaf an index >= 0")
    columns = _max_column(root) + 1
    if columns == 0:
        raise RuleError("mapping_rule maps no column: give at least one leaf an index >= 0")
    return Mapping(root, columns, _builder(root))
