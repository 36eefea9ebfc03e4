"""Pure pieces of the platform: signatures, settings, the session cookie, the SQL file reader."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from litestar import Litestar, post
from litestar.params import JSONBody

from apps.common.identity import Identity, SessionCodec
from apps.common.internal_client import InternalCallError
from apps.common.settings import ConfigError, Settings
from apps.common.signing import sign_headers, verify
from apps.common.web import FORM_BODY, check_form_routes, read_form_body_first
from ops.db.sqlfiles import parse

SECRET = "unit-test-secret-0123456789"


def test_signature_round_trip_and_every_kind_of_tampering():
    headers = sign_headers(
        SECRET, "POST", "/internal/actions/x?a=1", b'{"a":1}', caller="t", idempotency_key="k"
    )
    args = (headers["X-Rose-Timestamp"], headers["X-Rose-Signature"])
    signed = {"nonce": headers["X-Rose-Nonce"], "idempotency_key": "k"}
    assert verify(SECRET, "POST", "/internal/actions/x?a=1", b'{"a":1}', *args, **signed) is None
    body = b'{"a":1}'
    other_key = {**signed, "idempotency_key": "other"}
    assert verify(SECRET, "POST", "/internal/actions/x?a=1", body, *args, **other_key) is not None
    other_nonce = {**signed, "nonce": "another"}
    assert verify(SECRET, "POST", "/internal/actions/x?a=1", body, *args, **other_nonce) is not None
    path = "/internal/actions/x?a=1"
    assert verify(SECRET, "POST", "/internal/actions/x?a=2", body, *args, **signed) is not None
    assert verify(SECRET, "POST", path, b'{"a":2}', *args, **signed) is not None
    assert verify(SECRET, "GET", path, body, *args, **signed) is not None
    assert verify("other-secret-0123456789", "POST", path, body, *args, **signed)
    assert verify(SECRET, "POST", path, body, *args) == "missing request signature"
    stale = sign_headers(SECRET, "GET", "/p", b"", caller="t", now=1_000_000)
    stamp, mac = stale["X-Rose-Timestamp"], stale["X-Rose-Signature"]
    reason = verify(SECRET, "GET", "/p", b"", stamp, mac, nonce=stale["X-Rose-Nonce"])
    assert reason == "stale request signature"
    assert verify(SECRET, "GET", "/p", b"", None, None) == "missing request signature"


def test_missing_settings_stop_start_up_naming_them():
    base = {"INTERNAL_SECRET": SECRET, "SESSION_SECRET": SECRET}
    with pytest.raises(ConfigError, match="DATABASE_URL_MARKET or DATABASE_URL"):
        Settings.from_env("market", base, public=True)
    with pytest.raises(ConfigError, match="SESSION_SECRET"):
        Settings.from_env(
            "market", {"INTERNAL_SECRET": SECRET, "DATABASE_URL": "postgresql://x"}, public=True
        )
    with pytest.raises(ConfigError, match="INTERNAL_SECRET"):
        Settings.from_env("relations", {"DATABASE_URL": "postgresql://x"}, public=False)
    with pytest.raises(ConfigError, match="ROSE_ENV"):
        Settings.from_env(
            "relations", {**base, "DATABASE_URL": "x", "ROSE_ENV": "staging"}, public=False
        )
    with pytest.raises(ConfigError, match="at least 16"):
        Settings.from_env(
            "relations", {"DATABASE_URL": "x", "INTERNAL_SECRET": "short"}, public=False
        )


def test_settings_read_per_service_urls():
    settings = Settings.from_env(
        "relations",
        {
            "DATABASE_URL_RELATIONS": "postgresql://own",
            "DATABASE_URL": "postgresql://shared",
            "INTERNAL_SECRET": SECRET,
            "INTERNAL_URL_LIKES": "http://likes:8000/",
            "ROSE_ENV": "dev",
        },
        public=False,
    )
    assert settings.database_url == "postgresql://own"
    assert settings.internal_urls == {"likes": "http://likes:8000"}
    assert settings.is_dev
    # Internal-only services need no session secret; the default environment is production.
    prod = Settings.from_env(
        "likes", {"DATABASE_URL": "x", "INTERNAL_SECRET": SECRET}, public=False
    )
    assert prod.env == "prod"
    assert prod.session_secret is None


def test_session_cookie_cannot_be_forged():
    codec = SessionCodec(SECRET)
    cookie = codec.encode(Identity(session_id="abc", user_id=7))
    decoded = codec.decode(cookie)
    assert decoded is not None
    assert decoded.identity == Identity(session_id="abc", user_id=7)
    _payload, mac = cookie.split(".")
    forged_payload = SessionCodec(SECRET).encode(Identity("abc", 8)).split(".")[0]
    assert codec.decode(f"{forged_payload}.{mac}") is None
    assert SessionCodec("another-secret-0123456789").decode(cookie) is None
    assert codec.decode("garbage") is None
    assert codec.csrf_token(Identity("abc")) != codec.csrf_token(Identity("abd"))
    assert codec.csrf_token(Identity("abc")) != codec.csrf_token(Identity("abc", 7))


def test_a_notice_is_read_only_by_the_session_it_was_made_for():
    """A page's notice (flash_notice) is signed for one session: a notice cookie planted from
    another session, altered, or signed with another secret says nothing."""
    codec = SessionCodec(SECRET)
    mine, other = Identity("session-a"), Identity("session-b")
    value = codec.encode_notice(mine, "Only 2 of the 5 you asked for were added.")
    assert codec.decode_notice(mine, value) == "Only 2 of the 5 you asked for were added."
    assert codec.decode_notice(other, value) is None
    payload, mac = value.split(".")
    altered = codec.encode_notice(mine, "Call us now").split(".")[0]
    assert codec.decode_notice(mine, f"{altered}.{mac}") is None
    assert codec.decode_notice(mine, payload) is None
    assert SessionCodec("another-secret-0123456789").decode_notice(mine, value) is None
    # A rotation keeps notices made with the previous secret readable.
    rotated = SessionCodec("another-secret-0123456789", [SECRET])
    assert rotated.decode_notice(mine, value) is not None


def test_sql_files_are_read_like_psql():
    statements = parse(
        """
        -- a comment with ; and :'name'
        SELECT format('CREATE ROLE %I', :'role') WHERE true \\gexec
        GRANT USAGE ON SCHEMA :"schema" TO :"role";
        SELECT $$ keeps ; and :'role' $$, 'it''s', 1::int;
        """,
        {"role": "o'neil", "schema": 'we"ird'},
    )
    assert [s.gexec for s in statements] == [True, False, False]
    assert statements[0].sql == "SELECT format('CREATE ROLE %I', 'o''neil') WHERE true"
    assert statements[1].sql == 'GRANT USAGE ON SCHEMA "we""ird" TO "o\'neil"'
    assert statements[2].sql == "SELECT $$ keeps ; and :'role' $$, 'it''s', 1::int"
    with pytest.raises(KeyError, match="missing"):
        parse("SELECT :'missing';", {})


class Named(msgspec.Struct):
    name: str


def test_a_form_given_as_a_struct_is_read_first_as_every_form_is():
    """Audit s20 A2: a handler given its form as a struct reads it through the app's
    ``read_form_body_first``; one whose own ``before_request`` would replace it is refused."""

    @post("/form", sync_to_thread=False)
    def form(data: Annotated[Named, FORM_BODY]) -> None:
        return None

    @post("/json", sync_to_thread=False)
    def as_json(data: JSONBody[Named]) -> None:
        return None

    def own_hook(request: object) -> None:
        return None

    @post("/other", before_request=own_hook, sync_to_thread=False)
    def other(data: Annotated[Named, FORM_BODY]) -> None:
        return None

    @post("/plain", before_request=own_hook, sync_to_thread=False)
    def plain(data: JSONBody[Named]) -> None:
        return None

    check_form_routes(Litestar([form, as_json, plain], before_request=read_form_body_first))
    with pytest.raises(ValueError, match="takes a form as a struct"):
        check_form_routes(Litestar([form, other], before_request=read_form_body_first))
    with pytest.raises(ValueError, match="takes a form as a struct"):
        check_form_routes(Litestar([form]))


@pytest.mark.parametrize(
    ("status", "for_good"),
    [
        (400, True),
        (403, True),
        (422, True),
        # A receiver of the release before lacks a new action while a deploy goes on: a
        # payment's messages to it must wait for the deploy, not die.
        (404, False),
        (401, False),
        (409, False),
        (429, False),
        (503, False),
        (None, False),
    ],
)
def test_which_answers_refuse_an_outbox_message_for_good(status: int | None, for_good: bool):
    error = InternalCallError("cart", "clear-cart-for-order", "refused", remote_status=status)
    assert error.refused is for_good
