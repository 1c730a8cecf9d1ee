"""Argument policies: options, positional rules, paths, config errors, schemas, properties."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from procgate.errors import ConfigError, InvalidRequest
from procgate.policy import ArgPolicy, ArgRule, _ecma_pattern, parse_policy

# Fixed examples, no database: every run checks the same cases, in a few seconds.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=400)

TYPES = ["string", "int", "number", "identifier", "path", "url", "email"]


def make_tree(root: Path) -> str:
    """A base directory with files, an inner symlink and symlinks that escape it."""
    base = root / "base"
    (base / "sub").mkdir(parents=True)
    (base / "file.txt").write_text("x")
    (base / "sub" / "inner.txt").write_text("x")
    (base / "-dash.txt").write_text("x")
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("secret")
    (root / "base-evil").mkdir()  # shares base's name as a string prefix, not as a directory
    (base / "link_in").symlink_to("sub")
    (base / "escape").symlink_to("../outside")
    (base / "escape_abs").symlink_to(root / "outside")
    (base / "loop_a").symlink_to("loop_b")
    (base / "loop_b").symlink_to("loop_a")
    return os.path.realpath(base)


@pytest.fixture
def base(tmp_path: Path) -> str:
    return make_tree(tmp_path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tree for the property tests: hypothesis runs many examples per test call."""
    return make_tree(tmp_path_factory.mktemp("policy"))


def rules(*items: dict[str, Any], options: Any = None, dashdash: Any = False) -> ArgPolicy:
    return parse_policy(list(items), options=options, dashdash=dashdash, where="command 'x'")


def refused(policy: ArgPolicy, args: Sequence[str]) -> str:
    """The message of the InvalidRequest that ``check`` raises for ``args``."""
    with pytest.raises(InvalidRequest) as info:
        policy.check(args)
    assert info.value.code == "invalid_argument"
    assert info.value.status == 400
    return info.value.message


# -- modes ------------------------------------------------------------------------------


def test_default_policy_is_any() -> None:
    """A command without a policy keeps today's behaviour: args are appended as sent."""
    assert ArgPolicy().mode == "any"
    assert parse_policy("any", where="x") == ArgPolicy()


def test_any_returns_args_unchanged() -> None:
    """Mode any passes every arg through, options and all, as a new list."""
    args = ("-rf", "--", "/", "", "é")
    result = ArgPolicy().check(args)
    assert result == list(args)
    assert isinstance(result, list)


@pytest.mark.parametrize("mode", ["any", "none"])
@pytest.mark.docs("security.md#argument-policy")
def test_nul_and_lone_surrogates_are_refused_in_every_mode(mode: str) -> None:
    """No value with a NUL byte or a lone surrogate can reach argv, whatever the mode."""
    policy = parse_policy(mode, where="x")
    assert "argument 2: must not contain NUL" in refused(policy, ["ok", "a\0b"])
    assert "argument 1: must be valid Unicode" in refused(policy, ["\ud800"])


@pytest.mark.docs("security.md#argument-policy")
def test_none_refuses_any_arg() -> None:
    """Mode none accepts only an empty list; even "--" is an argument."""
    policy = parse_policy("none", where="x")
    assert policy.check([]) == []
    assert "takes no arguments" in refused(policy, ["--"])
    assert refused(policy, [""]).startswith("argument 1:")


def test_requires_args() -> None:
    """Only a rules policy with a required rule needs the request to send args."""
    assert not ArgPolicy().requires_args
    assert not parse_policy("none", where="x").requires_args
    assert not rules({"name": "a", "optional": True}, options=["-v"]).requires_args
    assert rules({"name": "a"}).requires_args


@pytest.mark.parametrize("args", ["-v", [1], ["a", None], None])
def test_args_must_be_a_list_of_strings(args: Any) -> None:
    """A str (which is a Sequence) or non-string items are refused, not iterated."""
    assert "list of strings" in refused(rules(), args)


# -- options ----------------------------------------------------------------------------


@pytest.mark.docs("security.md#argument-policy")
def test_exact_options_are_allowed_and_others_refused() -> None:
    """A leading option must be listed exactly; anything else names its position."""
    policy = rules({"name": "target"}, options=["-v", "--verbose"])
    assert policy.check(["-v", "--verbose", "-v", "t"]) == ["-v", "--verbose", "-v", "t"]
    assert refused(policy, ["-v", "-x", "t"]) == "argument 2: option '-x' is not allowed"
    assert "not allowed" in refused(policy, ["-vv", "t"])
    assert "not allowed" in refused(policy, ["--verbose=1", "t"])


@pytest.mark.docs("security.md#argument-policy")
def test_prefix_options_need_a_value() -> None:
    """An entry ending in "=" allows that option with any non-empty value after the "="."""
    policy = rules(options=["--depth="])
    assert policy.check(["--depth=3"]) == ["--depth=3"]
    assert policy.check(["--depth=-1 x"]) == ["--depth=-1 x"]
    for bad in ("--depth=", "--depth", "--dept=3", "--depthx=3", "-depth=3"):
        assert "not allowed" in refused(policy, [bad])
    assert "NUL" in refused(policy, ["--depth=\0"])


def test_lone_dash_is_not_an_option() -> None:
    """ "-" (stdin by convention) starts with "-", so it is an option that is not allowed."""
    assert "option '-' is not allowed" in refused(rules({"name": "f"}), ["-"])


@pytest.mark.docs("security.md#argument-policy")
def test_double_dash_ends_options_and_is_consumed() -> None:
    """A leading "--" is not passed on; what follows it is positional, even "-x"."""
    policy = rules({"name": "a", "allow_dash": True}, options=["-v"])
    assert policy.check(["-v", "--", "-x"]) == ["-v", "-x"]
    assert policy.check(["--", "--"]) == ["--"]
    assert policy.check(["--", "-v"]) == ["-v"]


@pytest.mark.docs("security.md#argument-policy")
def test_dashdash_separates_options_from_positionals() -> None:
    """With dashdash, "--" is always put between the options and the positionals."""
    policy = rules(
        {"name": "a", "allow_dash": True, "optional": True}, options=["-v"], dashdash=True
    )
    assert policy.check(["-v", "x"]) == ["-v", "--", "x"]
    assert policy.check(["-v", "--", "-x"]) == ["-v", "--", "-x"]
    assert policy.check([]) == ["--"]
    assert policy.check(["--"]) == ["--"]


def test_options_end_at_the_first_positional() -> None:
    """An allowed option after a positional is a positional, so it needs allow_dash."""
    policy = rules({"name": "a"}, {"name": "b", "optional": True}, options=["-v"])
    assert refused(policy, ["x", "-v"]) == "argument 2 (b): must not start with '-'"


