"""No SQL text is built by string formatting anywhere in the package.

Values reach Postgres only as query parameters. The detector walks each module's syntax tree
(not its text, so comments and docstrings do not count) and reports string formatting applied
to text that contains an SQL keyword: f-strings, ``%`` formatting, ``.format()``, ``+``
concatenation with anything but another constant, and formatted text handed to ``execute()``.
Two things are allowed: psycopg.sql composition (``sql.SQL("...").format(...)`` formats an
SQL object, not a str), and in ``pgqueue/_queries.py`` concatenations whose every part is a
string constant or a module-level constant of that file.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import pgqueue

PACKAGE = Path(pgqueue.__file__).parent
QUERIES = PACKAGE / "_queries.py"

SQL_KEYWORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|FROM|WHERE)\b")
EXECUTE_METHODS = frozenset({"execute", "executemany", "copy", "stream"})


@dataclass(frozen=True)
class Finding:
    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound to string constants (or to concatenations of them)."""
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        text = constant_text(value, constants)
        if isinstance(target, ast.Name) and text is not None:
            constants[target.id] = text
    return constants


def constant_text(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The text of a string constant, a known constant name or a ``+`` of those; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = constant_text(node.left, constants), constant_text(node.right, constants)
        if left is not None and right is not None:
            return left + right
    return None


def literal_text(node: ast.expr, constants: dict[str, str]) -> str:
    """Every piece of literal text inside ``node`` (f-string parts, constants, known names)."""
    parts = []
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            parts.append(child.value)
        elif isinstance(child, ast.Name) and child.id in constants:
            parts.append(constants[child.id])
    return " ".join(parts)


def has_sql(text: str) -> bool:
    return SQL_KEYWORD.search(text) is not None


def find_sql_formatting(
    source: str, *, constant_concatenation_allowed: bool = False
) -> list[Finding]:
    """Every place in ``source`` where SQL text is built by string formatting."""
    tree = ast.parse(source)
    constants = module_constants(tree)
    findings: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            if has_sql(literal_text(node, constants)):
                findings.append(Finding(node.lineno, "f-string with SQL"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            left = constant_text(node.left, constants)
            if left is not None and has_sql(left):
                findings.append(Finding(node.lineno, "% formatting of SQL"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            whole = constant_text(node, constants)
            if whole is None and has_sql(literal_text(node, constants)):
                findings.append(Finding(node.lineno, "SQL concatenated with a non-constant"))
            elif whole is not None and has_sql(whole) and not constant_concatenation_allowed:
                findings.append(Finding(node.lineno, "SQL concatenated outside _queries.py"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, node.func.value
            if method == "format":
                text = constant_text(receiver, constants)
                if text is not None and has_sql(text):
                    findings.append(Finding(node.lineno, ".format() of SQL"))
            elif method in EXECUTE_METHODS and node.args:
                query = node.args[0]
                formatted = isinstance(query, (ast.JoinedStr, ast.BinOp)) or (
                    isinstance(query, ast.Call)
                    and isinstance(query.func, ast.Attribute)
                    and query.func.attr == "format"
                    and constant_text(query.func.value, constants) is not None
                )
                if formatted and constant_text(query, constants) is None:
                    findings.append(Finding(node.lineno, f"formatted text passed to {method}()"))
    return findings


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_sql_is_built_by_string_formatting(path: Path) -> None:
    findings = find_sql_formatting(
        path.read_text(encoding="utf-8"), constant_concatenation_allowed=path == QUERIES
    )
    assert [str(finding) for finding in findings] == []


def test_the_modules_are_found() -> None:
    names = {path.name for path in MODULES}
    assert {"_queries.py", "queue.py", "worker.py", "admin.py"} <= names


BAD_EXAMPLES = """
TABLE = "pgqueue.jobs"
QUERY = "SELECT * FROM pgqueue.jobs WHERE name = '%s'"

def bad(conn, name, column):
    conn.execute(f"SELECT * FROM pgqueue.jobs WHERE name = '{name}'")
    conn.execute("DELETE FROM pgqueue.jobs WHERE id = %d" % 5)
    conn.execute("UPDATE pgqueue.jobs SET name = '{}'".format(name))
    conn.execute("SELECT " + column + " FROM pgqueue.jobs")
    conn.execute(QUERY % name)
    conn.execute(f"SELECT * FROM {TABLE}")
    conn.execute("select 1 " + name)
"""

GOOD_EXAMPLES = """
from psycopg import sql

QUERY = "SELECT * FROM pgqueue.jobs WHERE name = %s"

def good(conn, name, column):
    conn.execute(QUERY, (name,))
    conn.execute(sql.SQL("SELECT {} FROM pgqueue.jobs").format(sql.Identifier(column)))
    message = f"job {name!r} is not valid; select another one"
    other = "%s jobs" % len(name)
    raise ValueError("cannot delete {}".format(name))
"""


def test_the_detector_finds_every_kind_of_sql_formatting() -> None:
    findings = find_sql_formatting(BAD_EXAMPLES)
    kinds = [finding.what for finding in findings]
    assert "f-string with SQL" in kinds
    assert "% formatting of SQL" in kinds
    assert ".format() of SQL" in kinds
    assert "SQL concatenated with a non-constant" in kinds
    assert "formatted text passed to execute()" in kinds
    flagged_lines = {finding.line for finding in findings}
    # Every execute() line of bad() is flagged (lines 6 to 12 of the example).
    assert flagged_lines >= set(range(6, 13))


def test_the_detector_allows_parameters_and_psycopg_sql_composition() -> None:
    assert find_sql_formatting(GOOD_EXAMPLES) == []


def test_constant_concatenation_is_allowed_only_in_the_queries_module() -> None:
    source = 'COLUMNS = "id, name"\nGET = "SELECT " + COLUMNS + " FROM pgqueue.jobs"\n'
    assert find_sql_formatting(source, constant_concatenation_allowed=True) == []
    assert [f.what for f in find_sql_formatting(source)] == [
        "SQL concatenated outside _queries.py",
        "SQL concatenated outside _queries.py",
    ]
