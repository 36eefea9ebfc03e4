"""Cart's own settings, typed and checked once at start-up (``CART_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass

from apps.common.settings import Settings, setting_number


@dataclass(frozen=True)
class CartSettings:
    # New anonymous carts checked out per client address (an IPv6 client's /64) a minute; 0
    # turns the limit off. Orders bounds each buyer (a user or a browser session); this bounds
    # a client that starts a new session for every checkout. Generous, as many buyers may
    # share one address (an office, a mobile carrier's NAT), and signed-in buyers are not
    # counted.
    anonymous_checkouts_per_address: int = 30
    # How long a checkout waits for orders' answer, in all: what a buyer is kept waiting on
    # a stuck orders before "Checkout not confirmed" (the order may exist; checking out again
    # is safe: the same cart replays it). A working orders answers in well under a second
    # (bench/README.md: p99 0.12 s with four clients); orders itself may take up to
    # CREATE_ORDER_MAX_SECONDS (25 s) before it gives up, longer than a person waits.
    checkout_wait_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CartSettings:
        defaults = cls()
        return cls(
            anonymous_checkouts_per_address=setting_number(
                settings.extra,
                "CART_ANONYMOUS_CHECKOUTS_PER_ADDRESS",
                int,
                defaults.anonymous_checkouts_per_address,
                zero_allowed=True,
            ),
            checkout_wait_seconds=setting_number(
                settings.extra,
                "CART_CHECKOUT_WAIT_SECONDS",
                float,
                defaults.checkout_wait_seconds,
            ),
        )
