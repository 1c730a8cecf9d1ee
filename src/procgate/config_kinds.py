"""The kinds of value a config key takes, and sections of keys: each check in words and as
JSON Schema. ``procgate.config_schema`` uses them to describe the config file."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Where a problem is: ``[server]``, ``[commands.echo]``, ``[[auth.tokens]] #2``.
Problem = str


class Kind:
    """A type of value: whether a value is one, what it takes in words, its JSON Schema."""

    takes: str = "a value"

    def accepts(self, value: object) -> bool:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int | None = None
    maximum: int | None = None
    unit: str = ""

    @property
    def takes(self) -> str:  # type: ignore[override]
        what = f"a whole number of {self.unit}" if self.unit else "a whole number"
        if self.minimum is not None and self.maximum is not None:
            return f"{what} from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"{what} >= {self.minimum}"
        return what

    def accepts(self, value: object) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class Number(Kind):
    """An integer or a float; ``above`` is an exclusive lower bound, ``minimum`` inclusive."""

    minimum: float | None = None
    above: float | None = None
    unit: str = "seconds"

    @property
    def takes(self) -> str:  # type: ignore[override]
        what = f"a number of {self.unit}" if self.unit else "a number"
        if self.above is not None:
            return f"{what} > {self.above:g}"
        if self.minimum is not None:
            return f"{what} >= {self.minimum:g}"
        return what

    def accepts(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or not _is_number(value):
            return False
        return (self.minimum is None or value >= self.minimum) and (
            self.above is None or value > self.above
        )

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.above is not None:
            out["exclusiveMinimum"] = self.above
        return out


@dataclass(frozen=True)
class String(Kind):
    """A string; ``choices`` limits it to those, ``pattern`` (a full match) to its form."""

    choices: tuple[str, ...] = ()
    pattern: str = ""
    described: str = ""  # what the pattern means, in words
    empty: bool = False  # whether "" is allowed

    @property
    def takes(self) -> str:  # type: ignore[override]
        if self.choices:
            return "one of " + ", ".join(json.dumps(choice) for choice in self.choices)
        if self.described:
            return self.described
        return "a string" if self.empty else "a non-empty string"

    def accepts(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if self.choices:
            return value in self.choices
        if self.pattern and not re.fullmatch(self.pattern, value):
            return False
        return self.empty or bool(value)

    def schema(self) -> dict[str, Any]:
        if self.choices:
            return {"enum": list(self.choices)}
        out: dict[str, Any] = {"type": "string"}
        if self.pattern:
            out["pattern"] = f"^(?:{self.pattern})$"
        elif not self.empty:
            out["minLength"] = 1
        return out


@dataclass(frozen=True)
class Boolean(Kind):
    takes = "true or false"

    def accepts(self, value: object) -> bool:
        return isinstance(value, bool)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class ListOf(Kind):
    """A TOML array whose items are all ``item``: ``["LANG"]``, never ``"LANG"``."""

    item: Kind
    what: str = ""  # the items in words, plural: "CIDR strings"
    nonempty: bool = False

    @property
    def takes(self) -> str:  # type: ignore[override]
        items = self.what or _plural(self.item.takes)
        return f"a{' non-empty' if self.nonempty else ''} list of {items}"

    def accepts(self, value: object) -> bool:
        return (
            isinstance(value, list)
            and (bool(value) or not self.nonempty)
            and all(self.item.accepts(item) for item in value)
        )

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.nonempty:
            out["minItems"] = 1
        return out


@dataclass(frozen=True)
class TableOf(Kind):
    """A TOML table of ``key = value``, every value a ``value``, every key in ``keys`` if given."""

    value: Kind
    keys: tuple[str, ...] = ()
    what: str = ""

    @property
    def takes(self) -> str:  # type: ignore[override]
        if self.what:
            return self.what
        return f"a table of {_plural(self.value.takes)}"

    def accepts(self, value: object) -> bool:
        return isinstance(value, dict) and all(
            (not self.keys or key in self.keys) and self.value.accepts(item)
            for key, item in value.items()
        )

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "additionalProperties": self.value.schema()}
        if self.keys:
            out["propertyNames"] = {"enum": list(self.keys)}
        return out


@dataclass(frozen=True)
class AnyTable(Kind):
    """A table whose keys another module checks (an argument rule: ``procgate.policy``)."""

    takes = "a table"

    def accepts(self, value: object) -> bool:
        return isinstance(value, dict)

    def schema(self) -> dict[str, Any]:
        return {"type": "object"}


@dataclass(frozen=True)
class OneOf(Kind):
    kinds: tuple[Kind, ...]

    @property
    def takes(self) -> str:  # type: ignore[override]
        return " or ".join(kind.takes for kind in self.kinds)

    def accepts(self, value: object) -> bool:
        return any(kind.accepts(value) for kind in self.kinds)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [kind.schema() for kind in self.kinds]}


def _plural(takes: str) -> str:
    """``"a non-empty string"`` -> ``"non-empty strings"``, for a list's items."""
    words = takes.split(" ", 1)
    rest = words[1] if words[0] in ("a", "an") and len(words) > 1 else takes
    head, sep, tail = rest.partition(" ")
    if head in ("non-empty", "whole"):
        head2, sep2, tail2 = tail.partition(" ")
        return f"{head} {head2}s{sep2}{tail2}" if head2 else rest
    return f"{head}s{sep}{tail}" if head else rest


