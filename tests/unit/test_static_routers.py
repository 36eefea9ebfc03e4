"""Every static files router is made by apps.common.static (audit s20 L3): Litestar's own
answers a miss with the file system path it looked at, absolute for a directory."""

from __future__ import annotations

from pathlib import Path

APPS = Path(__file__).resolve().parents[2] / "apps"


def test_only_apps_common_static_makes_a_static_files_router() -> None:
    makers = sorted(
        str(source.relative_to(APPS))
        for source in APPS.rglob("*.py")
        if "create_static_files_router" in source.read_text(encoding="utf-8")
    )
    assert makers == ["common/static.py"]
