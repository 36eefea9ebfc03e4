"""Run the plain SQL files of ``db/`` the way psql would.

The files in ``db/schemas`` and ``db/fdw`` are written for psql (``psql -v name=value -f file``),
so a DBA can read and run them by hand. This module understands the subset they use:
``:'name'`` (a quoted literal), ``:"name"`` (a quoted identifier), ``:name`` (the raw value),
statements ending in ``;`` and ``\\gexec`` (run the query, then run each value it returns as a
statement). Quotes, dollar quotes and comments are respected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger("rose.sql")

REPO_ROOT = Path(__file__).resolve().parent.parent
DB_DIR = REPO_ROOT / "db"


@dataclass(frozen=True)
class Statement:
    sql: str
    gexec: bool


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _identifier_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return end


def parse(sql: str, variables: Mapping[str, str]) -> list[Statement]:
    statements: list[Statement] = []
    current: list[str] = []
    i = 0
    length = len(sql)

    def finish(gexec: bool) -> None:
        text = "".join(current).strip()
        current.clear()
        if text:
            statements.append(Statement(text, gexec))

    def variable(name: str) -> str:
        if name not in variables:
            raise KeyError(f"SQL variable :{name} is not set")
        return variables[name]

    while i < length:
        char = sql[i]
        pair = sql[i : i + 2]
        if pair == "--":
            end = sql.find("\n", i)
            i = length if end == -1 else end
            continue
        if pair == "/*":
            end = sql.find("*/", i + 2)
            if end == -1:
                raise ValueError("unterminated /* comment")
            i = end + 2
            continue
        if char in ("'", '"'):
            end = i + 1
            while True:
                end = sql.find(char, end)
                if end == -1:
                    raise ValueError(f"unterminated {char} quote")
                if sql[end + 1 : end + 2] == char:  # doubled quote inside the string
                    end += 2
                    continue
                break
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        if char == "$":
            tag_end = sql.find("$", i + 1)
            tag = sql[i : tag_end + 1] if tag_end != -1 else ""
            if tag and (tag == "$$" or tag[1:-1].replace("_", "a").isalnum()):
                close = sql.find(tag, tag_end + 1)
                if close == -1:
                    raise ValueError(f"unterminated dollar quote {tag}")
                current.append(sql[i : close + len(tag)])
                i = close + len(tag)
                continue
        if char == ":" and pair != "::" and (i == 0 or sql[i - 1] != ":"):
            following = sql[i + 1 : i + 2]
            if following in ("'", '"'):
                close = sql.find(following, i + 2)
                name = sql[i + 2 : close]
                value = variable(name)
                current.append(quote_literal(value) if following == "'" else quote_ident(value))
                i = close + 1
                continue
            end = _identifier_end(sql, i + 1)
            name = sql[i + 1 : end]
            if name and name in variables:
                current.append(variables[name])
                i = end
                continue
        if char == ";":
            finish(gexec=False)
            i += 1
            continue
        if char == "\\":
            end = _identifier_end(sql, i + 1)
            command = sql[i + 1 : end]
            if command != "gexec":
                raise ValueError(f"unsupported psql command \\{command}")
            finish(gexec=True)
            i = end
            continue
        current.append(char)
        i += 1
    finish(gexec=False)
    return statements


def run_sql_file(
    connection: psycopg.Connection, path: Path, variables: Mapping[str, str]
) -> list[str]:
    """Run a psql-style file on an autocommit connection. Returns the statements executed."""
    executed: list[str] = []
    for statement in parse(path.read_text(), variables):
        cursor = connection.execute(statement.sql)
        if not statement.gexec:
            executed.append(statement.sql)
            continue
        rows = cursor.fetchall()
        for row in rows:
            for generated in row:
                if generated is None:
                    continue
                logger.info("%s: %s", path.name, _redact(generated))
                connection.execute(generated)
                executed.append(generated)
    return executed


def _redact(statement: str) -> str:
    marker = "PASSWORD "
    upper = statement.upper()
    if marker in upper:
        return statement[: upper.index(marker) + len(marker)] + "'***'"
    if "password '" in statement:
        return statement.split("password '")[0] + "password '***')"
    return statement
