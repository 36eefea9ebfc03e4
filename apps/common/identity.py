"""Who is asking: one signed session cookie shared by every public service.

The cookie holds an anonymous session id, and the user id once signed in. It is signed with
``SESSION_SECRET`` (HMAC-SHA256), so a client cannot make itself another user. On localhost the
cookie is shared across ports; in production ``SESSION_COOKIE_DOMAIN`` shares it across hosts.

Forms are protected against cross-site request forgery with a token derived from the session id:
every unsafe public request must carry it as the ``_csrf_token`` form field (templates write it
with ``{{ csrf_input }}``) or the ``X-CSRF-Token`` header. API clients read it from
``GET /auth/session``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from apps.common.asgi import (
    BodyTooLarge,
    header,
    http_method,
    read_body,
    replaying_receive,
    send_problem,
)
from apps.common.internal_paths import is_internal_path
from apps.common.signing import same_secret

COOKIE_NAME = "rose_session"
COOKIE_MAX_AGE = 60 * 60 * 24 * 30
# The field name Litestar's ``{{ csrf_input }}`` template helper renders; we fill in our token.
CSRF_FIELD = "_csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
STATE_KEY = "rose_identity"
CHANGED_KEY = "rose_identity_changed"


@dataclass(frozen=True)
class Identity:
    session_id: str
    user_id: int | None = None

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None

    def as_params(self) -> dict[str, Any]:
        """The identity as internal-call parameters (user id when signed in, else the session)."""
        if self.user_id is not None:
            return {"user_id": self.user_id}
        return {"session_id": self.session_id}


def new_anonymous_identity() -> Identity:
    return Identity(session_id=secrets.token_urlsafe(18))


class SessionCodec:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"rose-session:" + secret.encode()).digest()
        self._csrf_key = hashlib.sha256(b"rose-csrf:" + secret.encode()).digest()

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def encode(self, identity: Identity) -> str:
        data: dict[str, str | int] = {"sid": identity.session_id}
        if identity.user_id is not None:
            data["uid"] = identity.user_id
        payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        payload = payload.rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}"

    def decode(self, value: str) -> Identity | None:
        payload, _, mac = value.partition(".")
        if not payload or not mac or not same_secret(mac, self._mac(payload.encode())):
            return None
        try:
            padded = payload + "=" * (-len(payload) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
            session_id = data["sid"]
            user_id = data.get("uid")
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(session_id, str) or not (user_id is None or isinstance(user_id, int)):
            return None
        return Identity(session_id=session_id, user_id=user_id)

    def csrf_token(self, identity: Identity) -> str:
        digest = hmac.new(self._csrf_key, identity.session_id.encode(), hashlib.sha256)
        return digest.hexdigest()[:40]


def identity_from_scope(scope: Scope) -> Identity:
    identity = scope.get("state", {}).get(STATE_KEY)
    if identity is None:
        raise RuntimeError("identity middleware is not installed on this app")
    return identity


def set_identity(scope: Scope, identity: Identity, codec: SessionCodec) -> None:
    """Switch the request's identity; the middleware writes the new cookie on the response."""
    scope.setdefault("state", {})[STATE_KEY] = identity
    scope["state"][CHANGED_KEY] = True
    ScopeState.from_scope(scope).csrf_token = codec.csrf_token(identity)


def identity_middleware(
    codec: SessionCodec,
    *,
    cookie_domain: str | None,
    secure: bool,
    csrf_exempt: Iterable[str] = (),
) -> Callable[[ASGIApp], ASGIApp]:
    """Resolve the identity from the cookie, check CSRF on unsafe requests, write the cookie."""
    exempt_prefixes = tuple(csrf_exempt)

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or is_internal_path(scope["path"]):
                await app(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            cookie = SimpleCookie()
            cookie.load(header(scope, "cookie") or "")
            morsel = cookie.get(COOKIE_NAME)
            identity = codec.decode(morsel.value) if morsel else None
            state[CHANGED_KEY] = identity is None
            state[STATE_KEY] = identity or new_anonymous_identity()
            # Litestar's template helper {{ csrf_input }} renders this token.
            ScopeState.from_scope(scope).csrf_token = codec.csrf_token(state[STATE_KEY])

            if http_method(scope) not in SAFE_METHODS and not scope["path"].startswith(
                exempt_prefixes
            ):
                try:
                    body = await read_body(receive)
                except BodyTooLarge:
                    await send_problem(send, 413, "request body too large", scope["path"])
                    return
                expected = codec.csrf_token(state[STATE_KEY])
                given = header(scope, CSRF_HEADER) or _form_field(scope, body, CSRF_FIELD)
                if identity is None or not given or not same_secret(given, expected):
                    await send_problem(
                        send,
                        403,
                        "Missing or wrong CSRF token: send the _csrf_token form field or the "
                        "X-CSRF-Token header from GET /auth/session",
                        scope["path"],
                    )
                    return
                receive = replaying_receive(body, receive)

            async def send_with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start" and state.get(CHANGED_KEY):
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", _cookieheader(codec, state[STATE_KEY])))
                    message = {**message, "headers": headers}
                await send(message)

            def _cookieheader(codec: SessionCodec, identity: Identity) -> bytes:
                parts = [
                    f"{COOKIE_NAME}={codec.encode(identity)}",
                    "Path=/",
                    f"Max-Age={COOKIE_MAX_AGE}",
                    "HttpOnly",
                    "SameSite=Lax",
                ]
                if cookie_domain:
                    parts.append(f"Domain={cookie_domain}")
                if secure:
                    parts.append("Secure")
                return "; ".join(parts).encode("latin-1")

            await app(scope, receive, send_with_cookie)

        return handle

    return middleware


def _form_field(scope: Scope, body: bytes, name: str) -> str | None:
    content_type = (header(scope, "content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    values = parse_qs(body.decode("utf-8", "replace")).get(name)
    return values[0] if values else None