def test_leading_dash_positional_needs_allow_dash_even_after_double_dash() -> None:
    """ "--" only ends the options; the positional's rule still decides about "-"."""
    assert refused(rules({"name": "a"}), ["--", "-x"]) == "argument 2 (a): must not start with '-'"
    assert rules({"name": "a", "allow_dash": True}).check(["--", "-x"]) == ["-x"]


# -- counts -----------------------------------------------------------------------------


def test_missing_argument_is_named() -> None:
    """Too few positionals: the message names the first missing one by position and rule."""
    policy = rules({"name": "host"}, {"name": "port", "type": "int"}, options=["-v"])
    assert refused(policy, ["-v", "h"]) == "argument 3 (port) is missing"
    assert refused(policy, []) == "argument 1 (host) is missing"


def test_too_many_arguments() -> None:
    """More positionals than rules (and no repeat) is refused at the first extra one."""
    policy = rules({"name": "a"})
    assert "argument 2: unexpected" in refused(policy, ["x", "y"])
    assert "at most 1 positional" in refused(policy, ["x", "y"])
    assert "takes no positional arguments" in refused(rules(options=["-v"]), ["-v", "x"])


def test_optional_rules_may_be_absent() -> None:
    """Trailing optional rules match 0 or 1 argument each."""
    policy = rules({"name": "a"}, {"name": "b", "optional": True}, {"name": "c", "optional": True})
    assert policy.check(["1"]) == ["1"]
    assert policy.check(["1", "2", "3"]) == ["1", "2", "3"]
    assert "unexpected" in refused(policy, ["1", "2", "3", "4"])


def test_repeat_matches_any_number_of_further_arguments() -> None:
    """A repeating last rule takes 1..n arguments, or 0..n when it is also optional."""
    required = rules({"name": "cmd"}, {"name": "files", "type": "int", "repeat": True})
    assert required.check(["c", "1", "2", "3"]) == ["c", "1", "2", "3"]
    assert refused(required, ["c"]) == "argument 2 (files) is missing"
    assert refused(required, ["c", "1", "x"]).startswith("argument 3 (files): 'x' is not")
    optional = rules({"name": "files", "repeat": True, "optional": True})
    assert optional.check([]) == []
    assert optional.check(["a"] * 50) == ["a"] * 50


# -- types ------------------------------------------------------------------------------

TYPE_CASES = {
    "string": (["", "x y", "é", "日本", "../..", "a=b", "\n"], ["-x", "--"]),
    "int": (
        ["0", "42", "007", "9" * 40],
        ["", "+1", "1.0", "1e3", "0x10", "1_000", "١٢", " 1", "1\n"],
    ),
    "number": (
        ["0", "1.5", ".5", "5.", "+2", "1e3", "1E-3", "1.5e+10"],
        ["", "nan", "inf", "Infinity", "1e999", "1_0", " 1", "0x1", "1.2.3", "\u0661", "e3", "."],
    ),
    "identifier": (
        ["a", "_x", "A.b-c_9", "x" * 255],
        ["", "9x", ".a", "a b", "é", "a/b", "x" * 256, "a\n"],
    ),
    "url": (
        ["http://example.com", "https://a.b/c?d=e#f", "HTTP://X.ORG", "http://[::1]:8080/"],
        [
            "ftp://example.com",
            "http://",
            "http:///x",
            "http:x",
            "example.com",
            "javascript:alert(1)",
            "http://exa mple.com",
            "http://a.b/\x7f",
            "http://a.b/\u202e",
            "http://host:99999",
            "http://[::1",
            "",
        ],
    ),
    "email": (
        ["a@b.co", "first.last+tag@sub.example.org"],
        [
            "",
            "a@b",
            "@b.co",
            "a@.co",
            "a b@c.de",
            "a@b.c",
            "é@b.co",
            "a@b.co\n",
            "a" * 250 + "@b.co",
        ],
    ),
}


@pytest.mark.parametrize(
    ("type_", "value", "ok"),
    [(t, v, True) for t, (good, _) in TYPE_CASES.items() for v in good]
    + [(t, v, False) for t, (_, bad) in TYPE_CASES.items() for v in bad],
)
@pytest.mark.docs("security.md#argument-policy")
def test_rule_types(type_: str, value: str, ok: bool) -> None:
    """Each type accepts its own syntax (ASCII digits only) and refuses look-alikes."""
    policy = rules({"name": "v", "type": type_})
    if ok:
        assert policy.check(["--", value]) == [value]
    else:
        assert refused(policy, ["--", value]).startswith("argument 2 (v): ")


@pytest.mark.parametrize(("type_", "value"), [("int", "-3"), ("number", "-1.5"), ("string", "-")])
@pytest.mark.docs("security.md#argument-policy")
def test_negative_values_need_allow_dash(type_: str, value: str) -> None:
    """A "-" value is refused by default (option injection) and passed with allow_dash."""
    assert "must not start with '-'" in refused(rules({"name": "n", "type": type_}), ["--", value])
    assert rules({"name": "n", "type": type_, "allow_dash": True}).check(["--", value]) == [value]


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("file.txt", "file.txt"),
        ("sub/inner.txt", "sub/inner.txt"),
        ("sub/../file.txt", "file.txt"),
        ("./sub//inner.txt", "sub/inner.txt"),
        (".", ""),
        ("sub", "sub"),
        ("not/yet/created.txt", "not/yet/created.txt"),
        ("link_in/inner.txt", "sub/inner.txt"),
    ],
)
def test_path_inside_base_is_resolved(base: str, value: str, expected: str) -> None:
    """A path inside base comes back absolute, normalised and with symlinks followed."""
    policy = rules({"name": "p", "type": "path", "base": base})
    assert policy.check([value]) == [os.path.join(base, expected) if expected else base]


def test_absolute_path_inside_base_is_allowed(base: str) -> None:
    """An absolute path is checked as it is: inside base is fine."""
    policy = rules({"name": "p", "type": "path", "base": base})
    assert policy.check([base + "/file.txt"]) == [base + "/file.txt"]
    assert policy.check([base]) == [base]


@pytest.mark.parametrize(
    "value",
    [
        "..",
        "../",
        "../outside/secret.txt",
        "sub/../../outside",
        "/",
        "/etc/passwd",
        "escape",
        "escape/secret.txt",
        "escape_abs/secret.txt",
        "link_in/../../outside",
    ],
)
@pytest.mark.docs("security.md#argument-policy")
def test_path_outside_base_is_refused(base: str, value: str) -> None:
    """ "..", absolute paths elsewhere and symlinks that lead out are all refused."""
    policy = rules({"name": "p", "type": "path", "base": base})
    assert refused(policy, [value]).startswith("argument 1 (p): path ")


