"""A migration once committed is never changed (audit U1): db/migrations/released.toml lists
every revision with the sha256 of its file, and ops.db.released.problems names a listed file
that changed, went or was renamed, a file not listed, a revision id used twice in a service, a
down_revision that is no revision of the service, and a service with more than one head. The
helpers released migrations call (apps/common/migration_helpers.py) are listed too, each
top-level definition with the sha256 of its source.

The real tree must have no problem; each kind of problem is shown on a copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ops.db.released import (
    ADD_COMMAND,
    HELPERS_PATH,
    MANIFEST_PATH,
    MIGRATIONS_DIR,
    add_unlisted,
    problems,
)

EVENTS_0006 = "events/versions/0006_adopted_sessions.py"


def test_every_migration_is_released_unchanged() -> None:
    found = problems()
    assert not found, "\n".join(found)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of db/migrations (the manifest in it) and of the migration helpers, in it."""
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HELPERS_PATH, copy / HELPERS_PATH.name)
    assert found(copy) == []
    return copy


def found(tree: Path) -> list[str]:
    return problems(tree, tree / MANIFEST_PATH.name, tree / HELPERS_PATH.name)


def add(tree: Path) -> list[str]:
    return add_unlisted(tree, tree / MANIFEST_PATH.name, tree / HELPERS_PATH.name)


def new_revision(tree: Path, service: str, name: str, revision: str, down: str | None) -> None:
    (tree / service / "versions" / name).write_text(
        f'"""new"""\n\nrevision = "{revision}"\ndown_revision = {down!r}\n'
    )


def test_a_released_file_changed_in_its_docstring(tree: Path) -> None:
    path = tree / EVENTS_0006
    path.write_text(path.read_text().replace("adopted_sessions", "adopted_session", 1))
    [problem] = found(tree)
    assert problem.startswith(f"{EVENTS_0006} changed after it was released (events 0006)")


def test_a_released_file_changed_by_one_byte(tree: Path) -> None:
    path = tree / EVENTS_0006
    content = bytearray(path.read_bytes())
    content[-2] ^= 1
    path.write_bytes(bytes(content))
    [problem, *others] = (m for m in found(tree) if "changed after it was released" in m)
    assert not others
    assert EVENTS_0006 in problem
    assert "released migrations are never rewritten" in problem
    assert "make a new revision" in problem


def test_a_released_file_gone(tree: Path) -> None:
    (tree / "cart/versions/0007_adopted_sessions.py").unlink()
    [problem] = found(tree)
    assert "cart 0007" in problem
    assert "gone" in problem


def test_a_released_file_renamed(tree: Path) -> None:
    versions = tree / "cart" / "versions"
    (versions / "0007_adopted_sessions.py").rename(versions / "0007_sessions.py")
    [problem] = found(tree)
    assert "cart/versions/0007_adopted_sessions.py" in problem
    assert "cart/versions/0007_sessions.py" in problem
    assert "renamed" in problem


def test_a_file_given_another_revision_id(tree: Path) -> None:
    path = tree / "cart" / "versions" / "0007_adopted_sessions.py"
    path.write_text(path.read_text().replace('revision = "0007"', 'revision = "0007a"'))
    changed, unlisted = found(tree)
    assert changed.startswith(
        "cart/versions/0007_adopted_sessions.py changed after it was released"
    )
    assert unlisted.startswith("cart/versions/0007_adopted_sessions.py (cart 0007a) is not in")


def test_a_new_file_is_not_listed_until_added(tree: Path) -> None:
    manifest = tree / MANIFEST_PATH.name
    before = manifest.read_bytes()
    # After events' head, whichever it is now (the id itself is the test's: 0999).
    head = max(path.name[:4] for path in (tree / "events" / "versions").glob("0*.py"))
    new_revision(tree, "events", "0999_more.py", "0999", head)
    [problem] = found(tree)
    assert "events/versions/0999_more.py" in problem
    assert ADD_COMMAND in problem

    assert add(tree) == ["events 0999 (0999_more.py)"]
    assert manifest.read_bytes().startswith(before)
    assert found(tree) == []
    # Adding again adds nothing, and the new entry is as released as the others.
    assert add(tree) == []
    new_revision(tree, "events", "0999_more.py", "0999", head)
    (tree / "events/versions/0999_more.py").write_text(
        f"revision = '0999'\ndown_revision = '{head}'"
    )
    [problem] = found(tree)
    assert "never rewritten" in problem


