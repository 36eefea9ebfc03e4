"""Released migrations (``db/migrations/released.toml``): each revision once committed, with the
sha256 of its file's bytes. A released migration is never rewritten: a database that ran it keeps
what it made, and Alembic never runs a revision twice (audit U1: events 0006 was rewritten under
its revision id, and the databases made by the first version never got its table).

``problems`` compares the manifest with the migration files (tests/unit/test_released_migrations.py
runs it; so does ``python -m ops.db.released``), and reads each file's ``revision`` and
``down_revision`` without importing it: ids unique per service, every ``down_revision`` known,
one head per service. ``python -m ops.db.released --add`` appends the revisions the manifest
does not list yet, and never changes a line already in it.

The helpers released migrations call (``apps/common/migration_helpers.py``) are listed too, one
line per top-level definition (function or constant) with the sha256 of its source: a released
migration that calls one runs it again on every fresh database, so it must make what it made.
A new definition is listed by ``--add`` like a new revision.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ops.paths import APPS_DIR, DB_DIR

MIGRATIONS_DIR = DB_DIR / "migrations"
MANIFEST_PATH = MIGRATIONS_DIR / "released.toml"
HELPERS_PATH = APPS_DIR / "common" / "migration_helpers.py"
# The manifest's table of the helpers' definitions (no service has this name).
HELPERS = "helpers"
ADD_COMMAND = "python -m ops.db.released --add"

HEADER = """\
# Released migrations: each revision of each service once committed, with the sha256 of its
# file's bytes. tests/unit/test_released_migrations.py fails when a listed file changes, goes
# or is renamed, or when a migration file is not listed.
#
# A released migration is never rewritten: a database that ran it keeps what it made, and
# Alembic never runs a revision again. A change is a new revision (events 0007 mends the one
# time one was rewritten, audit U1). The helpers a released migration calls
# (apps/common/migration_helpers.py) are frozen the same way: `helpers.<name>` lists each of
# its top-level definitions (function or constant) with the sha256 of its source. A
# different table is a new helper; a new definition is listed by --add.
#
# A new revision is listed by `python -m ops.db.released --add` (it appends, and changes no
# line here), in the commit that adds the migration. Until that commit is made, its line is
# yours: delete it and add it again after editing the migration.
#
# <service>.<revision> = { file = "<file in db/migrations/<service>/versions>", sha256 = "..." }
# helpers.<name> = { file = "migration_helpers.py", sha256 = "<of the definition's source>" }

"""


@dataclass(frozen=True)
class Migration:
    service: str
    revision: str
    down_revisions: tuple[str, ...]
    path: Path

    @property
    def sha256(self) -> str:
        return _sha256(self.path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class HelperDefinition:
    """A top-level function or constant of the migration helpers, with its source's sha256."""

    name: str
    sha256: str


def read_helpers(helpers_path: Path) -> list[HelperDefinition]:
    """Every top-level function, class, constant and import of ``helpers_path``: a definition
    by its name, an import as ``import_<12 hex digits of its text's sha256>`` (a changed
    import is a listed one gone). Other statements are :func:`helper_statement_problems`'."""
    return _read_helpers(helpers_path)[0]


def helper_statement_problems(helpers_path: Path) -> list[str]:
    """Top-level statements of the helpers that the manifest cannot freeze one by one: one that
    is neither a definition (``def``, ``class``, ``NAME = ...``) nor an import nor the module's
    docstring (``MAX_KEY_LENGTH += 100``, ``sa.String = sa.Text``, an ``if`` block: each would
    change what released migrations make), and a name defined twice (audit s20c)."""
    return _read_helpers(helpers_path)[1]


def _read_helpers(helpers_path: Path) -> tuple[list[HelperDefinition], list[str]]:
    source = helpers_path.read_text()
    lines = source.splitlines(keepends=True)
    definitions: list[HelperDefinition] = []
    problems: list[str] = []
    body = ast.parse(source, filename=str(helpers_path)).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the module's docstring
    for node in body:
        # With its decorators: they change what the definition does too.
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        text = "".join(lines[first - 1 : node.end_lineno])
        digest = hashlib.sha256(text.encode()).hexdigest()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [f"import_{digest[:12]}"]
        else:
            problems.append(
                f"{helpers_path.name}, line {node.lineno}: `{lines[node.lineno - 1].strip()}`: "
                "only definitions (def, class, NAME = ...) and imports stand at the top level "
                "of the migration helpers (each is frozen on its own); a different table is a "
                "new helper"
            )
            continue
        for name in names:
            if any(d.name == name for d in definitions):
                problems.append(
                    f"{helpers_path.name}, line {node.lineno}: {name} is defined again: a "
                    "released migration calls the first; a different table is a new helper"
                )
            definitions.append(HelperDefinition(name, digest))
    return definitions, problems