@pytest.mark.docs("security.md#argument-policy")
def test_path_sibling_with_common_prefix_is_refused(tmp_path: Path) -> None:
    """A sibling named like base plus a suffix is outside: containment compares components."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base-evil").mkdir()
    policy = rules({"name": "p", "type": "path", "base": str(tmp_path / "base")})
    assert "outside" in refused(policy, ["../base-evil/x"])
    assert "outside" in refused(policy, [str(tmp_path / "base-evil")])


def test_path_edge_cases(base: str) -> None:
    """Empty paths are refused; symlink loops and very long paths give InvalidRequest or pass."""
    policy = rules({"name": "p", "type": "path", "base": base})
    assert "must not be empty" in refused(policy, ["--", ""])
    for value in ("loop_a", "loop_a/x", "a/" * 2000, "x" * 5000):
        try:
            (result,) = policy.check([value])
        except InvalidRequest:
            continue
        assert os.path.commonpath([base, result]) == base


def test_path_with_leading_dash(base: str) -> None:
    """A "-name" path needs allow_dash, and then comes back absolute: never an option."""
    assert "must not start with '-'" in refused(
        rules({"name": "p", "type": "path", "base": base}), ["--", "-dash.txt"]
    )
    policy = rules({"name": "p", "type": "path", "base": base, "allow_dash": True})
    assert policy.check(["--", "-dash.txt"]) == [base + "/-dash.txt"]


def test_path_pattern_and_choices_apply_to_the_value_as_given(base: str) -> None:
    """pattern and choices see what the client sent, not the resolved path."""
    policy = rules({"name": "p", "type": "path", "base": base, "pattern": r"[a-z]+/[a-z]+\.txt"})
    assert policy.check(["sub/inner.txt"]) == [base + "/sub/inner.txt"]
    assert "does not match" in refused(policy, [base + "/sub/inner.txt"])
    chosen = rules({"name": "p", "type": "path", "base": base, "choices": ["file.txt"]})
    assert chosen.check(["file.txt"]) == [base + "/file.txt"]
    assert "is not one of" in refused(chosen, ["./file.txt"])


# -- pattern and choices ----------------------------------------------------------------


@pytest.mark.docs("security.md#argument-policy")
def test_pattern_must_match_the_whole_value() -> None:
    """A pattern is applied with fullmatch: a partial match is not enough."""
    policy = rules({"name": "tag", "pattern": "[a-z]+"})
    assert policy.check(["abc"]) == ["abc"]
    message = refused(policy, ["abc1"])
    assert message == "argument 1 (tag): 'abc1' does not match '[a-z]+'"
    assert "does not match" in refused(policy, ["abc\n"])


@pytest.mark.docs("security.md#argument-policy")
def test_choices() -> None:
    """choices allows exactly the listed values."""
    policy = rules({"name": "color", "choices": ["red", "green"]})
    assert policy.check(["red"]) == ["red"]
    assert "is not one of 'red', 'green'" in refused(policy, ["Red"])


def test_type_pattern_and_choices_combine() -> None:
    """A value must pass its type, its pattern and its choices."""
    policy = rules({"name": "n", "type": "int", "pattern": "[0-9]{2}", "choices": ["10", "20"]})
    assert policy.check(["10"]) == ["10"]
    assert "does not match" in refused(policy, ["7"])
    assert "not one of" in refused(policy, ["11"])
    assert "not an integer" in refused(policy, ["ab"])


@pytest.mark.docs("security.md#argument-policy")
def test_error_position_counts_options_and_double_dash() -> None:
    """Positions are 1-based indexes into the request's args, so clients can find them."""
    policy = rules({"name": "host"}, {"name": "port", "type": "int"}, options=["-v"])
    assert refused(policy, ["-v", "--", "h", "x"]).startswith("argument 4 (port): ")
    assert refused(policy, ["-v", "h", "\0"]) == "argument 3 (port): must not contain NUL bytes"


def test_long_values_are_cut_short_in_messages() -> None:
    """Error messages quote at most a short prefix of a value."""
    message = refused(rules({"name": "n", "type": "int"}), ["y" * 10_000])
    assert len(message) < 120


# -- parse_policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "extra", "expected"),
    [
        ("all", {}, 'must be "any", "none" or a list'),
        (42, {}, 'must be "any", "none" or a list'),
        ({"name": "a"}, {}, 'must be "any", "none" or a list'),
        (["a"], {}, "rule 1 must be a table"),
        ([{"type": "int"}], {}, "rule 1 has no name"),
        ([{"name": "a", "kind": "x", "min": 1}], {}, "unknown key(s) kind, min"),
        ([{"name": "two words"}], {}, "rule 1: name must be"),
        ([{"name": 3}], {}, "rule 1: name must be"),
        ([{"name": "a"}, {"name": "a"}], {}, "rule 2: the name 'a' is used twice"),
        ([{"name": "a", "type": "float"}], {}, "rule 1 (a): type must be one of"),
        ([{"name": "a", "pattern": "("}], {}, "pattern is not a valid regex"),
        ([{"name": "a", "pattern": "a{99999999999}"}], {}, "pattern is not a valid regex"),
        ([{"name": "a", "pattern": 5}], {}, "pattern must be a string"),
        ([{"name": "a", "choices": "red"}], {}, "choices must be a list"),
        ([{"name": "a", "choices": []}], {}, "choices must be a non-empty list"),
        ([{"name": "a", "choices": ["x", 1]}], {}, "choices must be a non-empty list"),
        ([{"name": "a", "type": "int", "choices": ["x"]}], {}, "choice 'x' could never"),
        ([{"name": "a", "choices": ["-x"]}], {}, "choice '-x' could never"),
        ([{"name": "a", "pattern": "[a-z]", "choices": ["ab"]}], {}, "choice 'ab' could never"),
        ([{"name": "a", "choices": ["a\0"]}], {}, "NUL"),
        ([{"name": "a", "type": "path"}], {}, "a path rule needs base"),
        ([{"name": "a", "type": "path", "base": 7}], {}, "a path rule needs base"),
        ([{"name": "a", "type": "path", "base": "/nonexistent/x"}], {}, "not an existing dir"),
        ([{"name": "a", "base": "/"}], {}, "base applies to type path only"),
        ([{"name": "a", "optional": True}, {"name": "b"}], {}, "cannot follow an optional"),
        ([{"name": "a", "repeat": True}, {"name": "b"}], {}, "only the last rule may repeat"),
        ([{"name": "a", "optional": "yes"}], {}, "optional must be true or false"),
        ([{"name": "a", "allow_dash": 1}], {}, "allow_dash must be true or false"),
        ([], {"options": "-v"}, "options must be a list of strings"),
        ([], {"options": [1]}, "options must be a list of strings"),
        ([], {"options": ["v"]}, "option 'v' must start with '-'"),
        ([], {"options": ["--"]}, "option '--' must start"),
        ([], {"options": ["-"]}, "option '-' must start"),
        ([], {"options": ["---x"]}, "option '---x' must start"),
        ([], {"options": ["-a b"]}, "option '-a b' must start"),
        ([], {"options": ["-v", "-v"]}, "lists an option twice"),
        ([], {"dashdash": "yes"}, "dashdash must be true or false"),
        ("none", {"options": ["-v"]}, "need a list of argument rules, not 'none'"),
        ("any", {"options": ["-v"]}, "need a list of argument rules, not 'any'"),
        ("none", {"dashdash": True}, "need a list of argument rules"),
    ],
)
@pytest.mark.docs("security.md#argument-policy")
def test_parse_policy_errors(value: Any, extra: dict[str, Any], expected: str) -> None:
    """Every invalid policy is a ConfigError whose message starts with the given place."""
    with pytest.raises(ConfigError) as info:
        parse_policy(value, where="command 'deploy'", **extra)
    assert info.value.message.startswith("command 'deploy': ")
    assert expected in info.value.message


