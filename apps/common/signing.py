"""HMAC-SHA256 signatures of internal requests.

The signature covers the method, the path with its query string, a timestamp and the body, so a
captured request cannot be replayed after the tolerance window or altered in transit.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Rose-Timestamp"
SIGNATURE_HEADER = "X-Rose-Signature"
CALLER_HEADER = "X-Rose-Caller"
# Requests older (or further in the future) than this are refused.
MAX_CLOCK_SKEW_SECONDS = 300


def signature(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    message = b"\n".join(
        [method.upper().encode(), path.encode(), timestamp.encode(), hashlib.sha256(body).digest()]
    )
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    secret: str, method: str, path: str, body: bytes, *, caller: str, now: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, method, path, timestamp, body),
        CALLER_HEADER: caller,
    }


def verify(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: str | None,
    given_signature: str | None,
    *,
    now: float | None = None,
) -> str | None:
    """Return None when the request is authentic, else the reason it is not."""
    if not timestamp or not given_signature:
        return "missing request signature"
    try:
        stamp = int(timestamp)
    except ValueError:
        return "malformed signature timestamp"
    current = time.time() if now is None else now
    if abs(current - stamp) > MAX_CLOCK_SKEW_SECONDS:
        return "stale request signature"
    expected = signature(secret, method, path, timestamp, body)
    if not hmac.compare_digest(expected, given_signature):
        return "wrong request signature"
    return None
