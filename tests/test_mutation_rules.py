"""The rules that call a surviving mutant equivalent without a review (tests/mutation)."""

from __future__ import annotations

import pytest

from tests.mutation.equivalent import classify


def diff(removed: list[str], added: list[str]) -> str:
    """A unified diff as ``mutmut show`` prints one."""
    lines = ["--- src/procgate/stores/sqlite.py", "+++ src/procgate/stores/sqlite.py", "@@"]
    return "\n".join([*lines, *(f"-{line}" for line in removed), *(f"+{line}" for line in added)])


SELECT = "    db.execute(\"SELECT id FROM jobs WHERE status = 'queued' LIMIT ?\", (n,))"
UPDATE = '    db.execute("UPDATE jobs SET status = ? WHERE id = ?", ("queued", job_id))'


@pytest.mark.parametrize(
    ("removed", "added", "rule"),
    [
        pytest.param(
            [SELECT],
            [
                SELECT.replace(
                    "SELECT id FROM jobs WHERE status", "select id from jobs where status"
                ).replace("LIMIT", "limit")
            ],
            "sql-case",
            id="sql-lower",
        ),
        pytest.param(
            [SELECT],
            [SELECT.replace("id FROM jobs", "ID FROM JOBS")],
            "sql-case",
            id="sql-upper-names",
        ),
        pytest.param([SELECT], [SELECT.upper()], None, id="a-quoted-literal-changed"),
        pytest.param(
            [UPDATE], [UPDATE.replace('"queued"', '"QUEUED"')], None, id="a-parameter-changed"
        ),
        pytest.param(
            [UPDATE],
            [UPDATE.replace("UPDATE jobs SET", "update jobs set").replace("WHERE", "where")],
            "sql-case",
            id="sql-beside-a-parameter",
        ),
        pytest.param(
            ['    raise StoreError("cannot open")'],
            ['    raise StoreError("CANNOT OPEN")'],
            None,
            id="not-sql",
        ),
        pytest.param(["    return a and b"], ["    return a or b"], None, id="code"),
        pytest.param(["    x = s.lower()"], ["    x = s.upper()"], None, id="a-method-swapped"),
        pytest.param(
            ["        CREATE TABLE jobs (", "            id TEXT PRIMARY KEY,"],
            ["        create table jobs (", "            id text primary key,"],
            "sql-case",
            id="triple-quoted-lines",
        ),
        pytest.param([SELECT], [], None, id="a-line-removed"),
        pytest.param(
            ['        where.append("command = ?")'],
            ['        where.append("COMMAND = ?")'],
            "sql-case",
            id="a-condition",
        ),
        pytest.param(
            ['            "AND owner IS NOT NULL"'],
            ['            "and owner is not null"'],
            "sql-case",
            id="a-clause",
        ),
        pytest.param(['    table = "jobs"'], ['    table = "JOBS"'], None, id="a-bare-name"),
        pytest.param(
            ['            b"".join(chunks.get((row["id"], 0), ())),'],
            ['            b"".join(chunks.get((row["ID"], 0), ())),'],
            "row-key-case",
            id="a-row-key",
        ),
        pytest.param(
            ['    return JobPage(jobs, str(rows[-1]["seq"]) if more else None)'],
            ['    return JobPage(jobs, str(rows[-1]["SEQ"]) if more else None)'],
            "row-key-case",
            id="a-key-of-the-last-row",
        ),
        pytest.param(['    return job["id"]'], ['    return job["ID"]'], None, id="a-dict-key"),
        pytest.param(
            ['    return row["id"]'], ['    return row["XXidXX"]'], None, id="a-row-key-changed"
        ),
        pytest.param(
            [SELECT, UPDATE],
            [SELECT.lower(), UPDATE.replace('"queued"', '"QUEUED"')],
            None,
            id="two-lines-one-not-equivalent",
        ),
    ],
)
def test_equivalence_rules(removed: list[str], added: list[str], rule: str | None) -> None:
    """A case-only change to SQL is ``sql-case``; anything touching a quoted literal, a
    parameter, code or a string that is not SQL is left for a person."""
    assert classify(diff(removed, added)) == rule