def test_base_that_is_a_file_is_refused(base: str) -> None:
    """A path base must be a directory, not a file."""
    with pytest.raises(ConfigError, match="not an existing directory"):
        rules({"name": "p", "type": "path", "base": base + "/file.txt"})


def test_base_is_stored_as_its_real_path(tmp_path: Path, base: str) -> None:
    """A symlinked or relative base is resolved once, at config time."""
    (tmp_path / "alias").symlink_to(base)
    policy = rules({"name": "p", "type": "path", "base": str(tmp_path / "alias")})
    assert policy.rules[0].base == base
    assert policy.check(["file.txt"]) == [base + "/file.txt"]
    relative = rules({"name": "p", "type": "path", "base": "."})  # conftest chdirs to tmp_path
    assert relative.rules[0].base == os.path.realpath(tmp_path)


@pytest.mark.docs("python-api.md#procgateauth-and-procgatepolicy")
def test_parse_policy_builds_the_records(base: str) -> None:
    """Config tables become ArgRule records with defaults filled in and lists as tuples."""
    policy = rules(
        {"name": "mode", "choices": ["fast", "slow"]},
        {"name": "files", "type": "path", "base": base, "optional": True, "repeat": True},
        options=["-v", "--depth="],
        dashdash=True,
    )
    assert policy == ArgPolicy(
        mode="rules",
        rules=(
            ArgRule(name="mode", choices=("fast", "slow")),
            ArgRule(name="files", type="path", base=base, optional=True, repeat=True),
        ),
        options=("-v", "--depth="),
        dashdash=True,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mode": "some"}, "mode must be one of"),
        ({"mode": "rules", "rules": [ArgRule("a")]}, "rules must be a tuple"),
        ({"mode": "rules", "options": ["-v"]}, "options must be a tuple"),
        ({"mode": "rules", "rules": (ArgRule("p", type="path", base="/."),)}, "real path"),
        ({"mode": "rules", "rules": (ArgRule("p", type="path"),)}, "needs base"),
        ({"mode": "any", "rules": (ArgRule("a"),)}, "need a list of argument rules"),
    ],
)
@pytest.mark.docs("python-api.md#procgateauth-and-procgatepolicy")
def test_policies_built_directly_are_validated(kwargs: dict[str, Any], expected: str) -> None:
    """ArgPolicy validates itself, so a policy built in Python is as safe as a parsed one."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        ArgPolicy(**kwargs)


# -- to_json and to_schema --------------------------------------------------------------


@pytest.mark.docs("http-api.md#get-commands-and-get-commandsname")
def test_to_json(base: str) -> None:
    """GET /commands shows the mode, every rule with all its fields, options and dashdash."""
    policy = rules(
        {"name": "n", "type": "int"},
        {"name": "p", "type": "path", "base": base, "choices": ["file.txt"], "optional": True},
        options=["-v"],
        dashdash=True,
    )
    assert policy.to_json() == {
        "mode": "rules",
        "rules": [
            {
                "name": "n",
                "type": "int",
                "pattern": None,
                "choices": None,
                "base": None,
                "optional": False,
                "repeat": False,
                "allow_dash": False,
            },
            {
                "name": "p",
                "type": "path",
                "pattern": None,
                "choices": ["file.txt"],
                "base": base,
                "optional": True,
                "repeat": False,
                "allow_dash": False,
            },
        ],
        "options": ["-v"],
        "dashdash": True,
    }
    assert ArgPolicy().to_json() == {"mode": "any", "rules": [], "options": [], "dashdash": False}


def test_schema_for_any_and_none() -> None:
    """any is an array of strings; none is an empty array."""
    assert ArgPolicy().to_schema()["items"] == {"type": "string"}
    assert "maxItems" not in ArgPolicy().to_schema()
    none = parse_policy("none", where="x").to_schema()
    assert none["type"] == "array"
    assert none["maxItems"] == 0
    assert ArgPolicy().to_schema()["description"] == "Appended to the command's argv unchecked."
    assert none["description"] == "This command takes no arguments."


def test_schema_without_options_is_a_tuple_per_rule() -> None:
    """Without options: one prefixItems layout as sent, one after a leading "--"."""
    policy = rules(
        {"name": "host", "type": "identifier"},
        {"name": "port", "type": "int", "allow_dash": True},
        {"name": "mode", "choices": ["fast", "-slow"], "allow_dash": True, "optional": True},
    )
    schema = policy.to_schema()
    assert schema["type"] == "array"
    assert schema["items"] == {"type": "string"}
    plain, after_dashdash = schema["anyOf"]
    assert (plain["minItems"], plain["maxItems"]) == (2, 3)
    assert (after_dashdash["minItems"], after_dashdash["maxItems"]) == (3, 4)
    assert after_dashdash["prefixItems"][0] == {"const": "--"}
    host, port, mode = plain["prefixItems"]
    assert host["title"] == "host"
    assert host["pattern"] == "^[A-Za-z_][A-Za-z0-9_.-]*$"
    assert host["maxLength"] == 255
    assert port["pattern"] == "^-?[0-9]+$"
    assert mode["enum"] == ["fast", "-slow"]
    assert schema["description"] == (
        '"--" (optional, ends the options), then host (identifier), port (int), [mode (string)].'
    )
    assert "allOf" not in host  # one pattern: no empty allOf, which JSON Schema forbids
    # The first item of the plain layout can never start with "-": it would be an option.
    first_port = rules({"name": "port", "type": "int", "allow_dash": True}).to_schema()
    assert first_port["anyOf"][0]["prefixItems"][0]["pattern"] == "^[0-9]+$"
    assert first_port["anyOf"][1]["prefixItems"][1]["pattern"] == "^-?[0-9]+$"


def test_schema_repeat_uses_items() -> None:
    """A repeating last rule has no maxItems; further items follow its schema."""
    schema = rules({"name": "cmd"}, {"name": "n", "type": "number", "repeat": True}).to_schema()
    plain = schema["anyOf"][0]
    assert plain["minItems"] == 2
    assert "maxItems" not in plain
    assert plain["items"]["title"] == "n"
    assert schema["description"] == (
        '"--" (optional, ends the options), then cmd (string), n (number)....'
    )


def test_schema_of_a_first_rule_leaves_out_choices_that_look_like_options() -> None:
    """A choice starting with "-" cannot come first unless after "--" (it would be an
    option): the plain layout's first item leaves it out, the one after "--" has it."""
    schema = rules({"name": "mode", "choices": ["fast", "-slow"], "allow_dash": True}).to_schema()
    plain, after_dashdash = schema["anyOf"]
    assert plain["prefixItems"][0]["enum"] == ["fast"]
    assert after_dashdash["prefixItems"][1]["enum"] == ["fast", "-slow"]


