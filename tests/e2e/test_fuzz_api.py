"""Schemathesis over every service's OpenAPI, internal routes included (signed the way services
sign them), stateless (positive and negative inputs) and stateful (linked operations), against
real processes on the test database, with a fixed seed and a bounded budget: no server error and
no response that breaks the documented contract (status, media type, schema, headers)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.common.signing import sign_headers
from tests.conftest import truncate_all
from tests.e2e.conftest import LiveStack, live_stack
from tests.integration.commerce_fixtures import open_shop

SERVICES = ["relations", "likes", "blog", "market", "cart", "events", "orders"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# CI's budget, with a fixed seed. A longer campaign with fresh random inputs, locally:
#   ROSE_FUZZ_EXAMPLES=2000 ROSE_FUZZ_RANDOM=1 ops/test.sh tests/e2e/test_fuzz_api.py
EXAMPLES = int(os.environ.get("ROSE_FUZZ_EXAMPLES", "150"))
FIXED_SEED = os.environ.get("ROSE_FUZZ_RANDOM") != "1"
STATELESS = settings(
    max_examples=EXAMPLES,
    derandomize=FIXED_SEED,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
STATEFUL = settings(
    max_examples=max(15, EXAMPLES // 10),
    stateful_step_count=6,
    derandomize=FIXED_SEED,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

pytestmark = pytest.mark.slow


class Signed(requests.auth.AuthBase):
    """Signs internal requests as a service does (method, path and query, body, key)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = requests.utils.urlparse(request.url)
        if not url.path.startswith("/internal/"):
            return request
        path = url.path + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        key = request.headers.get("Idempotency-Key")
        request.headers.update(
            sign_headers(
                self.secret, request.method or "GET", path, body, caller="fuzz", idempotency_key=key
            )
        )
        return request


@pytest.fixture(scope="module")
def everything(provisioned, credentials) -> Iterator[LiveStack]:
    truncate_all(provisioned)
    open_shop(provisioned)
    with live_stack(provisioned, credentials, SERVICES, sandbox=True) as stack:
        yield stack
    truncate_all(provisioned)


def browser_session(stack: LiveStack, service: str) -> requests.Session:
    """A signed-in browser of one service: its cookie and CSRF token on every request."""
    session = requests.Session()
    base = stack.url(service)
    answer = session.get(
        f"{base}/auth/dev-login", params={"user_id": 1}, headers={"accept": "application/json"}
    )
    if answer.ok:
        session.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return session


# How operations chain (OpenAPI links), for the stateful phase: (from operation, its status,
# to operation, parameters, request body), with runtime expressions of the OpenAPI spec.
LINKS: dict[str, list[tuple[str, str, str, dict[str, str], Any]]] = {
    "relations": [
        ("action_attach_child", "200", "data_get_children",
         {"parent_type": "$response.body#/parent_type", "parent_id": "$response.body#/parent_id"},
         None),
        ("action_attach_child", "200", "action_detach_child", {},
         {"parent_type": "$response.body#/parent_type", "parent_id": "$response.body#/parent_id",
          "child_type": "$response.body#/child_type", "child_id": "$response.body#/child_id"}),
    ],
    "likes": [
        ("action_toggle", "200", "data_liked_slugs",
         {"user_id": "$request.body#/user_id", "target_type": "$request.body#/target_type"}, None),
    ],
    "blog": [
        ("data_page_config_ensure", "200", "data_page_config_by_id",
         {"id": "$response.body#/id"}, None),
        ("action_update_page_config", "200", "data_page_config",
         {"container_type": "$response.body#/container_type",
          "container_id": "$response.body#/container_id"}, None),
    ],
    "market": [
        ("product_list", "200", "product", {"slug": "$response.body#/items/0/slug"}, None),
    ],
    "cart": [
        ("cart_add", "200", "cart_item_quantity", {"item_id": "$response.body#/id"}, None),
        ("cart_add", "200", "cart_item_delete", {"item_id": "$response.body#/id"}, None),
    ],
    "events": [
        ("calendar_create", "201", "calendar_attach", {"calendar_id": "$response.body#/id"}, None),
        ("calendar_create", "201", "calendar_detach", {"calendar_id": "$response.body#/id"}, None),
        ("calendar_create", "201", "calendar_entry_create",
         {"calendar_id": "$response.body#/id"}, None),
        ("calendar_entry_create", "201", "entry_book", {"entry_id": "$response.body#/id"}, None),
        ("calendar_entry_create", "201", "entry_tickets_add",
         {"entry_id": "$response.body#/id"}, None),
    ],
    "orders": [
        ("action_create_order", "200", "data_order", {"order_id": "$response.body#/order_id"},
         None),
        ("action_create_order", "200", "order", {"order_id": "$response.body#/order_id"}, None),
        ("action_create_order", "200", "order_pay", {"order_id": "$response.body#/order_id"},
         None),
        ("action_create_order", "200", "order_recheck",
         {"order_id": "$response.body#/order_id"}, None),
    ],
}  # fmt: skip


def with_links(raw: dict[str, Any], service: str) -> dict[str, Any]:
    operations = {
        operation["operationId"]: operation
        for path_item in raw["paths"].values()
        for operation in path_item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for source, status, target, parameters, body in LINKS[service]:
        response = operations[source]["responses"].setdefault(status, {"description": "ok"})
        link: dict[str, Any] = {"operationId": target}
        if parameters:
            link["parameters"] = parameters
        if body is not None:
            link["requestBody"] = body
        assert target in operations, (service, target)
        response.setdefault("links", {})[f"to_{target}"] = link
    return raw


def failures_of(stack: LiveStack, service: str) -> list[str]:
    base = stack.url(service)
    raw = requests.get(f"{base}/schema/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(with_links(raw, service))
    session = browser_session(stack, service)
    auth = Signed(stack.internal_secret)
    found: list[str] = []

    def check(case: Any) -> None:
        try:
            case.call_and_validate(
                base_url=base, session=session, auth=auth, checks=CHECKS, allow_redirects=False
            )
        except (Exception, BaseExceptionGroup) as failure:  # a check failed: record, go on
            found.append(f"{case.method} {case.formatted_path}: {failure}"[:900])

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = schema.as_strategy(generation_mode=mode)
        STATELESS(given(case=strategy)(check))()

    machine = schema.as_state_machine()

    stateful_calls: list[str] = []

    class Signing(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            stateful_calls.append(case.operation.label)
            return {"base_url": base, "session": session, "auth": auth, "allow_redirects": False}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as failure:
                found.append(f"stateful {case.method} {case.formatted_path}: {failure}"[:600])

    Signing.run(settings=STATEFUL)
    # The stateful phase ran: several calls per scenario, through the links.
    assert len(stateful_calls) > STATEFUL.max_examples, (service, len(stateful_calls))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_fuzzing_finds_no_server_error_and_no_contract_breach(everything, service):
    failures = failures_of(everything, service)
    assert failures == [], f"{len(failures)} failures:\n" + "\n".join(failures[:30])
