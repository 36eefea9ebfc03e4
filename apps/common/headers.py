"""Security headers on every answer of a public service: a Content-Security-Policy the pages
satisfy (no inline script, no framing), no MIME sniffing, a referrer policy, and no shared
caching of what a session was answered. (HSTS is set by the proxy, which terminates TLS for the
public hosts.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from litestar.types import ASGIApp, Message, Receive, Scope, Send


def content_security_policy(public_urls: Iterable[str]) -> str:
    # Pages show images of other public services (a product's image on the cart page).
    origins = sorted({f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in public_urls})
    images = " ".join(["'self'", "data:", *origins])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            # The pages' own style blocks; no script runs inline.
            "style-src 'self' 'unsafe-inline'",
            f"img-src {images}",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "object-src 'none'",
        ]
    )


def security_headers(public_urls: Iterable[str]) -> Callable[[ASGIApp], ASGIApp]:
    headers = [
        (b"content-security-policy", content_security_policy(public_urls).encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
    ]
    names = {name for name, _ in headers}
    # Pages carry the visitor's name, cart and CSRF token: no proxy or CDN keeps them for the
    # next visitor, and the browser asks again. An answer that says otherwise keeps its own
    # (market's static images).
    session_answer = (b"cache-control", b"private, no-cache")

    def middleware(app: ASGIApp) -> ASGIApp:
        async def add(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                    if not any(k.lower() == b"cache-control" for k, _ in kept):
                        kept.append(session_answer)
                    message = {**message, "headers": [*kept, *headers]}
                await send(message)

            await app(scope, receive, with_headers)

        return add

    return middleware
