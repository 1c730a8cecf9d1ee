"""Argument policies: which request args a command accepts, and the argv tail they become."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from procgate.errors import ConfigError, InvalidRequest

_MODES = ("any", "none", "rules")
_TYPES = ("string", "int", "number", "identifier", "path", "url", "email")
_RULE_KEYS = ("name", "type", "pattern", "choices", "base", "optional", "repeat", "allow_dash")

_RULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# An option entry: one or two dashes, then a letter or digit; no whitespace, no NUL.
_OPTION = re.compile(r"--?[A-Za-z0-9][^\s\x00]*")

# The type checks are ASCII on purpose: "\d" would also accept "٣", which programs reject.
_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,254}")
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_EMAIL_MAX = 254

# The same checks as ECMA-262 patterns for to_schema ("$" is the end of input there).
_SCHEMA_INT = "^-?[0-9]+$"
_SCHEMA_UINT = "^[0-9]+$"
_SCHEMA_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_SCHEMA_UNUMBER = r"^\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_SCHEMA_IDENTIFIER = "^[A-Za-z_][A-Za-z0-9_.-]*$"
_SCHEMA_URL = "^[Hh][Tt][Tt][Pp][Ss]?://"
_SCHEMA_EMAIL = "^" + _EMAIL.pattern + "$"
_SCHEMA_NO_DASH = "^(?!-)"

_ECMA_SYNTAX = frozenset("^$\\.*+?()[]{}|/")
_ECMA_GROUPS = ("(?:", "(?=", "(?!", "(?<=", "(?<!")
_QUANTIFIER = re.compile(r"\{([0-9]*)(?:,([0-9]*))?\}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
#: What may quantify the atom before it (a one-character slice: "" is not in it).
_QUANT = ("*", "+", "?", "{")


@dataclass(frozen=True, slots=True)
class ArgRule:
    """One positional argument: its type, and what else its value must satisfy.

    ``pattern`` and ``choices`` apply to the value as the client sent it; a ``path`` is
    passed on resolved (absolute, symlinks followed) and must stay inside ``base``, which
    must be an existing directory given as its real path (``parse_policy`` resolves it).
    """

    name: str
    type: str = "string"
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    base: str | None = None
    optional: bool = False
    repeat: bool = False
    allow_dash: bool = False

    def to_json(self) -> dict[str, Any]:
        """Every field, so clients see one shape whatever the rule sets."""
        return {
            "name": self.name,
            "type": self.type,
            "pattern": self.pattern,
            "choices": list(self.choices) if self.choices is not None else None,
            "base": self.base,
            "optional": self.optional,
            "repeat": self.repeat,
            "allow_dash": self.allow_dash,
        }


@dataclass(frozen=True, slots=True)
class ArgPolicy:
    """What a command's request ``args`` may be; ``check`` turns them into the argv tail.

    The default, mode ``"any"``, appends args unchecked (the program must cope with any
    option); ``"none"`` refuses every arg; ``"rules"`` allows the listed ``options`` first,
    then positionals that match ``rules`` in order. Invalid fields raise ``ConfigError`` at
    construction, so a policy that exists is one ``check`` can apply.
    """

    mode: str = "any"
    rules: tuple[ArgRule, ...] = ()
    options: tuple[str, ...] = ()
    dashdash: bool = False

    def __post_init__(self) -> None:
        _validate_policy(self)

    def check(self, args: Sequence[str]) -> list[str]:
        """The argv tail for ``args``: options as given, ``"--"`` if ``dashdash``, positionals.

        Raises ``InvalidRequest`` (code ``invalid_argument``) naming the first offending
        argument by its 1-based position in ``args``, and for a positional its rule's name.
        A leading ``"--"`` ends the options and is consumed; without ``dashdash``, a
        positional reaches the program starting with "-" only if its rule has ``allow_dash``.
        """
        if (
            isinstance(args, str)
            or not isinstance(args, Sequence)
            or not all(isinstance(arg, str) for arg in args)
        ):
            raise _invalid("args must be a list of strings")
        if self.mode != "rules":
            for position, arg in enumerate(args, 1):
                check_text(arg, f"argument {position}:", _CODE)
            if self.mode == "none" and args:
                raise _invalid("argument 1: this command takes no arguments")
            return list(args)
        options: list[str] = []
        index = 0
        while index < len(args) and args[index].startswith("-"):
            arg = args[index]
            index += 1
            if arg == "--":
                break
            check_text(arg, f"argument {index}:", _CODE)
            if not self._allows_option(arg):
                raise _invalid(f"argument {index}: option {_show(arg)} is not allowed")
            options.append(arg)
        positionals = args[index:]
        self._check_count(len(positionals), index)
        tail = [*options, "--"] if self.dashdash else options
        for offset, arg in enumerate(positionals):
            rule = self.rules[min(offset, len(self.rules) - 1)]
            where = f"argument {index + offset + 1} ({rule.name})"
            check_text(arg, f"{where}:", _CODE)
            try:
                tail.append(_accept(rule, arg))
            except _Refused as exc:
                raise _invalid(f"{where}: {exc}") from None
        return tail

    @property
    def requires_args(self) -> bool:
        """Whether a request must send at least one argument."""
        return self.mode == "rules" and any(not rule.optional for rule in self.rules)

    def to_schema(self) -> dict[str, Any]:
        """A JSON Schema (2020-12, as in OpenAPI 3.1) for the request's ``args`` array.

        Exact for the layout when no options are allowed (with or without a leading
        ``"--"``); with options, each item must be an option, ``"--"`` or a valid positional.
        A rule ``pattern`` appears when it translates to ECMA-262; path bases, finiteness of
        numbers and URL hosts are left to ``check``.
        """
        schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
        if self.mode == "any":
            schema["description"] = "Appended to the command's argv unchecked."
            return schema
        if self.mode == "none":
            schema["maxItems"] = 0
            schema["description"] = "This command takes no arguments."
            return schema
        schema["description"] = self._describe()
        required = sum(not rule.optional for rule in self.rules)
        repeat = bool(self.rules) and self.rules[-1].repeat
        if self.options:
            choices: list[dict[str, Any]] = []
            exact = [option for option in self.options if not option.endswith("=")]
            if exact:
                choices.append({"enum": exact})
            choices.extend(
                {"pattern": "^" + _ecma_escape(option) + r"[\s\S]"}
                for option in self.options
                if option.endswith("=")
            )
            choices.append({"const": "--"})
            choices.extend(_rule_schema(rule, first=False) for rule in self.rules)
            schema["items"] = {"type": "string", "anyOf": choices}
            if required:
                schema["minItems"] = required
            return schema
        layouts = []
        for lead in ([], [{"const": "--"}]):
            layout: dict[str, Any] = {
                "prefixItems": [
                    *lead,
                    *(
                        _rule_schema(rule, first=not lead and i == 0)
                        for i, rule in enumerate(self.rules)
                    ),
                ],
                "minItems": len(lead) + required,
            }
            if repeat:
                layout["items"] = _rule_schema(self.rules[-1], first=False)
            else:
                layout["maxItems"] = len(lead) + len(self.rules)
            if not layout["prefixItems"]:
                del layout["prefixItems"]
            layouts.append(layout)
        schema["anyOf"] = layouts
        return schema

    def to_json(self) -> dict[str, Any]:
        """What ``GET /commands`` shows about the command's args."""
        return {
            "mode": self.mode,
            "rules": [rule.to_json() for rule in self.rules],
            "options": list(self.options),
            "dashdash": self.dashdash,
        }

    def _allows_option(self, arg: str) -> bool:
        return any(
            arg.startswith(option) and len(arg) > len(option)
            if option.endswith("=")
            else arg == option
            for option in self.options
        )

    def _check_count(self, count: int, start: int) -> None:
        required = sum(not rule.optional for rule in self.rules)
        if count < required:
            missing = self.rules[count]
            raise _invalid(f"argument {start + count + 1} ({missing.name}) is missing")
        if count <= len(self.rules) or (self.rules and self.rules[-1].repeat):
            return
        if not self.rules:
            reason = "this command takes no positional arguments"
        else:
            reason = f"this command takes at most {len(self.rules)} positional argument(s)"
        raise _invalid(f"argument {start + len(self.rules) + 1}: unexpected; {reason}")

    def _describe(self) -> str:
        parts = []
        if self.options:
            shown = (o + "VALUE" if o.endswith("=") else o for o in self.options)
            parts.append(f"options first ({', '.join(shown)}), any number, then")
        parts.append('"--" (optional, ends the options), then')
        if not self.rules:
            parts.append("no positional arguments.")
        else:
            names = []
            for rule in self.rules:
                name = f"{rule.name} ({rule.type})" + ("..." if rule.repeat else "")
                names.append(f"[{name}]" if rule.optional else name)
            parts.append(", ".join(names) + ".")
        return " ".join(parts)