@dataclass(frozen=True)
class Key:
    kind: Kind
    help: str = ""


#: A rule across keys of one table: (table, where) -> problems.
TableRule = Callable[[Mapping[str, Any], str], list[Problem]]


@dataclass(frozen=True)
class Section:
    """One TOML table (or each table of a kind): its keys, required ones, and rules."""

    keys: Mapping[str, Key]
    required: tuple[str, ...] = ()
    rules: tuple[TableRule, ...] = ()
    help: str = ""

    def check(self, table: Mapping[str, Any], where: str) -> list[Problem]:
        """The table's problems, key by key in the file's order, then the rules."""
        problems: list[Problem] = []
        for name, value in table.items():
            key = self.keys.get(name)
            if key is None:
                problems.append(_unknown(name, list(self.keys), where))
            elif not key.kind.accepts(value):
                problems.append(f"{where} {name}: {_mismatch(key.kind, value)}")
        for name in self.required:
            if name not in table:
                problems.append(f"{where} {name}: missing; it is required")
        if not problems:
            for rule in self.rules:
                problems.extend(rule(table, where))
        return problems

    def schema(self) -> dict[str, Any]:
        properties = {}
        for name, key in self.keys.items():
            schema = key.kind.schema()
            if key.help:
                schema = {"description": key.help, **schema}
            properties[name] = schema
        out: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        if self.help:
            out["description"] = self.help
        return out


def _unknown(name: str, allowed: Sequence[str], where: str) -> Problem:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where} {name}: unknown key{hint}; allowed: {', '.join(sorted(allowed))}"


def _mismatch(kind: Kind, value: object) -> str:
    """``got X; takes Y``, with the fix when it is plain: quotes to drop, brackets to add."""
    text = f"got {shown(value)}; takes {kind.takes}"
    if isinstance(value, str):
        unquoted = _unquoted(value)
        if unquoted is not None and kind.accepts(unquoted):
            return f"{text} (write it without quotes: {value.strip()})"
        if kind.accepts([value]):
            return f"{text} (write it as a list: [{json.dumps(value)}])"
    return text


def _unquoted(text: str) -> object:
    """What a quoted TOML scalar would be without its quotes, or None."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return None


def shown(value: object) -> str:
    """A value as TOML would show it, short, with its type: ``"many" (a string)``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if _is_int(value):
        return f"{value} (a whole number)"
    if isinstance(value, float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return f"{_short(text)} (a string)"
    if isinstance(value, list):
        return f"{_short(json.dumps(value, ensure_ascii=False, default=str))} (a list)"
    if isinstance(value, dict):
        return "a table"
    return f"{_short(str(value))} (a {type(value).__name__})"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
