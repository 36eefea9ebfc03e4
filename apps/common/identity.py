"""Who is asking: one signed session cookie shared by every public service.

The cookie holds a session id, the user id once signed in, and its own expiry, signed with
``SESSION_SECRET`` (HMAC-SHA256): a client cannot make itself another user, and a copied cookie
stops working when its signed expiry passes, whatever the browser keeps. Signing in or out
issues a new session id. The format is a contract with the account side of rose-ash
(docs/sign-in.md). On localhost the cookie is shared across ports; in production
``SESSION_COOKIE_DOMAIN`` shares it across hosts.

Forms are protected against cross-site request forgery with a token bound to the whole identity
(session id and user id): every unsafe public request must carry it as the ``_csrf_token`` form
field (templates write it with ``{{ csrf_input }}``; a URL-encoded or a multipart form) or the
``X-CSRF-Token`` header. API clients read it from ``GET /auth/session``. A token read before
signing in is refused after.

During a rotation of ``SESSION_SECRET`` the codec signs with the current secret and accepts the
ones listed in ``SESSION_SECRET_PREVIOUS`` too.

A form post that redirects may leave the page it lands on a notice (``flash_notice``): a second
cookie, signed and bound to the session, that the next page shows once (``take_notice``) and
then forgets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from apps.common.asgi import (
    BodyTooLarge,
    header,
    http_method,
    read_body,
    replaying_receive,
    send_problem,
)
from apps.common.head import unseen
from apps.common.internal_paths import is_internal_path
from apps.common.signing import same_secret

COOKIE_NAME = "rose_session"
# A notice for the next page (flash_notice); it lives no longer than this unless shown.
NOTICE_COOKIE = "rose_notice"
NOTICE_LIFETIME_SECONDS = 300
NOTICE_MAX_LENGTH = 500
# What a cookie's ``sid`` and ``uid`` may be (docs/sign-in.md): URL-safe characters, no more
# than the services store (varchar(64)); a user id from 1 to 2^31-1, dev-login's bounds. A
# signed cookie carrying anything else is no session, like one whose MAC or expiry fails.
SESSION_ID_FORM = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_USER_ID = 2**31 - 1
# How long a session lasts without a visit; each visit in its second half extends it.
SESSION_LIFETIME_SECONDS = 60 * 60 * 24 * 30
# The field name Litestar's ``{{ csrf_input }}`` template helper renders; we fill in our token.
CSRF_FIELD = "_csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
STATE_KEY = "rose_identity"
CHANGED_KEY = "rose_identity_changed"
# The notice the request's cookie carried (None: none, or not this session's), whether a page
# showed it, and a notice the response leaves for the next page.
NOTICE_KEY = "rose_notice"
NOTICE_TAKEN_KEY = "rose_notice_taken"
NEW_NOTICE_KEY = "rose_notice_new"


def session_cookie(scope: Scope, cookie: str = COOKIE_NAME) -> str | None:
    """The session cookie's value in the request's ``Cookie`` headers, whatever other cookies
    share them. (``http.cookies`` stops at the first pair that is not an RFC 6265 token, such as
    a JSON value another site on the domain set; then the session after it went unseen and the
    visitor was anonymous on every request.) ``cookie``: another of ours, read the same way."""
    for key, value in scope.get("headers", []):
        if key.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            name, equals, given = pair.partition("=")
            if equals and name.strip() == cookie:
                return given.strip().strip('"') or None
    return None


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


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


def new_anonymous_identity() -> Identity:
    return Identity(session_id=new_session_id())


@dataclass(frozen=True)
class SessionKeys:
    """The keys one ``SESSION_SECRET`` gives: the cookie's MAC and the CSRF tokens."""

    cookie: bytes
    csrf: bytes
    notice: bytes

    @classmethod
    def of(cls, secret: str) -> SessionKeys:
        return cls(
            cookie=hashlib.sha256(b"rose-session:" + secret.encode()).digest(),
            csrf=hashlib.sha256(b"rose-csrf:" + secret.encode()).digest(),
            notice=hashlib.sha256(b"rose-notice:" + secret.encode()).digest(),
        )


