"""Signed internal requests from tests, the way another service sends them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx

from apps.common.signing import sign_headers
from tests.conftest import INTERNAL_SECRET


async def internal_get(
    client: httpx.AsyncClient,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    kind: str = "data",
) -> httpx.Response:
    path = f"/internal/{kind}/{name}" + (f"?{urlencode(params, doseq=True)}" if params else "")
    headers = sign_headers(INTERNAL_SECRET, "GET", path, b"", caller="tests")
    return await client.get(path, headers=headers)


async def internal_post(
    client: httpx.AsyncClient,
    name: str,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    path = f"/internal/actions/{name}"
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = sign_headers(
        INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key=idempotency_key
    )
    headers["Content-Type"] = "application/json"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return await client.post(path, content=body, headers=headers)