def parse_policy(
    value: Any, *, options: Any = None, dashdash: Any = False, where: str
) -> ArgPolicy:
    """Build a policy from config or ``register()`` values; ``ConfigError`` if invalid.

    ``value`` is ``"any"``, ``"none"`` or a list of rule tables (keys as ``ArgRule``'s
    fields). A path rule's ``base`` must be an existing directory and is stored as its real
    path, so a symlinked base still contains what it points to. Every message starts
    with ``where``.
    """
    try:
        return _parse_policy(value, options, dashdash)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _parse_policy(value: Any, options: Any, dashdash: Any) -> ArgPolicy:
    if options is None:
        options = ()
    if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
        raise ConfigError("options must be a list of strings")
    if value in ("any", "none"):
        return ArgPolicy(mode=value, options=tuple(options), dashdash=dashdash)
    if not isinstance(value, (list, tuple)):
        raise ConfigError('args must be "any", "none" or a list of argument rules')
    rules = tuple(_parse_rule(item, index) for index, item in enumerate(value, 1))
    return ArgPolicy(mode="rules", rules=rules, options=tuple(options), dashdash=dashdash)


def _parse_rule(item: Any, index: int) -> ArgRule:
    if not isinstance(item, dict):
        raise ConfigError(f"rule {index} must be a table with at least a name")
    unknown = sorted(str(key) for key in item if key not in _RULE_KEYS)
    if unknown:
        raise ConfigError(
            f"rule {index}: unknown key(s) {', '.join(unknown)}; expected {', '.join(_RULE_KEYS)}"
        )
    if "name" not in item:
        raise ConfigError(f"rule {index} has no name")
    choices = item.get("choices")
    if choices is not None:
        if not isinstance(choices, (list, tuple)):
            raise ConfigError(f"rule {index}: choices must be a list of strings")
        choices = tuple(choices)
    base = item.get("base")
    if isinstance(base, str) and item.get("type") == "path":
        if not os.path.isdir(base):
            raise ConfigError(f"rule {index}: base {base!r} is not an existing directory")
        base = os.path.realpath(base)
    return ArgRule(
        name=item["name"],
        type=item.get("type", "string"),
        pattern=item.get("pattern"),
        choices=choices,
        base=base,
        optional=item.get("optional", False),
        repeat=item.get("repeat", False),
        allow_dash=item.get("allow_dash", False),
    )