def test_schema_with_options_and_no_positionals() -> None:
    """Options alone: the description says no positional arguments follow."""
    schema = rules(options=["-v"]).to_schema()
    assert schema["description"] == (
        'options first (-v), any number, then "--" (optional, ends the options), then no '
        "positional arguments."
    )


def test_schema_with_options_lists_what_each_item_may_be() -> None:
    """With options, each item is an allowed option, "--" or a positional of some rule."""
    schema = rules(
        {"name": "target", "type": "email"}, options=["-v", "--max.depth="], dashdash=True
    ).to_schema()
    assert schema["minItems"] == 1
    choices = schema["items"]["anyOf"]
    assert choices[:3] == [
        {"enum": ["-v"]},
        {"pattern": r"^--max\.depth=[\s\S]"},  # "." escaped: it is literal in the option
        {"const": "--"},
    ]
    assert choices[3]["format"] == "email"
    assert schema["description"] == (
        'options first (-v, --max.depth=VALUE), any number, then "--" (optional, ends the '
        "options), then target (email)."
    )


#: (rule pattern, its ECMA-262 form in the schema, or None where it does not translate).
#: Plain ids: mutmut selects a mutant's tests by node id, and ids made of these patterns
#: (backslashes, brackets, spaces) were never selected, so their mutants all survived.
SCHEMA_PATTERNS = [
    ("[a-z]+", "^(?:[a-z]+)$"),
    (r"a.b", r"^(?:a[^\n]b)$"),
    ("a$", r"^(?:a(?=\n?$))$"),
    ("x{,3}", "^(?:x{0,3})$"),
    (r"\-v\ x", "^(?:-v x)$"),
    (r"a\-b\-c.", r"^(?:a-b-c[^\n])$"),
    (r"[\-a]", r"^(?:[\-a])$"),
    (r"[a]b.", r"^(?:[a]b[^\n])$"),
    ("a{", r"^(?:a\{)$"),
    ("(?:ab)*?c|(?=d)d", "^(?:(?:ab)*?c|(?=d)d)$"),
    (r"\x41\u00e9\.", r"^(?:\x41\u00e9\.)$"),
    (r"\n\t\r\f\v", r"^(?:\n\t\r\f\v)$"),
    (r"\n.", r"^(?:\n[^\n])$"),
    (r"\x41.", r"^(?:\x41[^\n])$"),
    (r"\u00e9.", r"^(?:\u00e9[^\n])$"),
    ("[\uffff]", "^(?:[\uffff])$"),
    ("😀+", "^(?:(?:😀)+)$"),
    (r"\d+", None),
    (r"\d12", None),
    (r"\d1234", None),
    (r"\w", None),
    ("(?i)abc", None),
    ("(?P<x>a)", None),
    ("a++", None),
    ("[]a]", None),
    (r"\Aa\Z", None),
    ("(?=a)*a", None),
    ("[😀]", None),
    ("[\U00010000]", None),
    ("[^a]b", "^(?:[^a]b)$"),
    ("[^]a]", None),
    ("a[^]b]", None),
    ("a(?P<x>b)", None),
    ("a(?=b)*", None),
    ("(?=(a))*a", None),
    ("(a)*", "^(?:(a)*)$"),
    ("a(?=b)", "^(?:a(?=b))$"),
    ("x{3}", "^(?:x{3})$"),
    ("x{}", r"^(?:x\{\})$"),
    ("a{b", r"^(?:a\{b)$"),
    ("x{2}+", None),
    ("x{2}y", "^(?:x{2}y)$"),
    ("a*?b+?c??", "^(?:a*?b+?c??)$"),
    ("a}]", r"^(?:a\}\])$"),
    ("\U00010000+", "^(?:(?:\U00010000)+)$"),
    ("X", "^(?:X)$"),
    ("aX+", "^(?:aX+)$"),
    ("\uffff+", "^(?:\uffff+)$"),  # the last character of one UTF-16 unit
]


@pytest.mark.parametrize(
    ("pattern", "ecma"),
    SCHEMA_PATTERNS,
    ids=[f"pattern{number}" for number in range(len(SCHEMA_PATTERNS))],
)
def test_schema_pattern_translation(pattern: str, ecma: str | None) -> None:
    """A rule pattern appears in ECMA-262 form where it translates, and is left out if not.
    A pattern the running Python's ``re`` refuses (a possessive ``a++`` before 3.11) is a
    ConfigError instead, and its translation is still None."""
    try:
        re.compile(pattern)
    except re.error:
        with pytest.raises(ConfigError, match="not a valid regex"):
            rules({"name": "a", "pattern": pattern})
        assert _ecma_pattern(pattern) is None
        return
    item = rules({"name": "a", "pattern": pattern, "allow_dash": True}).to_schema()
    schema = item["anyOf"][1]["prefixItems"][1]  # after "--": allow_dash adds no pattern
    assert schema.get("pattern") == ecma


