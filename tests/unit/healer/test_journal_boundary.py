"""Only `healer/journal/` talks to the journal: every other module of the healer calls its
functions, and runs no named query and holds no SQL about the journal's tables, functions or
channels. The SQL of rule steps (`healer/steps/`) is the operator's, for their own databases,
and is never a literal of ours."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import healer
from healer.journal import channels, migrate
from healer.journal.queries import load

HEALER = Path(healer.__file__).parent
JOURNAL = HEALER / "journal"


def journal_names() -> frozenset[str]:
    """The tables and functions the migrations create, the bookkeeping table, the channels."""
    names = {"taskmedic_migrations", *channels.ALL}
    for m in migrate.migrations():
        names.update(re.findall(r"(?i)\bcreate\s+table\s+(\w+)", m.sql))
        names.update(re.findall(r"(?i)\bcreate\s+(?:or\s+replace\s+)?function\s+(\w+)", m.sql))
    return frozenset(n.lower() for n in names)


NAMES = journal_names()
_NAME = "|".join(sorted(NAMES))
# A statement: it starts like one.
_STATEMENT = re.compile(
    r"(?i)^\s*(select|insert|update|delete|with|listen|unlisten|notify|create|alter|drop"
    r"|truncate|copy|lock|call)\b"
)
# A journal object where SQL names one: after FROM, INTO, JOIN, UPDATE, TABLE, LISTEN or
# NOTIFY, called as a function, or notified.
_REFERENCE = re.compile(
    rf"(?i)\b(?:from|into|join|update|table|listen|notify)\s+(?:only\s+)?(?:public\.)?"
    rf"\"?({_NAME})\b|\b({_NAME})\s*\(|pg_notify\(\s*'({_NAME})'"
)
# In prose a keyword is lower case; in SQL it is written upper case.
_SQL_REFERENCE = re.compile(
    rf"\b(?:FROM|INTO|JOIN|UPDATE|TABLE|LISTEN|NOTIFY)\s+(?:ONLY\s+)?(?:public\.)?"
    rf"\"?({_NAME})\b"
)


def journal_sql(text: str) -> bool:
    """Whether a literal text is SQL about the journal."""
    if _SQL_REFERENCE.search(text) or re.search(rf"(?i)pg_notify\(\s*'({_NAME})'", text):
        return True
    return bool(_STATEMENT.match(text) and _REFERENCE.search(text))


def _static_text(node: ast.AST) -> str | None:
    """The text of a literal: a string, an f-string ({} for its values), or a sum of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
            for v in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _static_text(node.left), _static_text(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def findings(source: str, origin: str) -> list[str]:
    """Every place in `source` that talks to the journal on its own, as `origin:line: why`."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "q") or (
                isinstance(f, ast.Attribute) and f.attr == "q"
            ):
                out.append(f"{origin}:{line}: runs a named journal query, q(...)")
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imported = {f"{module}.{a.name}" for a in node.names} | {module}
            if "healer.journal.queries" in imported:
                out.append(f"{origin}:{line}: imports healer.journal.queries")
        if isinstance(node, ast.Import) and any(
            a.name == "healer.journal.queries" for a in node.names
        ):
            out.append(f"{origin}:{line}: imports healer.journal.queries")
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a docstring: prose, which may name what the code does
        text = _static_text(node)
        if text is not None:
            if journal_sql(text):
                out.append(f"{origin}:{line}: SQL about the journal: {text.strip()[:60]!r}")
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return out


def test_no_module_outside_the_journal_talks_to_the_journal() -> None:
    outside = [p for p in sorted(HEALER.rglob("*.py")) if JOURNAL not in p.parents and p != JOURNAL]
    assert len(outside) > 20  # the scan found the healer's modules
    found = [f for p in outside for f in findings(p.read_text(), str(p.relative_to(HEALER)))]
    assert found == [], "\n".join(["SQL of the journal belongs in healer/journal/:", *found])


def test_the_scan_flags_journal_sql_and_leaves_the_operators_sql_alone() -> None:
    """The check is not vacuous: what it must find, and what it must leave alone."""
    flagged = [
        'cur = await conn.execute(q("list_actions"), params)',
        "from healer.journal.queries import q",
        "from healer.journal import queries",
        'conn.execute("SELECT 1 FROM actions WHERE id = %s", (1,))',
        'conn.execute("select id from actions where id = %s", (1,))',
        'conn.execute(f"SELECT {cols} FROM steps WHERE action_id = %s", (1,))',
        'sql = "SELECT id " + "FROM log_chunks"',
        "conn.execute(\"UPDATE actions SET state = 'failed' WHERE id = 1\")",
        'conn.execute("DELETE FROM log_chunks WHERE at < now()")',
        'conn.execute("INSERT INTO events (actor, kind) VALUES (%s, %s)", ("a", "b"))',
        'conn.execute("LISTEN taskmedic_log")',
        "conn.execute(\"SELECT pg_notify('taskmedic_state', '1')\")",
        "conn.execute(\"SELECT taskmedic_decide(NULL, 0, 0, NULL, 0, false, '', '')\")",
        'TAIL = " JOIN alerts AS al ON al.id = a.alert_id"',
    ]
    for code in flagged:
        assert findings(code, "x.py"), code
    left_alone = [
        # healer/steps/sql.py: a session setting on the operator's database, then their query
        "await cur.execute(\"SELECT set_config('statement_timeout', %s, true)\", (t,))",
        "await cur.execute(query, params)",
        'cur.execute("SET SESSION max_statement_time = %s", (t,))',
        'why = "Update the steps of a run from the actions the executor took"',
        '"""The executor wakes on `LISTEN taskmedic_actions`."""',  # a docstring
        "ok |= _eq(token, self._token)",
        'log.info("pruned the log chunks of %d actions", n)',
    ]
    for code in left_alone:
        assert not findings(code, "x.py"), code


def test_every_named_query_is_used_once_written_once() -> None:
    """No two named queries are the same text, and each is run by a journal module."""
    queries = load()
    texts: dict[str, list[str]] = {}
    for name, text in queries.items():
        texts.setdefault(" ".join(text.split()), []).append(name)
    assert [names for names in texts.values() if len(names) > 1] == []
    source = "".join(p.read_text() for p in JOURNAL.glob("*.py"))
    run = set(re.findall(r"\bq\(\"([a-z0-9_]+)\"\)", source))
    assert set(queries) - run == set(), "named queries no journal module runs"