def _validate_policy(policy: ArgPolicy) -> None:
    if policy.mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}, not {policy.mode!r}")
    if not isinstance(policy.dashdash, bool):
        raise ConfigError("dashdash must be true or false")
    if not isinstance(policy.rules, tuple) or not all(
        isinstance(rule, ArgRule) for rule in policy.rules
    ):
        raise ConfigError("rules must be a tuple of ArgRule")
    if not isinstance(policy.options, tuple) or not all(
        isinstance(option, str) for option in policy.options
    ):
        raise ConfigError("options must be a tuple of strings")
    if policy.mode != "rules":
        if policy.rules or policy.options or policy.dashdash:
            raise ConfigError(
                f"rules, options and dashdash need a list of argument rules, not {policy.mode!r}"
            )
        return
    for option in policy.options:
        if not _OPTION.fullmatch(option):
            raise ConfigError(
                f"option {option!r} must start with '-' or '--' and a letter or digit, "
                "without whitespace"
            )
    if len(set(policy.options)) != len(policy.options):
        raise ConfigError("options lists an option twice")
    names: set[str] = set()
    for index, rule in enumerate(policy.rules, 1):
        _validate_rule(rule, f"rule {index}")
        if rule.name in names:
            raise ConfigError(f"rule {index}: the name {rule.name!r} is used twice")
        names.add(rule.name)
        if rule.repeat and index != len(policy.rules):
            raise ConfigError(f"rule {index} ({rule.name}): only the last rule may repeat")
        if index > 1 and policy.rules[index - 2].optional and not rule.optional:
            raise ConfigError(
                f"rule {index} ({rule.name}): a required rule cannot follow an optional one"
            )


