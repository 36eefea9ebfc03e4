"""HMAC-SHA256 signatures of internal requests.

The signature covers the method, the path with its query string, a timestamp, a nonce, the
``Idempotency-Key`` (if any) and the body: a captured request cannot be altered, its key cannot
be swapped, and it cannot be replayed after the tolerance window. Within the window, the
receiver remembers the nonces of the actions it accepted (``apps.common.nonces``), so a second
delivery of the same signed action is refused: a retry is signed anew, with a fresh nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

TIMESTAMP_HEADER = "X-Rose-Timestamp"
SIGNATURE_HEADER = "X-Rose-Signature"
NONCE_HEADER = "X-Rose-Nonce"
CALLER_HEADER = "X-Rose-Caller"
# Requests older (or further in the future) than this are refused.
MAX_CLOCK_SKEW_SECONDS = 300
MAX_NONCE_LENGTH = 64
# A timestamp is what ``sign_headers`` writes: ASCII digits, seconds since the epoch. (``int``
# also takes a sign, spaces, underscores and other scripts' digits; and a number of hundreds of
# digits was an OverflowError against the clock, a 500.)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def signature(
    secret: str,
    method: str,
    path: str,
    timestamp: str,
    body: bytes,
    *,
    nonce: str = "",
    idempotency_key: str = "",
) -> str:
    message = b"\n".join(
        [
            method.upper().encode(),
            path.encode(),
            timestamp.encode(),
            nonce.encode(),
            idempotency_key.encode(),
            hashlib.sha256(body).digest(),
        ]
    )
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    *,
    caller: str,
    idempotency_key: str | None = None,
    now: float | None = None,
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(16)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(
            secret,
            method,
            path,
            timestamp,
            body,
            nonce=nonce,
            idempotency_key=idempotency_key or "",
        ),
        CALLER_HEADER: caller,
    }


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two strings of any characters (``hmac.compare_digest``
    refuses str that is not ASCII)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def verify(
    secret: str | tuple[str, ...],
    method: str,
    path: str,
    body: bytes,
    timestamp: str | None,
    given_signature: str | None,
    *,
    nonce: str | None = None,
    idempotency_key: str | None = None,
    now: float | None = None,
) -> str | None:
    """Return None when the request is authentic (signed with ``secret``, or any of them during
    a rotation), else the reason it is not."""
    if not timestamp or not given_signature or not nonce:
        return "missing request signature"
    if len(nonce) > MAX_NONCE_LENGTH:
        return "malformed request nonce"
    if _TIMESTAMP.fullmatch(timestamp) is None:
        return "malformed signature timestamp"
    stamp = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - stamp) > MAX_CLOCK_SKEW_SECONDS:
        return "stale request signature"
    secrets = (secret,) if isinstance(secret, str) else secret
    expected = [
        signature(
            candidate,
            method,
            path,
            timestamp,
            body,
            nonce=nonce,
            idempotency_key=idempotency_key or "",
        )
        for candidate in secrets
    ]
    if not any(same_secret(given_signature, one) for one in expected):
        return "wrong request signature"
    return None
