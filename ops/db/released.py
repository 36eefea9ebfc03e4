"""Released migrations (``db/migrations/released.toml``): each revision once committed, with the
sha256 of its file's bytes. A released migration is never rewritten: a database that ran it keeps
what it made, and Alembic never runs a revision twice (audit U1: events 0006 was rewritten under
its revision id, and the databases made by the first version never got its table).

``problems`` compares the manifest with the migration files (tests/unit/test_released_migrations.py
runs it; so does ``python -m ops.db.released``), and reads each file's ``revision`` and
``down_revision`` without importing it: ids unique per service, every ``down_revision`` known,
one head per service. ``python -m ops.db.released --add`` appends the revisions the manifest
does not list yet, and never changes a line already in it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ops.paths import DB_DIR

MIGRATIONS_DIR = DB_DIR / "migrations"
MANIFEST_PATH = MIGRATIONS_DIR / "released.toml"
ADD_COMMAND = "python -m ops.db.released --add"

HEADER = """\
# Released migrations: each revision of each service once committed, with the sha256 of its
# file's bytes. tests/unit/test_released_migrations.py fails when a listed file changes, goes
# or is renamed, or when a migration file is not listed.
#
# A released migration is never rewritten: a database that ran it keeps what it made, and
# Alembic never runs a revision again. A change is a new revision (events 0007 mends the one
# time one was rewritten, audit U1). The helpers a released migration calls
# (apps/common/migration_helpers.py, and the constants they read) are frozen the same way:
# their behaviour never changes; a different table is a new helper.
#
# A new revision is listed by `python -m ops.db.released --add` (it appends, and changes no
# line here), in the commit that adds the migration. Until that commit is made, its line is
# yours: delete it and add it again after editing the migration.
#
# <service>.<revision> = { file = "<file in db/migrations/<service>/versions>", sha256 = "..." }

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


def problems(
    migrations_dir: Path = MIGRATIONS_DIR, manifest_path: Path = MANIFEST_PATH
) -> list[str]:
    """Every difference between the released manifest and the migration files, and every
    problem of the revision graph; empty when all is well."""
    migrations, files, found = read_migrations(migrations_dir)
    found += graph_problems(migrations)
    by_key = {(m.service, m.revision): m for m in migrations}
    listed = set()
    for entry in read_manifest(manifest_path):
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


def add_unlisted(
    migrations_dir: Path = MIGRATIONS_DIR, manifest_path: Path = MANIFEST_PATH
) -> list[Migration]:
    """Append the migrations the manifest does not list (a new manifest gets the header first);
    the lines already there are left as they are. Returns what was added."""
    migrations, _, _ = read_migrations(migrations_dir)
    listed = (
        {(e.service, e.revision) for e in read_manifest(manifest_path)}
        if manifest_path.exists()
        else set()
    )
    new = [m for m in migrations if (m.service, m.revision) not in listed]
    text = manifest_path.read_text() if manifest_path.exists() else ""
    start = HEADER if not text else ("" if text.endswith("\n") else "\n")
    with manifest_path.open("a") as manifest:
        manifest.write(start + "".join(manifest_line(m) for m in new))
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--add", action="store_true", help="append the revisions not listed yet, then check"
    )
    args = parser.parse_args(argv)
    if args.add:
        for m in add_unlisted():
            print(f"added {m.service} {m.revision} ({m.path.name})")
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
