"""Plan verifications 5 and 6, now by construction: what moved out of cart is declared by its
new owner's contract and by no other, a provider serves exactly its contract (the app factory
refuses anything else), and services call each other only through contracts (typed calls can
only name a declared call)."""

from __future__ import annotations

import ast
from pathlib import Path

from apps.common.contracts import Action, Query
from apps.registry import CONTRACTS

REPO = Path(__file__).resolve().parents[2]
RAW_CALLS = {"call_action", "fetch_data", "fetch_fragment"}
# The two places that name calls at run time: the client itself and the outbox relay (which
# delivers what enqueue wrote from a contract's Action).
RAW_CALLERS = {"apps/common/internal_client.py", "apps/common/outbox.py"}


def declared_by(kind: type, name: str) -> set[str]:
    return {
        contract.service
        for contract in CONTRACTS.values()
        for call in contract.calls
        if isinstance(call, kind) and call.name == name
    }


def test_what_moved_out_of_cart_is_declared_by_its_new_owner_only():
    assert declared_by(Action, "attach-child") == {"relations"}
    assert declared_by(Action, "detach-child") == {"relations"}
    assert declared_by(Query, "get-children") == {"relations"}
    assert declared_by(Action, "update-page-config") == {"blog"}
    for name in ("page-config", "page-config-by-id", "page-configs-batch", "page-config-ensure"):
        assert declared_by(Query, name) == {"blog"}
    assert {call.name for call in CONTRACTS["cart"].calls} == {
        "cart-summary",
        "cart-items",
        "adopt-cart-for-user",
        "clear-cart-for-order",
        "cart-mini",
        "inbox",  # the plan's Add / Remove / Update of rose:CartItem
    }


def raw_calls(source: str, filename: str) -> list[str]:
    return [
        f"{filename}:{node.lineno}"
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in RAW_CALLS
    ]


def test_services_call_each_other_only_through_contracts():
    files = [
        path
        for path in (REPO / "apps").rglob("*.py")
        if str(path.relative_to(REPO)) not in RAW_CALLERS
    ]
    assert len(files) > 40
    found = [
        hit for path in files for hit in raw_calls(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert found == []
    # The check can fail: the client's own module does name calls at run time.
    client = REPO / "apps/common/internal_client.py"
    assert raw_calls(client.read_text(), "internal_client.py")


SERVICE_NAMES = set(CONTRACTS)


def service_mentions(source: str, filename: str) -> list[str]:
    """Imports of a service's package, and service names written as string literals (docstrings
    aside): what would make the platform know a service."""
    tree = ast.parse(source, filename)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "apps" and len(parts) > 1 and parts[1] in SERVICE_NAMES | {"registry"}:
                found.append(f"{filename}:{node.lineno} imports {node.module}")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and node.value in SERVICE_NAMES
        ):
            found.append(f"{filename}:{node.lineno} names {node.value!r}")
    return found


def test_the_platform_names_no_service():
    files = sorted((REPO / "apps/common").rglob("*.py"))
    assert len(files) > 20
    found = [
        hit
        for path in files
        for hit in service_mentions(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert found == []
    # The check can fail: the registry is where services are named.
    registry = REPO / "apps/registry.py"
    assert service_mentions(registry.read_text(), "registry.py")