@pytest.mark.parametrize(
    ("pattern", "ecma"),
    [
        ("[a--b]", None),
        ("[a&&b]", None),
        ("[a~~b]", None),
        ("[a||b]", None),
        ("[[a]", r"^(?:[\[a])$"),
    ],
    ids=["difference", "intersection", "symmetric", "union", "bracket"],
)
def test_schema_pattern_translation_of_future_set_syntax(pattern: str, ecma: str | None) -> None:
    """Set operations inside a class (``--``, ``&&``, ``~~``, ``||``), which Python
    compiles with a FutureWarning, are not translated; a ``[`` inside a class is escaped."""
    assert _ecma_pattern(pattern) == ecma


def test_schema_of_url_number_and_path_rules() -> None:
    """In the OpenAPI schema a url rule is ``format: uri`` with an http(s) pattern, and a
    number or path rule without allow_dash has a pattern that refuses a leading "-"."""
    policy = rules(
        {"name": "u", "type": "url"},
        {"name": "n", "type": "number"},
        {"name": "f", "type": "path", "base": str(Path(__file__).parent)},
    )
    url, number, path = policy.to_schema()["anyOf"][0]["prefixItems"]
    assert url["format"] == "uri"
    assert re.match(url["pattern"], "HTTPS://a.b")
    assert not re.match(url["pattern"], "ftp://a.b")
    assert re.match(number["pattern"], "+1.5e3")
    assert not re.match(number["pattern"], "-1")
    assert path["minLength"] == 1
    assert not re.match(path["pattern"], "-x")


def test_email_is_at_most_254_characters() -> None:
    """An email argument of exactly 254 characters is accepted; 255 are refused, even
    with a 64-character local part and domain labels of 63 or fewer."""
    policy = rules({"name": "to", "type": "email"})
    longest = "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 58]) + ".co"
    assert len(longest) == 254
    assert policy.check([longest]) == [longest]
    too_long = longest.replace("d" * 58, "d" * 59)
    assert "is not an email address" in refused(policy, [too_long])


# -- properties -------------------------------------------------------------------------

NASTY = [
    "",
    "-",
    "--",
    "---",
    "-v",
    "--verbose",
    "--depth=",
    "--depth=3",
    "--depth=-1",
    "-x",
    "\0",
    "a\0b",
    "\ud800x",
    ".",
    "..",
    "../",
    "../..",
    "../../etc/passwd",
    "/",
    "/etc/passwd",
    "sub/../../outside",
    "file.txt",
    "sub/inner.txt",
    "sub/../file.txt",
    "link_in/inner.txt",
    "escape",
    "escape/secret.txt",
    "escape_abs/secret.txt",
    "loop_a",
    "-dash.txt",
    "new/file",
    "a/" * 300,
    "é",
    "日本語",
    "\u202e",
    "😀",
    "\n",
    " ",
    "a b",
    "1",
    "-1",
    "007",
    "1.5",
    "-1.5",
    ".5",
    "1e3",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "0x10",
    "1_000",
    "١٢٣",
    "12\n",
    "http://example.com",
    "https://example.com/a?b=c",
    "HTTP://EXAMPLE.COM",
    "http://",
    "http://[::1",
    "http://host:99999",
    "ftp://example.com",
    "javascript:alert(1)",
    "http://exa mple.com",
    "a@b.co",
    "-a@b.co",
    "a@b",
    "ident_1",
    "_x",
    "9x",
    "x" * 256,
    "red",
    "green",
    "-blue",
]
# Near misses per type, for replacing one positional of a valid request.
TRICKY = {
    "string": ["-x", "--", "-", "", "a\0", "\ud800"],
    "int": ["-1", "+1", "1.0", "\u0661\u0662", "1_000", "12\n", " 1", ""],
    "number": ["nan", "inf", "-inf", "1e999", "-1e999", "1_0", "0x10", " 1", "-0.5", "", "."],
    "identifier": ["9x", "", "x" * 256, "a b", "é", "-x", "a\n"],
    "url": [
        "http://exa mple.com",
        "http://a.b/\x7f",
        "http://a.b/\u202e",
        "http://",
        "ftp://a.b",
        "http://host:99999",
        "http://[::1",
        "-http://a.b",
        "http://a.b\n",
    ],
    "email": ["a@b", "a b@c.de", "-a@b.co", "a@b.c", "a" * 250 + "@b.co", "a@b.co\n"],
    "path": [
        "",
        "..",
        "../base-evil/x",
        "escape/secret.txt",
        "escape_abs",
        "/etc/passwd",
        "-dash.txt",
        "link_in/../../outside",
        "loop_a/x",
        "sub/../../base/file.txt",
        "\0",
    ],
}
PATTERNS = [
    "[a-z]+",
    ".*",
    "[0-9]{1,3}",
    "-?[a-z0-9]*",
    "(?:red|green|-blue)",
    "[^/]*",
    r"\.\./.*",
    r"sub/.*|file\.txt",
    "[a-z_]+[0-9]?",
]
CHOICES = [
    "red",
    "green",
    "-blue",
    "file.txt",
    "sub/inner.txt",
    "..",
    "1",
    "-1",
    "a@b.co",
    "ident_1",
    "http://example.com",
]
OPTIONS = ["-v", "--verbose", "--depth=", "-n=", "--format=json"]


def _acceptable(rule: dict[str, Any], choice: str) -> bool:
    try:
        parse_policy([{**rule, "choices": [choice]}], where="x")
    except ConfigError:
        return False
    return True


@st.composite
def policies(
    draw: st.DrawFn, base: str, *, any_type_pattern: bool = True, rules_only: bool = False
) -> ArgPolicy:
    """Valid policies of every mode (only "rules" with rules_only); rule patterns on
    strings only unless any_type_pattern."""
    mode = "rules" if rules_only else draw(st.sampled_from(["rules"] * 4 + ["any", "none"]))
    if mode != "rules":
        return parse_policy(mode, where="x")
    items: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = {"name": f"r{index}", "type": draw(st.sampled_from(TYPES))}
        if rule["type"] == "path":
            rule["base"] = base
        if draw(st.booleans()):
            rule["allow_dash"] = True
        if (any_type_pattern or rule["type"] == "string") and draw(st.integers(0, 2)) == 0:
            rule["pattern"] = draw(st.sampled_from(PATTERNS))
        if draw(st.integers(0, 3)) == 0:
            picked = draw(st.lists(st.sampled_from(CHOICES), min_size=1, max_size=4, unique=True))
            choices = [choice for choice in picked if _acceptable(rule, choice)]
            if choices:
                rule["choices"] = choices
        items.append(rule)
    for rule in items[draw(st.integers(0, len(items))) :]:
        rule["optional"] = True
    if items and draw(st.booleans()):
        items[-1]["repeat"] = True
    options = draw(st.lists(st.sampled_from(OPTIONS), max_size=3, unique=True))
    return parse_policy(items, options=options, dashdash=draw(st.booleans()), where="x")


