"""HEAD answered wherever GET is, as RFC 9110 (9.3.2) asks of every general-purpose server:
the GET handler runs and its status and headers go out, its body does not. Litestar routes
HEAD only to handlers that list it, so without this every page answered 405 to `curl -I`,
uptime monitors and link checkers."""

from __future__ import annotations

from typing import cast

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from apps.common.asgi import header, http_method

# Set on the GET scope a HEAD goes in as: what renders a page for its reader alone (a notice
# shown once) knows that nobody will read this one.
ASKED_AS_HEAD_KEY = "rose_asked_as_head"


# The headers a browser marks a prefetch (or a prerender) with, and the first word each says:
# Sec-Purpose (Chromium's and Firefox's link prefetch and speculation rules: "prefetch",
# "prefetch;prerender"), Purpose (older Chromium), X-Purpose (Safari's "preview"), X-Moz (older
# Firefox).
_PREFETCH_HEADERS = (
    ("sec-purpose", "prefetch"),
    ("purpose", "prefetch"),
    ("x-purpose", "preview"),
    ("x-purpose", "prefetch"),
    ("x-moz", "prefetch"),
)


def asked_as_head(scope: Scope) -> bool:
    """Whether this GET is a HEAD's (its body will be dropped)."""
    return bool(scope.get(ASKED_AS_HEAD_KEY))


def prefetched(scope: Scope) -> bool:
    """Whether this GET is a browser's prefetch: nobody is looking at the page yet, and maybe
    nobody ever will (a prefetched link the visitor does not follow)."""
    for name, word in _PREFETCH_HEADERS:
        value = header(scope, name)
        if value is not None and value.split(",")[0].split(";")[0].strip().lower() == word:
            return True
    return False


def unseen(scope: Scope) -> bool:
    """Whether nobody is shown this GET's page as it is answered (a HEAD's, a prefetch's): what
    a page shows its reader once (a notice) is left for the GET that does show it."""
    return asked_as_head(scope) or prefetched(scope)


def head_as_get(app: ASGIApp) -> ASGIApp:
    """Edge middleware: a HEAD request goes in as GET (a copy of the scope, so that the layers
    outside it, the access log among them, still see HEAD) and its body is dropped. GET is
    safe, so HEAD stays safe: nothing inside asks it for a CSRF token or writes for it. The
    ``Allow`` header of other methods' answers (OPTIONS, 405) names HEAD wherever it names GET."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        method = http_method(scope)
        if scope["type"] != "http" or method == "GET":
            await app(scope, receive, send)
            return
        if method != "HEAD":
            await app(scope, receive, _allowing_head(send))
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                # Content-Length stays the GET's, as HEAD's should.
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        as_get = cast("Scope", {**scope, "method": "GET", ASKED_AS_HEAD_KEY: True})
        await app(as_get, receive, without_body)

    return answer


def _allowing_head(send: Send) -> Send:
    async def with_head(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            for index, (name, value) in enumerate(headers):
                if name.lower() == b"allow":
                    methods = [part.strip() for part in value.split(b",")]
                    if b"GET" in methods and b"HEAD" not in methods:
                        methods.insert(methods.index(b"GET") + 1, b"HEAD")
                        headers[index] = (name, b", ".join(methods))
                        message = {**message, "headers": headers}
                    break
        await send(message)

    return with_head
