"""Survivors that are equivalent by a rule anyone can check, so nobody reviews them by hand.

``classify(diff)`` takes one mutant's diff (as ``mutmut show`` prints it) and returns the
name of the rule that makes it equivalent, or None when a person has to look. A rule
must hold for every mutant it matches, not just usually; when in doubt it says None.

- ``sql-case``: mutmut changed only the letter case of a string of SQL (it upper- or
  lower-cases a whole literal). SQLite reads keywords, function, table and column names in
  any case; the quoted literals inside the SQL (``'queued'``, ``'$.status'``), which are
  case-sensitive, are unchanged. A string is SQL when it has an upper-case keyword, or is
  a condition of the form ``column = ?``.
- ``row-key-case``: mutmut changed only the letter case of a column name looked up in a
  ``sqlite3.Row`` (``row["id"]``, ``rows[-1]["seq"]``), which matches names in any case.
"""

from __future__ import annotations

import re

#: A line that holds SQL: an upper-case keyword that starts or joins a statement.
_SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK|"
    r"WHERE|FROM|VALUES|RETURNING|ORDER BY|LIMIT|SET|INTO|TABLE|INDEX|ON CONFLICT|"
    r"AND|OR|IS NOT NULL|IS NULL|DISTINCT)\b"
    # or a condition on a column, as the WHERE clauses are built: "status = ?"
    r"|^\"[a-z_]+ (=|<|>|<=|>=|!=) \?\"$"
)
#: A lookup in a sqlite3.Row, up to the opening quote of the key.
_ROW_KEY = re.compile(r"\brows?(\[-?\d+\])*\[$")
#: A double-quoted Python string on one line (the code is ruff-formatted).
_STRING = re.compile(r'"[^"]*"')
#: A quoted literal inside SQL (single quotes; the Python strings use double quotes).
_LITERAL = re.compile(r"'[^']*'")


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """The removed and the added lines of a unified diff, without their markers."""
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
    return removed, added


def classify(diff: str) -> str | None:
    """The rule that makes this mutant equivalent, or None."""
    removed, added = changed_lines(diff)
    if not removed or len(removed) != len(added):
        return None
    pairs = [(old, new) for old, new in zip(removed, added, strict=True) if old != new]
    changed = [_changed_string(old, new) for old, new in pairs]
    parts = [part for part in changed if part is not None]
    if not parts or len(parts) != len(changed):
        return None
    if not all(_case_only_sql(old, new) for old, new, _ in parts):
        return None
    if len(parts) == 1 and parts[0][2] is not None and _ROW_KEY.search(parts[0][2]):
        return "row-key-case"
    # A changed Python string must be SQL itself; the lines inside a triple-quoted one are
    # clauses of a statement, whose first line says it is SQL.
    strings = [old for old, _, before in parts if before is not None]
    lines = [old for old, _, before in parts if before is None]
    if all(_SQL.search(old) for old in strings) and (
        not lines or any(_SQL.search(old) for old in lines)
    ):
        return "sql-case"
    return None


def _changed_string(old: str, new: str) -> tuple[str, str, str | None] | None:
    """The one double-quoted string that differs between two lines, with the text before
    it; or the whole lines, with None, when they have none (lines inside a triple-quoted
    string). None if the code differs or more than one string does."""
    old_strings, new_strings = _STRING.findall(old), _STRING.findall(new)
    if not old_strings and not new_strings:
        return old, new, None
    if _STRING.sub('""', old) != _STRING.sub('""', new) or len(old_strings) != len(new_strings):
        return None
    differ = [
        (index, a, b)
        for index, (a, b) in enumerate(zip(old_strings, new_strings, strict=True))
        if a != b
    ]
    if len(differ) != 1:
        return None
    index, a, b = differ[0]
    before = _STRING.split(old)[: index + 1]
    return a, b, '""'.join(before)


def _case_only_sql(old: str, new: str) -> bool:
    return old.lower() == new.lower() and _LITERAL.findall(old) == _LITERAL.findall(new)
