"""Plan verifications 5 and 6 over the source tree: nothing calls cart for what moved out of it.

Checked on the syntax tree, so formatting (line breaks, quotes, keyword arguments) cannot hide a
call, and a detector self-test proves the check can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MOVED_ACTIONS = {"attach-child", "detach-child", "update-page-config"}
MOVED_DATA_PREFIXES = ("page-config",)
MOVED_DATA = {"get-children"}


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argument(call: ast.Call, index: int, name: str) -> str | None:
    if len(call.args) > index:
        return _constant(call.args[index])
    for keyword in call.keywords:
        if keyword.arg == name:
            return _constant(keyword.value)
    return None


def calls_to_cart_for_moved_things(source: str, filename: str = "<source>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name not in ("call_action", "fetch_data"):
            continue
        service = _argument(node, 0, "service")
        what = _argument(node, 1, "name") or ""
        if service != "cart":
            continue
        moved = (
            what in MOVED_ACTIONS
            if name == "call_action"
            else what in MOVED_DATA or what.startswith(MOVED_DATA_PREFIXES)
        )
        if moved:
            found.append(f"{filename}:{node.lineno}: {name}('cart', {what!r})")
    return found


def test_the_detector_finds_moved_calls_however_they_are_written():
    sample = """
await call_action("cart", "attach-child", payload={})
await client.call_action(
    'cart',
    name="update-page-config",
    payload={},
)
await fetch_data("cart", "page-configs-batch", {})
await fetch_data(service="cart", name="get-children")
await call_action("relations", "attach-child", {})
await fetch_data("cart", "cart-summary", {})
"""
    assert [line.split(": ", 1)[1] for line in calls_to_cart_for_moved_things(sample)] == [
        "call_action('cart', 'attach-child')",
        "call_action('cart', 'update-page-config')",
        "fetch_data('cart', 'page-configs-batch')",
        "fetch_data('cart', 'get-children')",
    ]


def test_no_service_calls_cart_for_relations_or_page_configs():
    """Plan verifications 5 and 6: no call_action("cart", attach-child | detach-child |
    update-page-config) and no fetch_data("cart", page-config* | get-children), anywhere."""
    files = [
        path
        for folder in ("apps", "ops", "bench", "tests")
        for path in (REPO / folder).rglob("*.py")
        if path.name != Path(__file__).name
    ]
    assert len(files) > 50
    found = [
        hit
        for path in files
        for hit in calls_to_cart_for_moved_things(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert found == []