@dataclass(frozen=True)
class Released:
    service: str
    revision: str
    file: str
    sha256: str


def _literal(tree: ast.Module, name: str) -> object:
    """The value of the top-level ``name = <literal>``; ``...`` when there is none."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(value)
            except ValueError:
                return ...
    return ...


def read_migrations(
    migrations_dir: Path,
) -> tuple[list[Migration], dict[tuple[str, str], Path], list[str]]:
    """Every migration of every service (a folder with ``env.py``); every file of theirs, by
    service and name, read or not; and what is wrong reading one (Python that does not parse,
    no literal ``revision``, a ``down_revision`` neither a string, a tuple of strings nor None)."""
    migrations: list[Migration] = []
    files: dict[tuple[str, str], Path] = {}
    problems: list[str] = []
    for service_dir in sorted(p for p in migrations_dir.iterdir() if (p / "env.py").exists()):
        for path in sorted((service_dir / "versions").glob("*.py")):
            if path.name.startswith("_"):
                continue
            files[service_dir.name, path.name] = path
            shown = path.relative_to(migrations_dir)
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except SyntaxError as error:
                problems.append(f"{shown}: not Python ({error.msg}, line {error.lineno})")
                continue
            revision = _literal(tree, "revision")
            down = _literal(tree, "down_revision")
            if not isinstance(revision, str) or not revision:
                problems.append(f'{shown}: no `revision = "..."` string at the top level')
                continue
            if down is None:
                downs: tuple[str, ...] = ()
            elif isinstance(down, str):
                downs = (down,)
            elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
                downs = tuple(down)
            else:
                problems.append(
                    f"{shown}: `down_revision` must be a string, a tuple of strings or None"
                )
                continue
            migrations.append(Migration(service_dir.name, revision, downs, path))
    return migrations, files, problems


def read_manifest(manifest_path: Path) -> list[Released]:
    data = tomllib.loads(manifest_path.read_text())
    released = []
    for service, revisions in data.items():
        if not isinstance(revisions, dict):
            raise ValueError(f"{manifest_path}: {service} is not a table of revisions")
        for revision, entry in revisions.items():
            if not (
                isinstance(entry, dict)
                and set(entry) == {"file", "sha256"}
                and all(isinstance(v, str) for v in entry.values())
            ):
                raise ValueError(
                    f"{manifest_path}: {service}.{revision} must be "
                    '{ file = "...", sha256 = "..." }'
                )
            released.append(Released(service, revision, entry["file"], entry["sha256"]))
    return released


def graph_problems(migrations: list[Migration]) -> list[str]:
    """Revision ids unique per service, every ``down_revision`` a revision of the same service,
    one head per service (``upgrade head`` needs one)."""
    problems = []
    by_service: dict[str, dict[str, list[Migration]]] = {}
    for m in migrations:
        by_service.setdefault(m.service, {}).setdefault(m.revision, []).append(m)
    for service, revisions in sorted(by_service.items()):
        for revision, files in sorted(revisions.items()):
            if len(files) > 1:
                names = ", ".join(m.path.name for m in files)
                problems.append(
                    f"{service}: revision {revision!r} is in more than one file: {names}"
                )
        pointed_at = set()
        for files in revisions.values():
            for m in files:
                for down in m.down_revisions:
                    pointed_at.add(down)
                    if down not in revisions:
                        problems.append(
                            f"{service}/versions/{m.path.name}: down_revision {down!r} is no "
                            f"revision of {service}"
                        )
        heads = sorted(set(revisions) - pointed_at)
        if len(heads) != 1:
            problems.append(f"{service}: {len(heads)} heads ({', '.join(heads)}), not one")
    return problems


def helper_problems(released: list[Released], helpers_path: Path) -> list[str]:
    """Each listed helper definition changed or gone, and each one not listed."""
    shown = helpers_path.name
    current = {d.name: d for d in read_helpers(helpers_path)}
    found = helper_statement_problems(helpers_path)
    for entry in released:
        definition = current.get(entry.revision)
        if definition is None:
            found.append(
                f"{shown}: {entry.revision} is gone, and released migrations may call it: "
                "restore it as it was"
            )
        elif definition.sha256 != entry.sha256:
            found.append(
                f"{shown}: {entry.revision} changed after released migrations called it (a "
                "fresh database would get what the databases that ran them never got). "
                "Restore it (git checkout -- the file), and write a new helper for the change"
            )
    listed = {entry.revision for entry in released}
    for name in current:
        if name not in listed:
            found.append(
                f"{shown}: {name} is not in {MANIFEST_PATH.name}: list it with `{ADD_COMMAND}` "
                "in the commit that adds it"
            )
    return found


def problems(
    migrations_dir: Path = MIGRATIONS_DIR,
    manifest_path: Path = MANIFEST_PATH,
    helpers_path: Path = HELPERS_PATH,
) -> list[str]:
    """Every difference between the released manifest and the migration files or the migration
    helpers, and every problem of the revision graph; empty when all is well."""
    migrations, files, found = read_migrations(migrations_dir)
    found += graph_problems(migrations)
    by_key = {(m.service, m.revision): m for m in migrations}
    listed = set()
    manifest = read_manifest(manifest_path)
    found += helper_problems([e for e in manifest if e.service == HELPERS], helpers_path)
    for entry in (e for e in manifest if e.service != HELPERS):
        listed.add((entry.service, entry.revision))
        where = f"{entry.service}/versions/{entry.file}"
        path = files.get((entry.service, entry.file))
        moved = by_key.get((entry.service, entry.revision))
        if path is not None:
            if _sha256(path) != entry.sha256:
                found.append(
                    f"{where} changed after it was released ({entry.service} {entry.revision}): "
                    "released migrations are never rewritten (a database that ran it keeps "
                    "what it made). Restore it (git checkout -- the file) and make a new "
                    "revision for the change"
                )
        elif moved is not None:
            found.append(
                f"{entry.service} {entry.revision} was released as {where}, and is now "
                f"{entry.service}/versions/{moved.path.name}: a released migration is never "
                "renamed; rename it back"
            )
        else:
            found.append(
                f"{entry.service} {entry.revision} ({where}) is released but its file is gone: "
                "a released migration stays, as it is, under its name; restore it"
            )
    for m in migrations:
        if (m.service, m.revision) not in listed:
            found.append(
                f"{m.service}/versions/{m.path.name} ({m.service} {m.revision}) is not in "
                f"{manifest_path.name}: list it with `{ADD_COMMAND}` in the commit that adds it"
            )
    return found


def manifest_line(migration: Migration) -> str:
    return (
        f'{migration.service}.{migration.revision} = {{ file = "{migration.path.name}", '
        f'sha256 = "{migration.sha256}" }}\n'
    )


def helper_line(helpers_path: Path, definition: HelperDefinition) -> str:
    return (
        f'{HELPERS}.{definition.name} = {{ file = "{helpers_path.name}", '
        f'sha256 = "{definition.sha256}" }}\n'
    )


def add_unlisted(
    migrations_dir: Path = MIGRATIONS_DIR,
    manifest_path: Path = MANIFEST_PATH,
    helpers_path: Path = HELPERS_PATH,
) -> list[str]:
    """Append the migrations and helper definitions the manifest does not list (a new manifest
    gets the header first); the lines already there are left as they are. Returns what was
    added ("events 0008", "helpers create_outbox")."""
    migrations, _, _ = read_migrations(migrations_dir)
    listed = (
        {(e.service, e.revision) for e in read_manifest(manifest_path)}
        if manifest_path.exists()
        else set()
    )
    new = [m for m in migrations if (m.service, m.revision) not in listed]
    new_helpers = [d for d in read_helpers(helpers_path) if (HELPERS, d.name) not in listed]
    text = manifest_path.read_text() if manifest_path.exists() else ""
    start = HEADER if not text else ("" if text.endswith("\n") else "\n")
    with manifest_path.open("a") as manifest:
        manifest.write(
            start
            + "".join(manifest_line(m) for m in new)
            + "".join(helper_line(helpers_path, d) for d in new_helpers)
        )
    return [f"{m.service} {m.revision} ({m.path.name})" for m in new] + [
        f"{HELPERS} {d.name}" for d in new_helpers
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--add", action="store_true", help="append the revisions not listed yet, then check"
    )
    args = parser.parse_args(argv)
    if args.add:
        for added in add_unlisted():
            print(f"added {added}")
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
