"""Blog's own settings, typed and checked once at start-up (``BLOG_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass

from apps.common.settings import ConfigError, Settings, setting_number

# Past this a key is not "kept for late payments" any more (and the interval must fit).
MAX_RETIRED_SUMUP_KEY_DAYS = 3650


@dataclass(frozen=True)
class BlogSettings:
    # How long a SumUp key a page config stopped using (its merchant changed, its key was
    # removed) is kept for orders, whose orders made for that merchant may still be paid late
    # or owed a refund: SumUp's refunds window and a late payment's reconciliation fit well
    # within 90 days. Past it orders cannot read the key, and blog deletes it (when it starts,
    # every ``retired_sumup_key_prune_seconds``, and at a page config write): a kept secret is
    # a liability.
    retired_sumup_key_days: int = 90
    retired_sumup_key_prune_seconds: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BlogSettings:
        defaults = cls()
        days = setting_number(
            settings.extra, "BLOG_RETIRED_SUMUP_KEY_DAYS", int, defaults.retired_sumup_key_days
        )
        if days > MAX_RETIRED_SUMUP_KEY_DAYS:
            raise ConfigError(
                f"BLOG_RETIRED_SUMUP_KEY_DAYS must be at most {MAX_RETIRED_SUMUP_KEY_DAYS}, "
                f"not {days}"
            )
        prune_seconds = setting_number(
            settings.extra,
            "BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS",
            float,
            defaults.retired_sumup_key_prune_seconds,
        )
        return cls(retired_sumup_key_days=days, retired_sumup_key_prune_seconds=prune_seconds)