def _valid_value(draw: st.DrawFn, rule: ArgRule) -> str:
    """A value that ``rule`` accepts (for rules without a pattern, or of type string)."""
    if rule.choices is not None:
        return draw(st.sampled_from(rule.choices))
    dash = "-?" if rule.allow_dash else ""
    if rule.type == "int":
        return draw(st.from_regex(dash + "[0-9]{1,6}", fullmatch=True))
    if rule.type == "number":
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
        return repr(abs(value) if not rule.allow_dash else value)
    if rule.type == "identifier":
        return draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    if rule.type == "url":
        host = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,4}){1,2}", fullmatch=True))
        return draw(st.sampled_from(["http", "https", "HTTPS"])) + "://" + host + "/x?y=1"
    if rule.type == "email":
        return draw(st.sampled_from(["a@b.co", "first.last+tag@mail.example.org"]))
    if rule.type == "path":
        paths = ["file.txt", "sub/inner.txt", ".", "sub", "link_in/inner.txt", "new.txt"]
        paths += [f"{rule.base}/file.txt", "sub/../file.txt", *(["-dash.txt"] * rule.allow_dash)]
        return draw(st.sampled_from(paths))
    text = st.text(st.characters(exclude_characters="\0", codec="utf-8"), max_size=6)
    if rule.pattern is not None:
        text = st.from_regex(rule.pattern, fullmatch=True, alphabet=st.characters(codec="utf-8"))
    return draw(text.filter(lambda v: "\0" not in v and (rule.allow_dash or v[:1] != "-")))


@st.composite
def valid_requests(draw: st.DrawFn, policy: ArgPolicy) -> tuple[list[str], list[str], int]:
    """Args that ``policy`` (mode rules) must accept, the argv tail it must return, and how
    many of the args are positionals (the last ones)."""
    options = []
    # sampled_from needs one value; max_size is 0 when the policy allows no options.
    for entry in draw(
        st.lists(st.sampled_from(policy.options or ["-"]), max_size=3 if policy.options else 0)
    ):
        if entry.endswith("="):
            entry += draw(
                st.text(st.characters(exclude_characters="\0", codec="utf-8"), min_size=1)
            )
        options.append(entry)
    required = sum(not rule.optional for rule in policy.rules)
    most = len(policy.rules) + (3 if policy.rules and policy.rules[-1].repeat else 0)
    count = draw(st.integers(required, most))
    picked = [policy.rules[min(i, len(policy.rules) - 1)] for i in range(count)]
    values = [_valid_value(draw, rule) for rule in picked]
    dashdash = draw(st.booleans()) or (bool(values) and values[0].startswith("-"))
    args = [*options, *(["--"] if dashdash else []), *values]
    resolved = [
        os.path.realpath(os.path.join(rule.base, value)) if rule.base else value
        for rule, value in zip(picked, values, strict=True)
    ]
    return args, [*options, *(["--"] if policy.dashdash else []), *resolved], len(values)


def arg_lists(policy: ArgPolicy) -> st.SearchStrategy[list[str]]:
    """Hostile arg lists: the nasty strings, this policy's own options and values, any text."""
    pool = [*NASTY, *policy.options, *(o + "x" for o in policy.options if o.endswith("="))]
    for rule in policy.rules:
        pool += list(rule.choices or ())
    item = st.one_of(
        st.sampled_from(pool),
        st.text(max_size=8),
        st.from_regex(r"-{0,2}[a-z0-9./]{0,6}", fullmatch=True),
    )
    hostile = st.lists(item, max_size=7)
    if policy.mode != "rules":
        return hostile
    valid = valid_requests(policy).map(lambda request: request[0])
    near_valid = near_valid_requests(policy, item)
    return st.one_of(hostile, valid, near_valid, near_valid)


@st.composite
def near_valid_requests(draw: st.DrawFn, policy: ArgPolicy, item: st.SearchStrategy[str]) -> Any:
    """A valid request with one item replaced, inserted or deleted: the edge a bug hides at.

    A positional is replaced mostly by a near miss for its own rule's type; any item may
    get a "-" in front, lose its option value, or become anything at all.
    """
    args, _, count = draw(valid_requests(policy))
    first = len(args) - count
    index = draw(st.integers(first if count and draw(st.booleans()) else 0, len(args)))
    current = args[index] if index < len(args) else ""
    tricky = NASTY
    if first <= index < len(args):
        tricky = TRICKY[policy.rules[min(index - first, len(policy.rules) - 1)].type]
    new = draw(
        st.one_of(
            st.sampled_from(tricky),
            st.sampled_from(tricky),
            st.just("-" + current),
            st.just(current.partition("=")[0] + "="),
            item,
        )
    )
    operation = draw(st.sampled_from(["replace", "insert", "delete"]))
    if operation == "delete":
        return [*args[:index], *args[index + 1 :]]
    return [*args[:index], new, *args[index + (operation == "replace") :]]


def _allowed_option(policy: ArgPolicy, arg: str) -> bool:
    exact = {option for option in policy.options if not option.endswith("=")}
    prefixes = [option for option in policy.options if option.endswith("=")]
    return arg in exact or any(arg.startswith(p) and len(arg) > len(p) for p in prefixes)


def _satisfies_type(rule: ArgRule, value: str) -> bool:
    """An oracle written apart from policy.py: does ``value`` have ``rule``'s type?"""
    if rule.type == "int":
        return value.isascii() and value.removeprefix("-").isdecimal()
    if rule.type == "number":
        if not value.isascii() or "_" in value or value != value.strip():
            return False
        if any(char.isalpha() and char not in "eE" for char in value):
            return False
        return math.isfinite(float(value))
    if rule.type == "identifier":
        return (
            0 < len(value) <= 255
            and value.isascii()
            and (value[0].isalpha() or value[0] == "_")
            and all(char.isalnum() or char in "_.-" for char in value)
        )
    if rule.type == "url":
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 -- ValueError for a port outside 0-65535
        except ValueError:
            return False
        return (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in value)
        )
    if rule.type == "email":
        local, _, domain = value.partition("@")
        tld = domain.rpartition(".")[2]
        return (
            len(value) <= 254
            and value.isascii()
            and value.count("@") == 1
            and bool(local)
            and "." in domain
            and len(tld) >= 2
            and tld.isalpha()
        )
    return True


