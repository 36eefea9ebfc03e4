"""Run the plain SQL files of ``db/`` the way psql would.

The files in ``db/schemas`` and ``db/fdw`` are written for psql (``psql -v name=value -f file``),
so a DBA can read and run them by hand. This module understands the subset they use:
``:'name'`` (a quoted literal), ``:"name"`` (a quoted identifier), ``:name`` (the raw value),
statements ending in ``;`` and ``\\gexec`` (run the query, then run each value it returns as a
statement). Quotes, dollar quotes and comments are respected.

Convergence files (``db/schemas``, ``db/fdw``) are made of ``\\gexec`` queries only: each returns
the statements that repair one kind of difference, each statement led by a ``-- <where>:
<difference>`` comment line (a comment alone is a difference left to a person).
:func:`converge_file` runs such a file: it always runs the queries, and runs the statements they
return only when applying, so a dry run (and ``rose db check``) changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger("rose.sql")


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


# Where something other than plain text may start: comments, quotes, variables, ends, commands.
_SPECIAL = re.compile(r"--|/\*|['\"$:;\\]")


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
        special = _SPECIAL.search(sql, i)
        if special is None or special.start() > i:  # a run of plain text, copied at once
            end = length if special is None else special.start()
            current.append(sql[i:end])
            i = end
            continue
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


# What a difference is about, for the summary: the first "<kind> <name>" its line names.
_SUBJECT = re.compile(
    r"\b(materialized view|foreign table|foreign server|export view|view|table|sequence|schema|"
    r"database|role|user mapping for \S+ on)\s+([\w.\"$]+)"
)


@dataclass(frozen=True)
class Change:
    """One difference from the declaration, and the SQL that repairs it ("" if none does)."""

    line: str
    sql: str

    @classmethod
    def parse(cls, generated: str) -> Change:
        first, _, rest = generated.partition("\n")
        if not first.startswith("-- "):
            raise ValueError(f"generated statement without its '-- <difference>' line: {first}")
        return cls(first[3:].strip(), rest.strip())

    @property
    def where(self) -> str:
        return self.line.split(": ", 1)[0]

    @property
    def pending(self) -> bool:
        """A difference that resolves itself later (an export view its migrations will create)."""
        return ": pending: " in self.line

    @property
    def action(self) -> str:
        if not self.sql:
            return "pending" if self.pending else "left"
        return "created" if self.sql.upper().startswith("CREATE") else "changed"

    @property
    def subject(self) -> str:
        match = _SUBJECT.search(self.line)
        return f"{self.where}: {match[1]} {match[2]}" if match else self.line

    def text(self) -> str:
        """The statement as --dry-run prints it (passwords hidden), with its comment."""
        return f"-- {self.line}" + (f"\n{redact(self.sql)};" if self.sql else "")


class ConvergeError(RuntimeError):
    pass


def converge_file(
    connection: psycopg.Connection,
    path: Path,
    variables: Mapping[str, str],
    *,
    apply: bool,
) -> list[Change]:
    """Run a convergence file: its queries always, the statements they return only if ``apply``.

    Each returned statement runs as one simple query, so the several statements of one repair
    (drop and create a foreign table, say) commit together or not at all."""
    changes: list[Change] = []
    for statement in parse(path.read_text(), variables):
        if not statement.gexec:
            raise ValueError(f"{path.name}: a convergence file holds \\gexec queries only")
        for (generated,) in connection.execute(statement.sql).fetchall():
            change = Change.parse(generated)
            changes.append(change)
            if apply and change.sql:
                logger.info("%s: %s", path.name, redact(change.sql))
                try:
                    connection.execute(generated)
                except psycopg.Error as exc:
                    message = str(exc).strip().splitlines()[0]
                    # The server's detail says what the message does not (for DROP ROLE: in
                    # which databases the objects that still depend on the role are).
                    detail = " ".join((exc.diag.message_detail or "").split())
                    if detail:
                        message += f" ({detail.rstrip('.')})"
                    raise ConvergeError(f"{change.line}: {message}") from exc
    return changes


_PASSWORD = re.compile(r"\b(password\s+)'(?:[^']|'')*'", re.IGNORECASE)


def redact(statement: str) -> str:
    """The statement with every password literal replaced by '***'."""
    return _PASSWORD.sub(r"\1'***'", statement)
