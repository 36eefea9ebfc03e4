"""Screenshots of every public page at 1280 and 390 px (docs/screenshots/*.png), taken with
Debian's chromium through Playwright from a running stack (``rose up``, with its demo data).

    .venv/bin/rose up &                       # the stack, with demo data
    .venv/bin/python -m ops.stack.screenshots  # needs the test extras (Playwright)

The tour signs in as user 1 (an editor in development), puts a product and tickets in the cart
and checks out once (an order waiting for payment), so every page shows something. The browser
tests' accessibility check (axe-core) walks the same pages.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

WIDTHS = {"desktop": (1280, 900), "mobile": (390, 844)}
OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Debian's chromium, headless, quiet: no network of its own, no updates, no sync.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def browser_urls(services: dict[str, str]) -> dict[str, str]:
    """What a browser uses: ``localhost``, so the session cookie is shared by every service."""
    return {name: url.replace("127.0.0.1", "localhost") for name, url in services.items()}


def tour(urls: dict[str, str], page: Any) -> list[tuple[str, str]]:
    """Every public page (name, URL), after giving them something to show: signed in as user 1
    with a product and tickets in the cart and an order waiting for payment."""
    blog, market, cart, events, orders = (
        urls[name].rstrip("/") for name in ("blog", "market", "cart", "events", "orders")
    )
    page.goto(f"{market}/auth/dev-login?user_id=1&next=/product/apple-jam/")
    page.locator("#add-to-cart").click()
    page.goto(f"{events}/")
    page.locator("tr.entry").first.get_by_role("button", name="Add tickets").click()
    page.goto(f"{cart}/")
    page.locator("#checkout").click()
    page.wait_for_url(re.compile(r".*/pay/.+"))
    page.goto(f"{orders}/")
    order = page.locator("a[href^='/order/']").first.get_attribute("href")
    page.goto(f"{market}/product/apple-jam/")
    page.locator("#add-to-cart").click()  # the cart has something again
    return [
        ("blog", f"{blog}/"),
        ("blog-post", f"{blog}/jam-day/"),
        ("blog-page", f"{blog}/farm-shop/"),
        ("blog-page-admin", f"{blog}/farm-shop/admin/page-config/"),
        ("market", f"{market}/"),
        ("market-liked", f"{market}/?liked=true"),
        ("market-product", f"{market}/product/apple-jam/"),
        ("market-admin", f"{market}/admin/market-places/"),
        ("cart", f"{cart}/"),
        ("cart-page", f"{cart}/page/farm-shop/"),
        ("events", f"{events}/"),
        ("events-page", f"{events}/?page_id=1"),
        ("orders", f"{orders}/"),
        ("order", f"{orders}{order}"),
        ("not-found", f"{market}/no-such-page/"),
    ]


def take(urls: dict[str, str], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        pages = tour(urls, page)
        for label, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            for name, url in pages:
                page.goto(url)
                path = out / f"{name}-{label}.png"
                page.screenshot(path=str(path))
                written.append(path)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> None:
    from ops.stack.state import read_state

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go")
    args = parser.parse_args(argv)
    state = read_state()
    if state is None:
        raise SystemExit("no stack is running: start one with rose up (with its demo data)")
    written = take(browser_urls(state["services"]), args.out)
    print(f"{len(written)} screenshots in {args.out}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
