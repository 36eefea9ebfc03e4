"""Events' own settings, typed and checked once at start-up (``EVENTS_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from apps.common.settings import ConfigError, Settings


@dataclass(frozen=True)
class EventsSettings:
    # How long a booking in a cart is held for its owner; orders extends it while the order
    # can be paid.
    hold_seconds: float = 900.0
    # How often ended holds are swept back to open (for tidiness only: an ended hold blocks
    # nobody whether or not it was swept).
    sweep_seconds: float = 60.0

    @property
    def hold(self) -> timedelta:
        return timedelta(seconds=self.hold_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventsSettings:
        defaults = cls()
        return cls(
            hold_seconds=_seconds(settings, "EVENTS_HOLD_SECONDS", defaults.hold_seconds),
            sweep_seconds=_seconds(settings, "EVENTS_SWEEP_SECONDS", defaults.sweep_seconds),
        )


def _seconds(settings: Settings, name: str, default: float) -> float:
    raw = settings.extra.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be more than 0 seconds, not {raw!r}")
    return value
