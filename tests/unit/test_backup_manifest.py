"""ops.db.backup.read_backup: a restore reads nothing it cannot trust; each way a backup
directory can be wrong is one clear error, raised before any server is touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from apps.registry import SERVICES, service_spec
from ops.db.backup import FORMAT, MANIFEST, BackupError, prune_backups, read_backup

DATABASES = {service_spec(name).database: name for name in SERVICES}


def write_backup(directory: Path) -> dict:
    directory.mkdir()
    databases = {}
    for database, service in DATABASES.items():
        content = f"archive of {database}".encode()
        (directory / f"{database}.dump").write_bytes(content)
        databases[database] = {
            "service": service,
            "file": f"{database}.dump",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "revisions": ["0001"],
            "tables": {f"{service}.t": {"rows": 1, "xor": "00000000000000ff", "sum": "255"}},
        }
    manifest = {"format": FORMAT, "databases": databases}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_a_whole_backup_reads_back(tmp_path: Path) -> None:
    write_backup(tmp_path / "b")
    entries = read_backup(tmp_path / "b")
    assert set(entries) == set(DATABASES)
    assert entries["db_orders"].rows == 1


def _drop_database(manifest: dict) -> None:
    del manifest["databases"]["db_likes"]


def _drop_sha256(manifest: dict) -> None:
    del manifest["databases"]["db_blog"]["sha256"]


@pytest.mark.parametrize(
    ("spoil_manifest", "message"),
    [
        (lambda m: m.update(format=FORMAT + 1), "this release reads"),
        (_drop_database, "the backup holds"),
        (lambda m: m["databases"]["db_orders"].update(service="cart"), "not cart's"),
        (lambda m: m["databases"]["db_orders"].update(file="../db_orders.dump"), "missing"),
        (_drop_sha256, "cannot be read"),
    ],
)
def test_a_manifest_that_is_wrong_is_refused(tmp_path: Path, spoil_manifest, message) -> None:
    directory = tmp_path / "b"
    manifest = write_backup(directory)
    spoil_manifest(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=message):
        read_backup(directory)


@pytest.mark.parametrize(
    ("spoil_files", "message"),
    [
        (lambda d: (d / MANIFEST).unlink(), "did not finish"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "cannot be read"),
        (lambda d: (d / "db_cart.dump").unlink(), "db_cart.dump is missing"),
        (lambda d: (d / "db_cart.dump").write_bytes(b"archive of db_carT"), "damaged"),
    ],
)
def test_files_that_are_not_the_backups_are_refused(tmp_path: Path, spoil_files, message) -> None:
    directory = tmp_path / "b"
    write_backup(directory)
    spoil_files(directory)
    with pytest.raises(BackupError, match=message):
        read_backup(directory)


def test_pruning_keeps_the_newest_backups_and_touches_nothing_else(tmp_path: Path) -> None:
    """`rose db backup --keep N` (deploy.sh's): of the complete backups beside the new one, the
    newest N stay; a directory that is not a whole backup (no manifest, other files) is named,
    never removed."""
    root = tmp_path / "backups"
    root.mkdir()
    made = []
    for number in range(5):
        directory = root / f"tag{number}-2026120{number}T000000Z"
        manifest = write_backup(directory)
        manifest["made_at"] = f"2026-12-0{number + 1}T00:00:00+00:00"
        (directory / MANIFEST).write_text(json.dumps(manifest))
        made.append(directory)
    unfinished = root / "cut-off"
    unfinished.mkdir()
    (unfinished / "db_blog.dump").write_bytes(b"partial")
    stranger = root / "notes.txt"
    stranger.write_text("mine")

    removed, kept_aside = prune_backups(root, keep=2)
    assert removed == made[:3]
    assert sorted(path.name for path in root.iterdir()) == sorted(
        [made[3].name, made[4].name, "cut-off", "notes.txt"]
    )
    assert kept_aside == [unfinished]
    assert prune_backups(root, keep=2) == ([], [unfinished])
    with pytest.raises(BackupError, match="at least 1"):
        prune_backups(root, keep=0)


def test_pruning_never_removes_the_backup_just_made(tmp_path: Path) -> None:
    """Whatever the other manifests say of their time (a clock set back), the new one stays."""
    root = tmp_path / "backups"
    root.mkdir()
    older = write_backup(root / "older")
    older["made_at"] = "2099-01-01T00:00:00+00:00"
    (root / "older" / MANIFEST).write_text(json.dumps(older))
    new = write_backup(root / "new")
    new["made_at"] = "2026-12-04T00:00:00+00:00"
    (root / "new" / MANIFEST).write_text(json.dumps(new))
    removed, _left = prune_backups(root, keep=1, made=root / "new")
    assert removed == [root / "older"]
    assert [path.name for path in root.iterdir()] == ["new"]
