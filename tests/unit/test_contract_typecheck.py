"""A contract between services is checked where it is used: a field of orders' create-order
request renamed in orders' contract makes the type checker fail in cart, which builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRACT = Path("apps/orders/contract.py")

pytestmark = pytest.mark.slow


def mypy(root: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file",
         str(root / "pyproject.toml"), target],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


def test_a_changed_create_order_field_fails_the_type_check_in_cart(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "apps", root / "apps", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    assert mypy(root, "apps/cart/service.py").returncode == 0

    contract = (root / CONTRACT).read_text()
    renamed = contract.replace("    product_total: Money\n", "    products_total: Money\n", 1)
    assert renamed != contract
    (root / CONTRACT).write_text(renamed)
    checked = mypy(root, "apps/cart/service.py")
    assert checked.returncode == 1
    assert "apps/cart/service.py" in checked.stdout
    assert '"product_total"' in checked.stdout