def test_a_revision_id_twice_in_a_service(tree: Path) -> None:
    new_revision(tree, "likes", "0003_again.py", "0002", "0001")
    messages = found(tree)
    assert any("likes: revision '0002' is in more than one file" in m for m in messages)


def test_a_down_revision_the_service_does_not_have(tree: Path) -> None:
    new_revision(tree, "likes", "0003_next.py", "0003", "0009")
    messages = found(tree)
    assert any("likes/versions/0003_next.py: down_revision '0009'" in m for m in messages)


def test_two_heads(tree: Path) -> None:
    new_revision(tree, "likes", "0003_one.py", "0003", "0002")
    new_revision(tree, "likes", "0003_two.py", "0003b", "0002")
    messages = found(tree)
    assert any("likes: 2 heads (0003, 0003b)" in m for m in messages)


def test_a_helper_changed_without_its_file_name(tree: Path) -> None:
    """A released migration calls the helper again on every fresh database: a length changed
    in it would give new databases a column the old ones never got (audit s19c)."""
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(
        helpers.read_text().replace('"user_id", sa.BigInteger', '"user_id", sa.Integer')
    )
    [problem] = found(tree)
    assert problem.startswith("migration_helpers.py: create_adopted_sessions changed")
    assert "write a new helper" in problem


def test_a_helper_constant_changed(tree: Path) -> None:
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(helpers.read_text().replace("MAX_KEY_LENGTH = 200", "MAX_KEY_LENGTH = 300"))
    [problem] = found(tree)
    assert "MAX_KEY_LENGTH changed" in problem


def test_a_helper_gone(tree: Path) -> None:
    helpers = tree / HELPERS_PATH.name
    text = helpers.read_text()
    start = text.index("def create_request_nonces")
    end = text.index("def create_adopted_sessions")
    helpers.write_text(text[:start] + text[end:])
    [problem] = found(tree)
    assert "create_request_nonces is gone" in problem


def test_a_new_helper_is_listed_by_add(tree: Path) -> None:
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(
        helpers.read_text() + "\n\ndef create_more(schema: str) -> None:\n    pass\n"
    )
    [problem] = found(tree)
    assert "create_more is not in released.toml" in problem
    assert ADD_COMMAND in problem
    assert add(tree) == ["helpers create_more"]
    assert found(tree) == []


@pytest.mark.parametrize(
    "statement",
    ["MAX_KEY_LENGTH += 100", "sa.String = sa.Text", "if True:\n    MAX_NONCE_LENGTH = 1"],
)
def test_a_statement_that_is_no_definition_is_refused(tree: Path, statement: str) -> None:
    """Audit s20c: only definitions were hashed, so a statement after them (rebinding a
    constant, patching a type) changed what released migrations make, unseen."""
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(helpers.read_text() + "\n" + statement + "\n")
    [problem] = found(tree)
    assert "only definitions" in problem, problem
    assert statement.splitlines()[0] in problem


def test_a_helper_defined_again_is_refused(tree: Path) -> None:
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(helpers.read_text() + "\n\ndef timestamps() -> list:\n    return []\n")
    assert any("timestamps is defined again" in m for m in found(tree))


def test_a_changed_import_is_a_released_one_gone(tree: Path) -> None:
    helpers = tree / HELPERS_PATH.name
    helpers.write_text(helpers.read_text().replace("import sqlalchemy as sa", "import mylib as sa"))
    messages = found(tree)
    assert any("import_" in m and "is gone" in m for m in messages), messages
