"""Events' own settings, typed and checked once at start-up (``EVENTS_*`` variables)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from apps.common.settings import ConfigError, Settings, setting_number


@dataclass(frozen=True)
class EventsSettings:
    # How long a booking in a cart is held for its owner; orders extends it while the order
    # can be paid.
    hold_seconds: float = 900.0
    # How often ended holds are swept back to open (for tidiness only: an ended hold blocks
    # nobody whether or not it was swept).
    sweep_seconds: float = 60.0
    # What entries may be priced in: the shop's currency (a cart adds up one currency, and an
    # order is paid in one).
    currencies: tuple[str, ...] = ("EUR",)
    # Live anonymous holds of entries per client network (an address, an IPv6 client's /64) at
    # once; 0 turns the limit off. An entry has one booker, so a client minting a session per
    # booking could hold every entry; this bounds it. Generous, as many buyers may share one
    # address (an office, a mobile carrier's NAT); signed-in buyers are counted per account.
    anonymous_holds_per_address: int = 20
    # Live holds of entries per signed-in account at once; 0 turns the limit off. An account is
    # the way round the limit per network: one account could otherwise hold every entry and
    # book them again as the holds end.
    holds_per_account: int = 20

    @property
    def hold(self) -> timedelta:
        return timedelta(seconds=self.hold_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventsSettings:
        defaults = cls()
        return cls(
            hold_seconds=setting_number(
                settings.extra, "EVENTS_HOLD_SECONDS", float, defaults.hold_seconds
            ),
            sweep_seconds=setting_number(
                settings.extra, "EVENTS_SWEEP_SECONDS", float, defaults.sweep_seconds
            ),
            currencies=_currencies(settings, "EVENTS_CURRENCIES", defaults.currencies),
            anonymous_holds_per_address=setting_number(
                settings.extra,
                "EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS",
                int,
                defaults.anonymous_holds_per_address,
                zero_allowed=True,
            ),
            holds_per_account=setting_number(
                settings.extra,
                "EVENTS_HOLDS_PER_ACCOUNT",
                int,
                defaults.holds_per_account,
                zero_allowed=True,
            ),
        )


def _currencies(settings: Settings, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = settings.extra.get(name, "").strip()
    if not raw:
        return default
    codes = tuple(code.strip() for code in raw.split(","))
    wrong = [code for code in codes if not re.fullmatch(r"[A-Z]{3}", code)]
    if wrong:
        raise ConfigError(
            f"{name} must be ISO currency codes separated by commas (EUR,GBP), not {raw!r}"
        )
    return codes