def assert_obeys(policy: ArgPolicy, args: list[str], out: list[str]) -> None:
    """The argv tail ``check`` returned for ``args`` is one the policy allows."""
    assert all(isinstance(item, str) and "\0" not in item for item in out)
    if policy.mode != "rules":
        assert out == args
        assert policy.mode == "any" or out == []
        return
    leading = 0
    while leading < len(args) and args[leading].startswith("-") and args[leading] != "--":
        leading += 1
    assert out[:leading] == args[:leading]
    assert all(_allowed_option(policy, option) for option in out[:leading])
    rest = out[leading:]
    if policy.dashdash:
        assert rest[:1] == ["--"]
        rest = rest[1:]
    given_positionals = args[len(args) - len(rest) :]
    assert args[leading : len(args) - len(rest)] in ([], ["--"])
    assert len(rest) >= sum(not rule.optional for rule in policy.rules)
    if not (policy.rules and policy.rules[-1].repeat):
        assert len(rest) <= len(policy.rules)
    for index, (sent, value) in enumerate(zip(given_positionals, rest, strict=True)):
        rule = policy.rules[min(index, len(policy.rules) - 1)]
        assert rule.allow_dash or not sent.startswith("-")
        assert rule.allow_dash or not value.startswith("-")
        assert rule.pattern is None or re.fullmatch(rule.pattern, sent)
        assert rule.choices is None or sent in rule.choices
        assert _satisfies_type(rule, sent)
        if rule.type == "path":
            assert rule.base is not None
            # Path.resolve raises on symlink loops in 3.11; realpath leaves them to the program.
            assert value == os.path.realpath(os.path.join(rule.base, sent))
            assert Path(value).is_relative_to(rule.base)
            assert value.startswith("/")
        else:
            assert value == sent


def _python_regex(ecma: str) -> str:
    """ECMA's "$" is the end of input; Python's also matches before a final newline."""
    return re.sub(r"(?<!\\)((?:\\\\)*)\$", r"\1\\Z", ecma)


def schema_accepts(schema: Any, value: Any) -> bool:
    """A small JSON Schema evaluator for the keywords to_schema uses (and no others)."""
    if isinstance(schema, bool):
        return schema
    for key, sub in schema.items():
        if key == "type":
            if not isinstance(value, {"array": list, "string": str}[sub]):
                return False
        elif key in ("title", "description", "format"):
            continue
        elif key == "enum":
            if value not in sub:
                return False
        elif key == "const":
            if value != sub:
                return False
        elif key == "anyOf":
            if not any(schema_accepts(option, value) for option in sub):
                return False
        elif key == "allOf":
            if not all(schema_accepts(option, value) for option in sub):
                return False
        elif key in ("pattern", "minLength", "maxLength"):
            if isinstance(value, str) and not (
                re.search(_python_regex(sub), value)
                if key == "pattern"
                else (len(value) >= sub if key == "minLength" else len(value) <= sub)
            ):
                return False
        elif key in ("minItems", "maxItems"):
            if isinstance(value, list) and not (
                len(value) >= sub if key == "minItems" else len(value) <= sub
            ):
                return False
        elif key == "prefixItems":
            if isinstance(value, list) and not all(map(schema_accepts, sub, value)):
                return False
        elif key == "items":
            start = len(schema.get("prefixItems", []))
            if isinstance(value, list) and not all(schema_accepts(sub, v) for v in value[start:]):
                return False
        else:
            raise AssertionError(f"to_schema used a keyword the test does not know: {key}")
    return True


def _exactly_described(policy: ArgPolicy) -> bool:
    """Whether to_schema should accept exactly what check accepts (NUL aside)."""
    return policy.mode != "rules" or (
        not policy.options
        and all(rule.type in ("string", "int", "identifier", "email") for rule in policy.rules)
    )


def verify(policy: ArgPolicy, args: list[str], schema: dict[str, Any]) -> bool:
    """Check ``args``: a refusal is an InvalidRequest, an acceptance obeys the policy, and
    the schema agrees (never stricter; exact where ``_exactly_described``). Accepted?"""
    try:
        out = policy.check(args)
    except InvalidRequest as exc:
        error: InvalidRequest | None = exc
    else:
        error = None
        assert_obeys(policy, args, out)
        assert schema_accepts(schema, args)
    if error is not None:
        assert error.code == "invalid_argument"
        assert error.message.startswith("argument ")
    clean = all("\0" not in arg and not re.search("[\ud800-\udfff]", arg) for arg in args)
    if clean and _exactly_described(policy):
        assert schema_accepts(schema, args) == (error is None)
    return error is None


def test_every_type_against_every_near_miss(sandbox: str) -> None:
    """Every rule type, with and without allow_dash, first or after options, against every
    nasty value in every position: check and to_schema hold up (see ``verify``)."""
    values = sorted({*NASTY, *(value for misses in TRICKY.values() for value in misses)})
    accepted = 0
    for type_ in TYPES:
        for allow_dash in (False, True):
            rule = {"name": "v", "type": type_, "allow_dash": allow_dash}
            if type_ == "path":
                rule["base"] = sandbox
            for policy in (
                rules(rule),
                rules({"name": "s"}, {**rule, "optional": True}, options=["-v", "--depth="]),
            ):
                schema = policy.to_schema()
                for value in values:
                    for args in ([value], ["--", value], [value, "s"], ["-v", "--", "s", value]):
                        accepted += verify(policy, args, schema)
    assert accepted > 500  # the loop reaches acceptance too, not only refusals


@PROPERTY
@given(data=st.data())
@pytest.mark.docs("security.md#argument-policy")
def test_check_and_schema_hold_for_any_policy_and_args(sandbox: str, data: st.DataObject) -> None:
    """For generated policies and hostile or near-valid args, ``verify`` holds: check only
    ever raises InvalidRequest, and what it accepts obeys the policy and the schema."""
    policy = data.draw(policies(sandbox))
    args = data.draw(arg_lists(policy))
    accepted = verify(policy, args, policy.to_schema())
    event(
        f"{'accepted' if accepted else 'refused'} ({policy.mode})"
    )  # see --hypothesis-show-statistics


@PROPERTY
@given(data=st.data())
def test_valid_args_are_accepted(sandbox: str, data: st.DataObject) -> None:
    """Args built to satisfy a policy are accepted, with paths resolved and "--" placed.

    Every example counts: the policies are drawn in mode "rules" (the others have no
    valid-request builder), where this test used to return early for a third of them.
    """
    policy = data.draw(policies(sandbox, any_type_pattern=False, rules_only=True))
    args, expected, positionals = data.draw(valid_requests(policy))
    assert policy.check(args) == expected
    event(f"{len(policy.rules)} rule(s), {positionals} positional(s)")
