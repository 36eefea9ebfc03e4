"""The db/ a checkout's code provisions and migrates with is that checkout's own, even when
another one's ``rose_ash_db`` is importable (an editable install of a second worktree in the
same virtual environment, an earlier release run with ``PYTHONPATH=<its checkout>``): the other's
migrations would take the database past the heads this code knows (probe upgrade2: an earlier
main's ``rose up`` migrated blog to 0009 and orders to 0019 from today's db/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def db_dir_seen_by(checkout: Path, *also: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(path) for path in (checkout, *also)))
    result = subprocess.run(
        [sys.executable, "-c", "from ops.paths import DB_DIR; print(DB_DIR)"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def test_a_checkout_on_the_path_uses_its_own_db_folder(tmp_path: Path) -> None:
    # The least of a checkout that ops.paths needs: its packages' markers, pyproject and db/.
    checkout = tmp_path / "earlier"
    for module in ("apps/__init__.py", "ops/__init__.py", "ops/paths.py"):
        (checkout / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / module, checkout / module)
    (checkout / "pyproject.toml").write_text("")
    (checkout / "db").mkdir()
    (checkout / "db" / "alembic.ini").write_text("")
    # Another checkout's db/, importable as the installed package is.
    installed = tmp_path / "installed"
    (installed / "rose_ash_db").mkdir(parents=True)
    (installed / "rose_ash_db" / "alembic.ini").write_text("")

    assert db_dir_seen_by(checkout, installed) == (checkout / "db").resolve()


def test_without_a_checkout_the_installed_package_is_used(tmp_path: Path) -> None:
    # A wheel: the code's folder has no pyproject.toml beside it.
    site = tmp_path / "site"
    for module in ("apps/__init__.py", "ops/__init__.py", "ops/paths.py"):
        (site / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / module, site / module)
    (site / "rose_ash_db").mkdir()
    (site / "rose_ash_db" / "alembic.ini").write_text("")

    assert db_dir_seen_by(site) == (site / "rose_ash_db").resolve()