@dataclass(frozen=True)
class Session:
    identity: Identity
    expires_at: int


class SessionCodec:
    def __init__(
        self,
        secret: str,
        accepted: Iterable[str] = (),
        *,
        lifetime: int = SESSION_LIFETIME_SECONDS,
    ) -> None:
        self._current = SessionKeys.of(secret)
        self._all = (self._current, *(SessionKeys.of(other) for other in accepted))
        self.lifetime = lifetime

    @staticmethod
    def _mac(key: bytes, payload: bytes) -> str:
        digest = hmac.new(key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def encode(self, identity: Identity, expires_at: int | None = None) -> str:
        data: dict[str, str | int] = {
            "sid": identity.session_id,
            "exp": expires_at if expires_at is not None else int(time.time()) + self.lifetime,
        }
        if identity.user_id is not None:
            data["uid"] = identity.user_id
        payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        payload = payload.rstrip(b"=")
        return f"{payload.decode()}.{self._mac(self._current.cookie, payload)}"

    def decode(self, value: str, *, now: float | None = None) -> Session | None:
        """The session of a cookie signed with any accepted secret and not expired; else None."""
        payload, _, mac = value.partition(".")
        if not payload or not mac:
            return None
        if not any(
            same_secret(mac, self._mac(keys.cookie, payload.encode())) for keys in self._all
        ):
            return None
        try:
            padded = payload + "=" * (-len(payload) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
            session_id, user_id, expires_at = data["sid"], data.get("uid"), data["exp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(session_id, str) or not SESSION_ID_FORM.fullmatch(session_id):
            return None
        if user_id is not None and not (
            isinstance(user_id, int)
            and not isinstance(user_id, bool)
            and 0 < user_id <= MAX_USER_ID
        ):
            return None
        if not isinstance(expires_at, int) or isinstance(expires_at, bool):
            return None
        if expires_at <= (time.time() if now is None else now):
            return None
        return Session(Identity(session_id=session_id, user_id=user_id), expires_at)

    @staticmethod
    def _token(keys: SessionKeys, identity: Identity) -> str:
        bound = f"{identity.session_id}|{identity.user_id or ''}".encode()
        return hmac.new(keys.csrf, bound, hashlib.sha256).hexdigest()[:40]

    def csrf_token(self, identity: Identity) -> str:
        return self._token(self._current, identity)

    def csrf_valid(self, identity: Identity, given: str) -> bool:
        return any(same_secret(given, self._token(keys, identity)) for keys in self._all)

    def _notice_mac(self, keys: SessionKeys, identity: Identity, payload: str) -> str:
        return self._mac(keys.notice, f"{identity.session_id}|{payload}".encode())

    def encode_notice(self, identity: Identity, text: str) -> str:
        """A notice cookie's value: the text, signed for this session alone (nobody else can
        make a page of ours say something, and a notice never follows a copied cookie)."""
        payload = base64.urlsafe_b64encode(text[:NOTICE_MAX_LENGTH].encode()).rstrip(b"=")
        return f"{payload.decode()}.{self._notice_mac(self._current, identity, payload.decode())}"

    def decode_notice(self, identity: Identity, value: str) -> str | None:
        """The text of a notice cookie made for ``identity``'s session; else None."""
        payload, _, mac = value.partition(".")
        if not payload or not mac:
            return None
        if not any(
            same_secret(mac, self._notice_mac(keys, identity, payload)) for keys in self._all
        ):
            return None
        try:
            return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None


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


def flash_notice(scope: Scope, text: str) -> None:
    """Leave ``text`` for the next page this browser is shown (after a redirect): it shows it
    once. The response carries it as a cookie for the request's identity as it ends."""
    scope.setdefault("state", {})[NEW_NOTICE_KEY] = text


def take_notice(scope: Scope) -> str | None:
    """The notice left for this page (None: none); the response then forgets it, unless nobody
    is shown the page yet (a HEAD's, whose body is dropped; a browser's prefetch, which may
    never be shown): the GET of the visit still finds it. A prefetch's page carries it too,
    for a browser that shows the prefetched page: at worst it is shown twice, never lost."""
    state = scope.get("state", {})
    text = state.get(NOTICE_KEY)
    if text is not None and not unseen(scope):
        state[NOTICE_TAKEN_KEY] = True
    return text


def origin_of(url: str) -> str | None:
    """A URL's origin as a browser writes it in an ``Origin`` header (``scheme://host[:port]``,
    lower case, no default port); None for a URL without one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    port = f":{parts.port}" if parts.port not in (None, default) else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def identity_middleware(
    codec: SessionCodec,
    *,
    cookie_domain: str | None,
    secure: bool,
    csrf_exempt: Iterable[str] = (),
    sign_out_path: str | None = None,
    own_origins: Iterable[str] = (),
) -> Callable[[ASGIApp], ASGIApp]:
    """Resolve the identity from the cookie, check CSRF on unsafe requests, write the cookie.
    ``csrf_exempt``: path prefixes that machines call (a payment provider's webhook): no CSRF
    check, and no session cookie issued to them. ``sign_out_path``: signing out, which a page
    of ours (``own_origins``: the services' public URLs) may ask for with a token that no longer
    fits (:func:`_signs_out_from_our_page`)."""
    exempt_prefixes = tuple(csrf_exempt)
    origins = frozenset(filter(None, (origin_of(url) for url in own_origins)))
    # Both spellings the route answers at (Litestar takes a path with or without its final /).
    sign_out_paths = (
        frozenset({sign_out_path.rstrip("/"), sign_out_path.rstrip("/") + "/"})
        if sign_out_path
        else frozenset()
    )

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or is_internal_path(scope["path"]):
                await app(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            given = session_cookie(scope)
            session = codec.decode(given) if given else None
            identity = session.identity if session is not None else None
            exempt = scope["path"].startswith(exempt_prefixes)
            # A new session, or one in the second half of its life: the cookie is (re)issued;
            # never to the machines that call the exempt paths (they keep no cookies).
            state[CHANGED_KEY] = not exempt and (
                session is None or session.expires_at - time.time() < codec.lifetime / 2
            )
            state[STATE_KEY] = identity or new_anonymous_identity()
            notice_cookie = None if exempt else session_cookie(scope, NOTICE_COOKIE)
            state[NOTICE_KEY] = (
                codec.decode_notice(identity, notice_cookie)
                if identity is not None and notice_cookie
                else None
            )
            # Litestar's template helper {{ csrf_input }} renders this token.
            ScopeState.from_scope(scope).csrf_token = codec.csrf_token(state[STATE_KEY])

            if http_method(scope) not in SAFE_METHODS and not exempt:
                try:
                    body = await read_body(receive)
                except BodyTooLarge:
                    await send_problem(
                        send, 413, "request body too large", scope["path"], scope=scope
                    )
                    return
                given = header(scope, CSRF_HEADER) or _form_field(scope, body, CSRF_FIELD)
                fits = identity is not None and given and codec.csrf_valid(identity, given)
                if not fits and not (
                    scope["path"] in sign_out_paths and _signs_out_from_our_page(scope, origins)
                ):
                    await send_problem(
                        send,
                        403,
                        "Missing or out-of-date CSRF token: reload the page and send the form "
                        "again (API clients: the X-CSRF-Token header, from GET /auth/session)",
                        scope["path"],
                        scope=scope,
                    )
                    return
                receive = replaying_receive(body, receive)

            async def send_with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    added: list[tuple[bytes, bytes]] = []
                    if state.get(CHANGED_KEY):
                        added.append((b"set-cookie", _cookieheader(codec, state[STATE_KEY])))
                    notice = _notice_header(state, notice_cookie)
                    if notice is not None:
                        added.append((b"set-cookie", notice))
                    # Looked at only when a cookie would ride on it (most responses carry none).
                    if added and not _shared_cacheable(message.get("headers", [])):
                        message = {**message, "headers": [*message.get("headers", []), *added]}
                await send(message)

            def _notice_header(state: dict[str, Any], given: str | None) -> bytes | None:
                """A new notice for the next page; else the one given forgotten once a page
                showed it (or when it is not this session's: it never will be)."""
                new = state.get(NEW_NOTICE_KEY)
                if new is not None:
                    value = codec.encode_notice(state[STATE_KEY], new)
                    return _header(NOTICE_COOKIE, value, NOTICE_LIFETIME_SECONDS)
                if given and (state.get(NOTICE_TAKEN_KEY) or state.get(NOTICE_KEY) is None):
                    return _header(NOTICE_COOKIE, "", 0)
                return None

            def _cookieheader(codec: SessionCodec, identity: Identity) -> bytes:
                return _header(COOKIE_NAME, codec.encode(identity), codec.lifetime)

            def _header(name: str, value: str, max_age: int) -> bytes:
                parts = [
                    f"{name}={value}",
                    "Path=/",
                    f"Max-Age={max_age}",
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


def _signs_out_from_our_page(scope: Scope, origins: frozenset[str]) -> bool:
    """Whether a sign-out whose CSRF token does not fit the cookie's session came from a page of
    ours: its ``Origin`` is one of the services' own.

    Why that is enough for signing out, and for nothing else. The token, bound to the whole
    identity, proves two things: that a page of ours sent the form (no other site can read
    the token), and that the page was made for the identity the cookie carries now (a form
    read before sign-in must not act as the account after it). The second is what refused
    "Sign out and start afresh" (the error page of an anonymous write to a session sign-in
    adopted) once the visitor's sign-in finished in another tab: the form carries the
    anonymous session's token, the cookie is the account's. For a sign-out it protects
    nothing: whichever session the cookie carries, the answer is the same (it ends, and a new
    anonymous one begins), and ending it is what the visitor pressed the button for.

    The first still holds without the token: every current browser sends ``Origin`` with a
    POST, same-origin ones included, and no page can set or remove it; a form another site
    posts (a forged cross-site sign-out, a sibling host of a shared cookie domain) carries that
    site's origin, and a sandboxed page or a frame of data carries ``null``: both refused. A
    post without ``Origin`` (an old browser, a client that is no one's victim) needs the token
    to fit, as before. Every other unsafe request keeps the token's both proofs."""
    given = header(scope, "origin")
    return given is not None and given in origins


def _shared_cacheable(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a shared cache (a CDN, a caching proxy) may keep the response: a session cookie
    on it would be handed to whoever asks next (audit s20c: static files are ``public``). The
    cookie waits for the next page, which is never cached so."""
    for name, value in headers:
        if name.lower() == b"cache-control":
            directives = {d.strip().split(b"=")[0] for d in value.lower().split(b",")}
            if directives & {b"public", b"s-maxage"}:
                return True
    return False


def _form_field(scope: Scope, body: bytes, name: str) -> str | None:
    """Field ``name`` of a form body, URL-encoded or multipart (a browser form's ``enctype``
    decides; both carry ``{{ csrf_input }}``'s hidden field); None in any other body."""
    given = header(scope, "content-type") or ""
    content_type = given.split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        values = parse_qs(body.decode("utf-8", "replace")).get(name)
        return values[0] if values else None
    if content_type == "multipart/form-data":
        return _multipart_field(given, body, name)
    return None


# A CSRF token is 40 characters: a part of that name much longer is not one.
_MAX_TOKEN_BYTES = 256


def _multipart_field(content_type: str, body: bytes, name: str) -> str | None:
    """The first text part called ``name`` of a multipart body (read already, within the
    edge's body limit), parsed only as far as that part, by the parser Litestar reads the
    form with after (``multipart``, its dependency); None when there is none or the body
    is not multipart (the form's reader refuses that body itself, after)."""
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        return None
    value = bytearray()
    reading = False
    try:
        parser = PushMultipartParser(boundary)
        # Never closed: the parts after the token are not this reader's business.
        for event in parser.parse(body):
            if isinstance(event, MultipartSegment):
                reading = event.name == name and event.filename is None
            elif event is None:
                if reading:
                    return value.decode("utf-8", "replace")
            elif reading:
                value += event
                if len(value) > _MAX_TOKEN_BYTES:
                    return None
    except MultipartError:
        return None
    return None
