"""Production refuses development defaults: with ROSE_ENV=prod every public URL, secret and DSN
is required, start-up names every missing one in one line and exits non-zero, and no public URL
(so nothing orders hands SumUp) may point at this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from apps.blog.settings import BlogSettings
from apps.cart.settings import CartSettings
from apps.common.settings import ConfigError
from apps.events.settings import EventsSettings
from apps.orders.runtime import OrderUrls
from apps.orders.settings import OrdersSettings
from apps.registry import CONTRACTS, settings_for

SECRET = "a-production-secret-0123456789"
PUBLIC = {
    "APP_URL_BLOG": "https://rose-ash.com",
    "APP_URL_MARKET": "https://market.rose-ash.com",
    "APP_URL_CART": "https://cart.rose-ash.com",
    "APP_URL_EVENTS": "https://events.rose-ash.com",
    "APP_URL_ORDERS": "https://orders.rose-ash.com",
}
INTERNAL = {f"INTERNAL_URL_{name.upper()}": f"http://{name}:8000" for name in CONTRACTS}
COMPLETE = {
    "ROSE_ENV": "prod",
    "DATABASE_URL": "postgresql://orders_app:pw@postgres:5432/db_orders",
    "INTERNAL_SECRET": SECRET,
    "SESSION_SECRET": SECRET,
    **PUBLIC,
    **INTERNAL,
}


def without(*names: str) -> dict[str, str]:
    return {key: value for key, value in COMPLETE.items() if key not in names}


def test_a_complete_production_environment_starts():
    settings = settings_for(CONTRACTS["orders"], COMPLETE)
    assert settings.public_urls == {
        "blog": "https://rose-ash.com",
        "market": "https://market.rose-ash.com",
        "cart": "https://cart.rose-ash.com",
        "events": "https://events.rose-ash.com",
        "orders": "https://orders.rose-ash.com",
    }
    urls = OrderUrls(settings.public_urls["orders"])
    assert urls.webhook(7) == "https://orders.rose-ash.com/checkout/webhook/7/"


def test_every_missing_setting_is_named_at_once():
    environ = without("APP_URL_ORDERS", "APP_URL_CART", "SESSION_SECRET", "DATABASE_URL")
    with pytest.raises(ConfigError) as raised:
        settings_for(CONTRACTS["orders"], environ)
    message = str(raised.value)
    assert message == (
        "missing required settings DATABASE_URL_ORDERS or DATABASE_URL, SESSION_SECRET, "
        "APP_URL_CART, APP_URL_ORDERS (ROSE_ENV=prod: no development defaults)"
    )


def test_production_needs_the_internal_url_of_every_other_service():
    # Without one, the first call to that service failed, long after start-up said all was well.
    with pytest.raises(ConfigError) as raised:
        settings_for(CONTRACTS["orders"], without("INTERNAL_URL_CART", "INTERNAL_URL_EVENTS"))
    assert str(raised.value) == (
        "missing required settings INTERNAL_URL_CART, INTERNAL_URL_EVENTS "
        "(ROSE_ENV=prod: no development defaults)"
    )
    # Its own is not needed; in development none is (the local stack sets them).
    assert settings_for(CONTRACTS["orders"], without("INTERNAL_URL_ORDERS")).env == "prod"
    development = {**without(*INTERNAL), "ROSE_ENV": "dev"}
    assert settings_for(CONTRACTS["orders"], development).internal_urls == {}


def test_orders_never_falls_back_to_localhost_in_production():
    # Without APP_URL_ORDERS, orders used to hand SumUp http://localhost:8010/... URLs.
    with pytest.raises(ConfigError, match="APP_URL_ORDERS"):
        settings_for(CONTRACTS["orders"], without("APP_URL_ORDERS"))
    for local in (
        "http://localhost:8010",
        "http://127.0.0.1:8010",
        "http://orders.rose.localhost:8080",
        "http://[::1]:8010",
    ):
        with pytest.raises(ConfigError, match=r"APP_URL_ORDERS=.* points at this machine"):
            settings_for(CONTRACTS["orders"], {**COMPLETE, "APP_URL_ORDERS": local})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APP_URL_ORDERS", "orders.rose-ash.com"),
        ("APP_URL_MARKET", "market.rose-ash.com:443"),
        ("INTERNAL_URL_EVENTS", "events:8000"),
        ("INTERNAL_URL_CART", "ftp://cart:8000"),
        ("INTERNAL_URL_BLOG", "http://"),
        # Review 7 L4: a traceback, or taken as they were.
        ("INTERNAL_URL_EVENTS", "http://[::1"),
        ("INTERNAL_URL_EVENTS", "http://events:abc"),
        ("INTERNAL_URL_EVENTS", "http://events:99999"),
        ("INTERNAL_URL_EVENTS", "http://exa mple:80"),
        ("INTERNAL_URL_EVENTS", "http://events:8000\nHost: evil"),
        # Probe attacker2: a control character that is no whitespace (a header made with it is
        # refused as each request is sent), a host no host name is, and a query or fragment,
        # after which every path the services append is read as the query (SumUp's webhook to
        # "https://orders.example/?a=1/checkout/webhook/7/" is the site's root).
        ("INTERNAL_URL_EVENTS", "http://events:8000\x00"),
        ("INTERNAL_URL_EVENTS", "http://events\x7f:8000"),
        ("APP_URL_ORDERS", 'https://orders"><b>.rose-ash.com'),
        ("APP_URL_ORDERS", "https://orders.rose-ash.com/?utm=1"),
        ("APP_URL_ORDERS", "https://orders.rose-ash.com/#"),
    ],
)
def test_a_url_setting_that_is_not_an_http_url_is_named_at_start(name, value):
    """Probe newuser: a URL without its scheme was taken as it was: orders handed SumUp
    "orders.rose-ash.com/checkout/webhook/7/" and every call to "events:8000" failed, long
    after start-up said all was well."""
    with pytest.raises(ConfigError) as raised:
        settings_for(CONTRACTS["orders"], {**COMPLETE, name: value})
    assert str(raised.value) == (
        f"{name} must be an http:// or https:// URL with a host, not {value!r}"
    )
    # In development too: the local stack's own are such URLs.
    with pytest.raises(ConfigError, match=name):
        settings_for(CONTRACTS["orders"], {**COMPLETE, "ROSE_ENV": "dev", name: value})


def test_development_keeps_its_defaults():
    settings = settings_for(
        CONTRACTS["orders"],
        {**without(*PUBLIC, "SESSION_SECRET"), "SESSION_SECRET": SECRET, "ROSE_ENV": "dev"},
    )
    assert settings.public_urls["orders"] == "http://localhost:8010"


def test_internal_services_need_no_public_urls():
    settings = settings_for(CONTRACTS["relations"], without(*PUBLIC, "SESSION_SECRET"))
    assert settings.env == "prod"


def test_a_service_process_refuses_to_start_naming_each_missing_setting(tmp_path):
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("APP_URL_", "DATABASE_URL", "INTERNAL_", "SESSION_", "ROSE_"))
    }
    environ.update(without("APP_URL_ORDERS", "INTERNAL_SECRET"))
    result = subprocess.run(
        [sys.executable, "-m", "ops.stack.serve", "orders", "--port", "1"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cannot start orders: missing required settings INTERNAL_SECRET, "
        "APP_URL_ORDERS (ROSE_ENV=prod: no development defaults)"
    ]


def test_the_database_pool_is_set_per_service_or_for_all():
    assert settings_for(CONTRACTS["orders"], COMPLETE).database_pool_size == 10
    shared = {**COMPLETE, "DATABASE_POOL_SIZE": "4", "DATABASE_POOL_TIMEOUT": "2.5"}
    assert settings_for(CONTRACTS["orders"], shared).database_pool_size == 4
    assert settings_for(CONTRACTS["orders"], shared).database_pool_timeout == 2.5
    own = {**shared, "DATABASE_POOL_SIZE_ORDERS": "12"}
    assert settings_for(CONTRACTS["orders"], own).database_pool_size == 12


def test_the_pool_is_opened_at_start_up_unless_a_setting_says_not():
    assert settings_for(CONTRACTS["orders"], COMPLETE).database_pool_warm is True
    off = {**COMPLETE, "DATABASE_POOL_WARM": "0"}
    assert settings_for(CONTRACTS["orders"], off).database_pool_warm is False
    own = {**off, "DATABASE_POOL_WARM_ORDERS": "yes"}
    assert settings_for(CONTRACTS["orders"], own).database_pool_warm is True
    assert settings_for(CONTRACTS["cart"], own).database_pool_warm is False


@pytest.mark.parametrize("value", ["2", "maybe", "enabled"])
def test_a_pool_warm_setting_that_is_not_on_or_off_is_named(value):
    with pytest.raises(ConfigError, match=f"DATABASE_POOL_WARM must be one of .*, not '{value}'"):
        settings_for(CONTRACTS["orders"], {**COMPLETE, "DATABASE_POOL_WARM": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE_ORDERS", "many"),
        ("DATABASE_POOL_SIZE", "2.5"),
        ("DATABASE_POOL_TIMEOUT", "-1"),
        ("DATABASE_POOL_TIMEOUT", "nan"),
        ("DATABASE_POOL_TIMEOUT_ORDERS", "inf"),
    ],
)
def test_a_pool_setting_that_is_not_a_positive_number_is_named(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be .* above zero, not '{value}'"):
        settings_for(CONTRACTS["orders"], {**COMPLETE, name: value})


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_merchant_account_time_that_is_not_a_number_of_seconds_is_named(value):
    environment = {**COMPLETE, "ORDERS_MERCHANT_ACCOUNT_SECONDS": value}
    with pytest.raises(ConfigError, match=f"ORDERS_MERCHANT_ACCOUNT_SECONDS must be .*'{value}'"):
        OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], environment))


def test_a_merchant_account_time_of_zero_remembers_nothing():
    environment = {**COMPLETE, "ORDERS_MERCHANT_ACCOUNT_SECONDS": "0"}
    own = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], environment))
    assert own.merchant_account_seconds == 0
    default = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], COMPLETE))
    assert default.merchant_account_seconds == 60


def test_checkouts_at_once_leave_connections_of_the_pool_for_the_rest():
    """ORDERS_CHECKOUTS_AT_ONCE: by default the pool's size less 3 (for webhooks, pages,
    readiness, the outbox); set, it must leave at least one."""

    def own(**environment: str) -> OrdersSettings:
        return OrdersSettings.from_settings(
            settings_for(CONTRACTS["orders"], {**COMPLETE, **environment})
        )

    assert own().checkouts_at_once == 7
    assert own(DATABASE_POOL_SIZE_ORDERS="20").checkouts_at_once == 17
    assert own(DATABASE_POOL_SIZE_ORDERS="2").checkouts_at_once == 1
    assert own(ORDERS_CHECKOUTS_AT_ONCE="9").checkouts_at_once == 9
    with pytest.raises(ConfigError, match="ORDERS_CHECKOUTS_AT_ONCE must be less than the pool"):
        own(ORDERS_CHECKOUTS_AT_ONCE="10")
    with pytest.raises(ConfigError, match="ORDERS_CHECKOUTS_AT_ONCE must be a positive number"):
        own(ORDERS_CHECKOUTS_AT_ONCE="0")


# inf was taken: a hold of inf seconds overflowed timedelta at the first booking (a 500), and a
# sweep every inf seconds never ran; full-width digits were read as digits.
@pytest.mark.parametrize("name", ["EVENTS_HOLD_SECONDS", "EVENTS_SWEEP_SECONDS"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon", "\uff19\uff10"])
def test_an_events_time_that_is_not_a_number_of_seconds_is_named(name, value):
    environment = {**COMPLETE, name: value}
    with pytest.raises(ConfigError, match=f"{name} must be .*'{value}'"):
        EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))


def test_an_orders_payable_time_must_leave_room_for_its_holds():
    """Events holds bookings at most 2 h; they stay held 30 min past the payable time."""
    fits = {**COMPLETE, "ORDERS_PAYABLE_SECONDS": "5400"}
    assert (
        OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], fits)).payable_seconds
        == 5400
    )
    too_long = {**COMPLETE, "ORDERS_PAYABLE_SECONDS": "5401"}
    with pytest.raises(ConfigError, match="ORDERS_PAYABLE_SECONDS must be at most 5400"):
        OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], too_long))


def test_an_orders_payable_time_must_leave_room_to_pay_again():
    """Pay again makes no checkout with less than MIN_TIME_TO_PAY (2 min) left: a payable time
    shorter than a first try plus that refused every pay again. At least 2 x 120 s it is."""
    fits = {**COMPLETE, "ORDERS_PAYABLE_SECONDS": "240"}
    assert (
        OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], fits)).payable_seconds == 240
    )
    for seconds in ("239", "120", "60"):
        too_short = {**COMPLETE, "ORDERS_PAYABLE_SECONDS": seconds}
        with pytest.raises(ConfigError) as refused:
            OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], too_short))
        said = str(refused.value)
        assert said.startswith(f"ORDERS_PAYABLE_SECONDS must be at least 240, not {seconds}:")
        assert "pay again" in said
        assert "\n" not in said


def test_an_order_with_nothing_to_pay_waits_for_its_confirmation_within_the_budget():
    """A free order answers after events holds its bookings and they are confirmed: both
    waits must fit in what create-order's callers wait (25 s, less the database's margin)."""
    fits = {**COMPLETE, "ORDERS_RETURN_DELIVERY_SECONDS": "20"}
    own = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], fits))
    assert own.return_delivery_seconds == 20
    too_long = {**COMPLETE, "ORDERS_RETURN_DELIVERY_SECONDS": "20.5"}
    with pytest.raises(ConfigError, match=r"ORDERS_RETURN_DELIVERY_SECONDS .* must be at most"):
        OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], too_long))


def test_events_times_default_and_take_fractions():
    default = EventsSettings.from_settings(settings_for(CONTRACTS["events"], COMPLETE))
    assert (default.hold_seconds, default.sweep_seconds) == (900, 60)
    environment = {**COMPLETE, "EVENTS_HOLD_SECONDS": "1.5", "EVENTS_SWEEP_SECONDS": " 30 "}
    own = EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))
    assert (own.hold_seconds, own.sweep_seconds) == (1.5, 30)


@pytest.mark.parametrize("value", ["-1", "3.5", "lots", "\uff13"])
def test_a_checkout_limit_per_address_that_is_not_a_count_is_named(value):
    environment = {**COMPLETE, "CART_ANONYMOUS_CHECKOUTS_PER_ADDRESS": value}
    with pytest.raises(ConfigError, match=f"CART_ANONYMOUS_CHECKOUTS_PER_ADDRESS must .*'{value}'"):
        CartSettings.from_settings(settings_for(CONTRACTS["cart"], environment))


def test_the_checkout_limit_per_address_is_30_and_0_turns_it_off():
    default = CartSettings.from_settings(settings_for(CONTRACTS["cart"], COMPLETE))
    assert default.anonymous_checkouts_per_address == 30
    environment = {**COMPLETE, "CART_ANONYMOUS_CHECKOUTS_PER_ADDRESS": "0"}
    off = CartSettings.from_settings(settings_for(CONTRACTS["cart"], environment))
    assert off.anonymous_checkouts_per_address == 0


def test_the_holds_per_account_are_20_and_0_turns_the_limit_off():
    default = EventsSettings.from_settings(settings_for(CONTRACTS["events"], COMPLETE))
    assert default.holds_per_account == 20
    environment = {**COMPLETE, "EVENTS_HOLDS_PER_ACCOUNT": "0"}
    off = EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))
    assert off.holds_per_account == 0
    for value in ("-1", "2.5", "many"):
        environment = {**COMPLETE, "EVENTS_HOLDS_PER_ACCOUNT": value}
        with pytest.raises(ConfigError, match=f"EVENTS_HOLDS_PER_ACCOUNT must .*'{value}'"):
            EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))


def test_the_anonymous_holds_per_address_are_20_and_0_turns_the_limit_off():
    default = EventsSettings.from_settings(settings_for(CONTRACTS["events"], COMPLETE))
    assert default.anonymous_holds_per_address == 20
    environment = {**COMPLETE, "EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS": "0"}
    off = EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))
    assert off.anonymous_holds_per_address == 0
    for value in ("-1", "2.5", "many"):
        environment = {**COMPLETE, "EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS": value}
        with pytest.raises(
            ConfigError, match=f"EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS must .*'{value}'"
        ):
            EventsSettings.from_settings(settings_for(CONTRACTS["events"], environment))


def test_the_attempts_one_order_may_have_are_10_and_a_positive_count():
    default = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], COMPLETE))
    assert default.attempts_per_order == 10
    for value in ("0", "-2", "many"):
        environment = {**COMPLETE, "ORDERS_ATTEMPTS_PER_ORDER": value}
        with pytest.raises(ConfigError, match=f"ORDERS_ATTEMPTS_PER_ORDER must .*'{value}'"):
            OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], environment))


def test_pay_again_per_address_is_30_0_turns_it_off_and_else_a_count():
    default = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], COMPLETE))
    assert default.pay_again_per_address == 30
    environment = {**COMPLETE, "ORDERS_PAY_AGAIN_PER_ADDRESS": "0"}
    off = OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], environment))
    assert off.pay_again_per_address == 0
    for value in ("-1", "3.5", "lots", "\uff13"):
        environment = {**COMPLETE, "ORDERS_PAY_AGAIN_PER_ADDRESS": value}
        with pytest.raises(ConfigError, match=f"ORDERS_PAY_AGAIN_PER_ADDRESS must .*'{value}'"):
            OrdersSettings.from_settings(settings_for(CONTRACTS["orders"], environment))


def test_retired_sumup_keys_are_kept_90_days_unless_blog_says_otherwise():
    default = BlogSettings.from_settings(settings_for(CONTRACTS["blog"], COMPLETE))
    assert default.retired_sumup_key_days == 90
    environment = {**COMPLETE, "BLOG_RETIRED_SUMUP_KEY_DAYS": "30"}
    own = BlogSettings.from_settings(settings_for(CONTRACTS["blog"], environment))
    assert own.retired_sumup_key_days == 30


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "forever", "\uff19\uff10", "3651"])
def test_a_retired_key_time_that_is_not_a_number_of_days_is_named(value):
    environment = {**COMPLETE, "BLOG_RETIRED_SUMUP_KEY_DAYS": value}
    with pytest.raises(ConfigError, match="BLOG_RETIRED_SUMUP_KEY_DAYS must be"):
        BlogSettings.from_settings(settings_for(CONTRACTS["blog"], environment))


def test_retired_keys_are_pruned_hourly_unless_blog_says_otherwise():
    default = BlogSettings.from_settings(settings_for(CONTRACTS["blog"], COMPLETE))
    assert default.retired_sumup_key_prune_seconds == 3600.0
    environment = {**COMPLETE, "BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS": "60"}
    own = BlogSettings.from_settings(settings_for(CONTRACTS["blog"], environment))
    assert own.retired_sumup_key_prune_seconds == 60.0


@pytest.mark.parametrize("value", ["0", "-1", "often", "inf", "nan"])
def test_a_prune_interval_that_is_not_a_positive_number_is_named(value):
    environment = {**COMPLETE, "BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS": value}
    with pytest.raises(ConfigError, match="BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS must be"):
        BlogSettings.from_settings(settings_for(CONTRACTS["blog"], environment))


@pytest.mark.parametrize(("value", "secure"), [("on", False), ("TRUE", False), ("off", True)])
def test_the_cookie_switches_read_on_and_off_as_every_switch_does(value, secure):
    """Probe newuser: SESSION_COOKIE_INSECURE took only 1, true and yes: ``on`` (as
    DATABASE_POOL_WARM takes) or ``TRUE`` was ignored without a word, and on a plain-HTTP
    production nobody could sign in."""
    environ = {**COMPLETE, "SESSION_COOKIE_INSECURE": value}
    assert settings_for(CONTRACTS["orders"], environ).session_cookie_secure is secure
    development = {**COMPLETE, "ROSE_ENV": "dev", "SESSION_COOKIE_SECURE": value}
    assert settings_for(CONTRACTS["orders"], development).session_cookie_secure is not secure


@pytest.mark.parametrize("name", ["SESSION_COOKIE_INSECURE", "SESSION_COOKIE_SECURE"])
def test_a_cookie_switch_that_is_neither_on_nor_off_is_named(name):
    with pytest.raises(ConfigError, match=f"{name} must be one of 1, true"):
        settings_for(CONTRACTS["orders"], {**COMPLETE, name: "sometimes"})


@pytest.mark.parametrize(
    "value",
    [
        "http://[fd00::7]:8000",
        "HTTPS://Orders.Rose-Ash.com",
        "http://events:8000/prefix/",
        "http://user:pass@events:8000",
    ],
)
def test_valid_url_settings_are_taken(value):
    settings = settings_for(CONTRACTS["orders"], {**COMPLETE, "INTERNAL_URL_EVENTS": value})
    assert settings.internal_urls["events"] == value.rstrip("/")


def test_a_host_name_not_in_its_ascii_form_is_named_so():
    """Review 8 L4: a Unicode host name was refused as if it were no URL at all."""
    with pytest.raises(ConfigError, match=r"host name in its xn-- form"):
        settings_for(CONTRACTS["orders"], {**COMPLETE, "APP_URL_ORDERS": "https://café.example"})
    settings = settings_for(
        CONTRACTS["orders"], {**COMPLETE, "APP_URL_ORDERS": "https://xn--caf-dma.example"}
    )
    assert settings.public_urls["orders"] == "https://xn--caf-dma.example"