def _validate_rule(rule: ArgRule, where: str) -> None:
    if not isinstance(rule.name, str) or not _RULE_NAME.fullmatch(rule.name):
        raise ConfigError(f"{where}: name must be 1-64 letters, digits, '_', '.' or '-'")
    where = f"{where} ({rule.name})"
    if rule.type not in _TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(_TYPES)}, not {rule.type!r}")
    for flag in ("optional", "repeat", "allow_dash"):
        if not isinstance(getattr(rule, flag), bool):
            raise ConfigError(f"{where}: {flag} must be true or false")
    if rule.pattern is not None:
        if not isinstance(rule.pattern, str):
            raise ConfigError(f"{where}: pattern must be a string")
        try:
            re.compile(rule.pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ConfigError(f"{where}: pattern is not a valid regex: {exc}") from None
    if rule.type == "path":
        base = rule.base
        if not isinstance(base, str) or not os.path.isdir(base):
            raise ConfigError(f"{where}: a path rule needs base, an existing directory")
        if base != os.path.realpath(base):
            raise ConfigError(f"{where}: base {base!r} must be a real path (os.path.realpath)")
    elif rule.base is not None:
        raise ConfigError(f"{where}: base applies to type path only")
    if rule.choices is not None:
        if (
            not isinstance(rule.choices, tuple)
            or not rule.choices
            or not all(isinstance(choice, str) for choice in rule.choices)
        ):
            raise ConfigError(f"{where}: choices must be a non-empty list of strings")
        for choice in rule.choices:
            try:
                check_text(choice, "choice:", _CODE)
                _accept(rule, choice)
            except (_Refused, InvalidRequest) as exc:
                raise ConfigError(
                    f"{where}: choice {choice!r} could never be accepted: {exc}"
                ) from None


class _Refused(Exception):
    """A value breaks its rule; the message says how, without the argument's position."""


def _accept(rule: ArgRule, value: str) -> str:
    """The value to pass on for ``value`` under ``rule``; ``_Refused`` if it breaks it."""
    if value.startswith("-") and not rule.allow_dash:
        raise _Refused("must not start with '-'")
    result = value
    if rule.type == "int":
        if not _INT.fullmatch(value):
            raise _Refused(f"{_show(value)} is not an integer")
    elif rule.type == "number":
        if not _NUMBER.fullmatch(value) or not math.isfinite(float(value)):
            raise _Refused(f"{_show(value)} is not a finite number")
    elif rule.type == "identifier":
        if not _IDENTIFIER.fullmatch(value):
            raise _Refused(
                f"{_show(value)} is not an identifier (a letter or '_', then letters, digits, "
                "'_', '.' or '-'; at most 255)"
            )
    elif rule.type == "url":
        _check_url(value)
    elif rule.type == "email":
        if len(value) > _EMAIL_MAX or not _EMAIL.fullmatch(value):
            raise _Refused(f"{_show(value)} is not an email address")
    elif rule.type == "path":
        result = _resolve(rule, value)
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        raise _Refused(f"{_show(value)} does not match {rule.pattern!r}")
    if rule.choices is not None and value not in rule.choices:
        raise _Refused(f"{_show(value)} is not one of {', '.join(map(repr, rule.choices))}")
    return result


def _check_url(value: str) -> None:
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise _Refused("a URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        # .port raises ValueError for a port that is not a number from 0 to 65535.
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise _Refused(f"{_show(value)} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _Refused(f"{_show(value)} is not an http or https URL with a host")


def _resolve(rule: ArgRule, value: str) -> str:
    """The real path of ``value`` (relative to ``base``), which must be inside ``base``.

    Symlinks are followed now; one created or changed between this check and the
    program's open is not seen: a base clients can write to needs more than a path check.
    """
    if rule.base is None:  # _validate_rule makes this unreachable; never fall back to "/"
        raise _Refused("this path rule has no base directory")
    if not value:
        raise _Refused("a path must not be empty")
    try:
        resolved = os.path.realpath(os.path.join(rule.base, value))
        inside = os.path.commonpath([rule.base, resolved]) == rule.base
    except (OSError, ValueError):
        raise _Refused(f"{_show(value)} is not a usable path") from None
    if not inside:
        raise _Refused(f"path {_show(value)} is outside the allowed directory")
    return resolved


def check_text(text: str, what: str, code: str = "invalid_request") -> None:
    """Refuse what cannot reach a child: NUL bytes and text that is not encodable UTF-8.

    The ``InvalidRequest`` has ``code`` and says "``what`` must not contain...".
    """
    if "\0" in text:
        raise InvalidRequest(f"{what} must not contain NUL bytes", code=code)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{what} must be valid Unicode (no lone surrogates)", code=code
        ) from None


#: The error code of every refusal by an argument policy.
_CODE = "invalid_argument"


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=_CODE)


def _show(value: str) -> str:
    """``value`` for an error message: quoted, escaped, and cut short."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _rule_schema(rule: ArgRule, *, first: bool) -> dict[str, Any]:
    """The JSON Schema of one positional; ``first`` means no "--" came before it.

    A first positional can never start with "-": it would be taken as an option.
    """
    schema: dict[str, Any] = {"type": "string", "title": rule.name}
    no_dash = first or not rule.allow_dash
    if rule.choices is not None:
        schema["enum"] = [c for c in rule.choices if not (no_dash and c.startswith("-"))]
        return schema
    patterns: list[str] = []
    if rule.type == "int":
        patterns.append(_SCHEMA_UINT if no_dash else _SCHEMA_INT)
    elif rule.type == "number":
        patterns.append(_SCHEMA_UNUMBER if no_dash else _SCHEMA_NUMBER)
    elif rule.type == "identifier":
        patterns.append(_SCHEMA_IDENTIFIER)
        schema["maxLength"] = 255
    elif rule.type == "url":
        patterns.append(_SCHEMA_URL)
        schema["format"] = "uri"
    elif rule.type == "email":
        patterns.append(_SCHEMA_EMAIL)
        schema["maxLength"] = _EMAIL_MAX
        schema["format"] = "email"
    elif rule.type == "path":
        schema["minLength"] = 1
    if no_dash and rule.type in ("string", "path", "email"):
        patterns.append(_SCHEMA_NO_DASH)
    if rule.pattern is not None:
        ecma = _ecma_pattern(rule.pattern)
        if ecma is not None:
            patterns.append(ecma)
    if patterns:
        schema["pattern"] = patterns[0]
    if len(patterns) > 1:
        schema["allOf"] = [{"pattern": pattern} for pattern in patterns[1:]]
    return schema


def _ecma_escape(text: str) -> str:
    return "".join("\\" + char if char in _ECMA_SYNTAX else char for char in text)


def _ecma_pattern(pattern: str) -> str | None:
    """``pattern`` as an ECMA-262 regex for the whole value, or None if it does not translate.

    The result matches what Python's ``re.fullmatch`` does, with the "u" flag or without
    (where only characters beyond U+FFFF may differ). Python-only syntax (named
    groups, inline flags, possessive quantifiers, ``\\A``) and the classes ``\\d \\w \\s
    \\b``, which are Unicode-aware in Python but ASCII in ECMA, give None: the schema then
    leaves the pattern to ``check`` rather than describe it wrongly.
    """
    out: list[str] = []
    groups: list[bool] = []  # for each open group: is it a lookaround?
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escape = pattern[index + 1 : index + 2]
            if escape.isascii() and escape.isalnum():
                if escape in ("n", "t", "r", "f", "v"):
                    size = 2
                elif escape == "x" and _HEX2.fullmatch(pattern, index + 2, index + 4):
                    size = 4
                elif escape == "u" and _HEX4.fullmatch(pattern, index + 2, index + 6):
                    size = 6
                else:
                    return None
                out.append(pattern[index : index + size])
                index += size
                continue
            if escape in _ECMA_SYNTAX or (escape == "-" and in_class):
                out.append("\\" + escape)
            else:
                out.append(escape)  # Python allows "\-", "\ ", "\#"...: all literal
            index += 2
            continue
        if in_class:
            if pattern[index : index + 2] in ("--", "&&", "~~", "||") or ord(char) > 0xFFFF:
                return None  # set operations in Python; two UTF-16 units in ECMA without "u"
            out.append("\\[" if char == "[" else char)
            in_class = char != "]"
            index += 1
            continue
        if char == "[":
            start = index + 2 if pattern.startswith("[^", index) else index + 1
            if pattern.startswith("]", start):
                return None  # a literal "]" in Python, an empty class in ECMA
            out.append(pattern[index:start])
            in_class = True
            index = start
            continue
        if char == "(" and pattern.startswith("(?", index):
            group = next((g for g in _ECMA_GROUPS if pattern.startswith(g, index)), None)
            if group is None:
                return None
            out.append(group)
            groups.append(group != "(?:")
            index += len(group)
            continue
        if char == "(":
            groups.append(False)
        elif char == ")" and groups and groups.pop() and pattern[index + 1 : index + 2] in _QUANT:
            return None  # a quantified lookaround: Python allows it, ECMA with "u" does not
        if char == "{":
            match = _QUANTIFIER.match(pattern, index)
            if match is None or (match.group(2) is None and not match.group(1)):
                out.append("\\{")  # Python takes a "{" that starts no quantifier literally
                index += 1
                continue
            low, high = match.group(1) or "0", match.group(2)
            out.append("{" + low + ("" if high is None else "," + high) + "}")
            index = match.end()
            if pattern.startswith("+", index):
                return None
            continue
        if char in "*+?":
            out.append(char)
            index += 1
            if pattern.startswith("+", index):
                return None  # possessive: Python 3.11+ only
            continue  # a lazy "?" after it is copied as it comes
        if char == ".":
            out.append("[^\\n]")  # Python's "." is everything but "\n"; ECMA's excludes more
        elif char == "$":
            out.append("(?=\\n?$)")  # Python's "$" also matches before a final "\n"
        elif char in "}]":
            out.append("\\" + char)
        elif ord(char) > 0xFFFF:
            out.append("(?:" + char + ")")  # one unit for a quantifier, with or without "u"
        else:
            out.append(char)
        index += 1
    return "^(?:" + "".join(out) + ")$"
