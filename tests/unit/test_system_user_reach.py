"""As root, the embedded PostgreSQL runs as its own system user, which must reach the data
directory through folders only root may enter (a checkout in /root, pytest's 0700 folders).
Audit O15: that access is the system user's alone; nobody else gains a way in."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack.pgserver import SYSTEM_USER, _system_user, let_system_user_reach

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root runs PostgreSQL as a system user of its own"
)


def reaches(user: str, path: Path) -> bool:
    """Whether ``user`` can reach ``path`` (traverse every folder on the way), asked as them."""
    gid = pwd.getpwnam(user).pw_gid  # its own group alone, as the server runs: not root's
    return (
        subprocess.run(["test", "-e", str(path)], user=user, group=gid, check=False).returncode == 0
    )


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder everyone may traverse on the way (pytest's own are closed to all but root)."""
    base = Path(tempfile.mkdtemp(prefix="rose-reach-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def closed_tree(base: Path) -> tuple[Path, Path]:
    outer = base / "closed"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    (inner / "PG_VERSION").write_text("18\n")
    for folder in (inner, outer):
        folder.chmod(0o700)
    return outer, inner


def test_only_the_system_user_gains_a_way_in(tmp_path: Path) -> None:
    _system_user()  # created if missing, as a first start does
    outer, inner = closed_tree(tmp_path)
    target = inner / "PG_VERSION"
    assert not reaches(SYSTEM_USER, target)

    changed = let_system_user_reach(inner)

    assert reaches(SYSTEM_USER, target)
    assert not reaches("nobody", target)
    for folder in (outer, inner):
        # Others' bits are as they were; the grant is an ACL entry naming the system user.
        assert stat.S_IMODE(folder.stat().st_mode) & 0o007 == 0, folder
        assert any(line.startswith(f"{folder}: ") for line in changed), changed
    # Said once: a second start finds nothing to change.
    assert let_system_user_reach(inner) == []


def test_a_folder_others_may_enter_is_left_alone(tmp_path: Path) -> None:
    _system_user()
    outer, inner = closed_tree(tmp_path)
    outer.chmod(0o711)
    before = os.listxattr(outer)

    changed = let_system_user_reach(inner)

    assert not any(line.startswith(f"{outer}: ") for line in changed), changed
    assert os.listxattr(outer) == before
    assert stat.S_IMODE(outer.stat().st_mode) == 0o711


def test_an_acl_already_there_is_kept(tmp_path: Path) -> None:
    """A folder with its own ACL (another user's grant) keeps it, and still shuts out others."""
    _system_user()
    outer, inner = closed_tree(tmp_path)
    let_system_user_reach(inner)
    nobody = 65534
    acl = bytearray(os.getxattr(outer, "system.posix_acl_access"))
    # Our grant is there; add one for nobody (read only), as an administrator might.
    entries = [acl[i : i + 8] for i in range(4, len(acl), 8)]
    entries.append(bytearray((0x02).to_bytes(2, "little") + (4).to_bytes(2, "little")))
    entries[-1] += nobody.to_bytes(4, "little")
    entries.sort(key=lambda e: (int.from_bytes(e[:2], "little"), int.from_bytes(e[4:], "little")))
    os.setxattr(outer, "system.posix_acl_access", bytes(acl[:4]) + b"".join(entries))

    assert let_system_user_reach(inner) == []
    assert reaches(SYSTEM_USER, inner / "PG_VERSION")
    assert not reaches("nobody", inner / "PG_VERSION")
    assert len(os.getxattr(outer, "system.posix_acl_access")) == len(acl) + 8


def test_a_folder_closed_again_is_not_reopened_to_its_group(open_base: Path) -> None:
    """Audit s19b: after the grant, `chmod 700` caps the ACL's mask again (the group's and our
    entry's x masked out); the next start grants again. Raising the mask alone gave the owning
    group its x back, and any other named entry whose x the mask had capped."""
    _system_user()
    outer, inner = closed_tree(open_base)
    member = "nobody"  # the folder's group is one nobody is in: give the group to nobody
    os.chown(outer, 0, pwd.getpwnam(member).pw_gid)
    outer.chmod(0o750)  # the group may enter, then ...
    let_system_user_reach(inner)
    assert reaches(member, inner / "PG_VERSION") is False  # inner is closed to all but us
    assert reaches(SYSTEM_USER, inner / "PG_VERSION")
    outer.chmod(0o700)  # ... it is closed to the group (the mask caps it)
    probe = outer / "probe"
    probe.write_text("")
    assert not reaches(member, probe)

    changed = let_system_user_reach(inner)

    assert any(line.startswith(f"{outer}: ") for line in changed), changed
    assert reaches(SYSTEM_USER, inner / "PG_VERSION")
    assert not reaches(member, probe)  # the group stays shut out
