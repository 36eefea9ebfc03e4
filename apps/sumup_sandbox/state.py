"""In-memory state of a sandbox: checkouts, webhook delivery log, held events, fault controls."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from apps.sumup_sandbox.domain import Checkout, CheckoutNotFound, Transaction, TransactionNotFound

WebhookMode = Literal["deliver", "drop", "hold"]
# accept: refund and answer 201. refuse: answer 409 and refund nothing. unavailable: answer 503
# and refund nothing. lose_answer: refund, then answer 503 (the caller cannot know it worked).
RefundMode = Literal["accept", "refuse", "unavailable", "lose_answer"]
# show: GET /v2.1/merchants/{code}/transactions answers the transaction. not_found: it answers
# 404 NOT_FOUND, as for a transaction SumUp does not know; forbidden: 403 FORBIDDEN. Either way
# checkouts and refunds keep working (the transaction is still there to refund).
TransactionLookupMode = Literal["show", "not_found", "forbidden"]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0)]


class SandboxControls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fault modes an operator or a test can switch on; the defaults behave like SumUp.

    `webhook_retry_delays` are the pauses before each retry of a failed delivery (SumUp waits
    about 1 min, 5 min, 20 min and 2 h; the sandbox keeps them short so tests stay fast).
    """

    webhooks: WebhookMode = "deliver"
    duplicate_webhooks: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    webhook_delay: NonNegativeSeconds = 0.0
    api_latency: NonNegativeSeconds = 0.0
    api_unavailable: bool = False
    webhook_retry_delays: tuple[NonNegativeSeconds, ...] = (0.5, 1.0, 2.0, 5.0)
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Deactivating a checkout (DELETE) answers 503 and leaves it open.
    deactivation_unavailable: bool = False
    refunds: RefundMode = "accept"
    transaction_lookups: TransactionLookupMode = "show"
    # The status the refunds made from now on carry in their transaction's events: SUCCESSFUL
    # (shown REFUNDED, as SumUp does), or another of SumUp's (PENDING, on its way, SCHEDULED,
    # PAID_OUT, RECONCILED), money back all; FAILED, or any other (a status a client may not
    # know), gives nothing back.
    refund_event_status: Annotated[str, msgspec.Meta(pattern="^[A-Z_]{1,32}$")] = "SUCCESSFUL"
    # API keys a merchant has revoked: SumUp answers 401 for them, as for a key it never issued.
    revoked_api_keys: tuple[str, ...] = ()
    # What DELETE answers for a checkout already EXPIRED (past its valid_until, or deactivated
    # before): "answer" it as it is (200), or "not_found" (404 NOT_FOUND: SumUp's own page on
    # that problem lists "deleted or expired" among its causes; its docs do not say which).
    # GET shows it EXPIRED either way.
    expired_deactivation: Literal["answer", "not_found"] = "answer"
    # lose_answer: a new checkout is made, then its answer is a 503, as when SumUp's answer is
    # lost on its way (the caller cannot know it was made; asking again is a 409 for the
    # reference).
    checkout_creations: Literal["answer", "lose_answer"] = "answer"
    # The status the checkout API's answers (GET, list, DELETE) report for every checkout
    # instead of its own: one a client may not know (the SDK's CheckoutStatus is open: its four
    # and any other string). None: each its own.
    checkout_status_shown: Annotated[str, msgspec.Meta(pattern="^[A-Z_]{1,32}$")] | None = None

    def updated(self, changes: Mapping[str, object]) -> SandboxControls:
        """A copy with `changes` applied; raises msgspec.ValidationError on a bad name or value."""
        return msgspec.convert({**msgspec.to_builtins(self), **changes}, SandboxControls)

    def as_json(self) -> dict[str, object]:
        answer: dict[str, object] = msgspec.to_builtins(self)
        return answer


@dataclass(frozen=True)
class WebhookEvent:
    """One CHECKOUT_STATUS_CHANGED notification; `checkout_status` is kept for the log only."""

    event_id: int
    checkout_id: str
    checkout_status: str
    url: str
    created_at: datetime

    @property
    def body(self) -> dict[str, str]:
        # Exactly what SumUp sends: no status, no amount, no signature.
        return {"event_type": "CHECKOUT_STATUS_CHANGED", "id": self.checkout_id}

    def as_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "checkout_id": self.checkout_id,
            "checkout_status": self.checkout_status,
            "url": self.url,
            "created_at": self.created_at.isoformat(),
        }


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    DROPPED = "dropped"
    HELD = "held"


@dataclass(frozen=True)
class DeliveryRecord:
    """One line of the delivery log. `attempt` is None for events that were never sent."""

    event: WebhookEvent
    attempt: int | None
    outcome: DeliveryOutcome
    http_status: int | None
    error: str | None
    timestamp: datetime

    def as_json(self) -> dict[str, object]:
        return {
            "event_id": self.event.event_id,
            "checkout_id": self.event.checkout_id,
            "checkout_status": self.event.checkout_status,
            "url": self.event.url,
            "attempt": self.attempt,
            "outcome": self.outcome.value,
            "http_status": self.http_status,
            "error": self.error,
            "timestamp": self.timestamp.isoformat(),
        }


class StateFileUnreadable(ValueError):
    """A sandbox's state file that is not one it wrote (or not readable)."""


class SandboxState:
    """Everything the sandbox remembers. Mutate checkouts only while holding `lock`.

    With ``state_file`` its checkouts (their transactions, what went back) outlive the
    process, as SumUp's do: read from the file now, written to it by :meth:`save` (the app
    saves after every request that may change them). Without, they live in memory only (the
    tests' sandboxes, the benchmarks')."""

    def __init__(
        self, controls: SandboxControls | None = None, *, state_file: Path | None = None
    ) -> None:
        # Reset goes back to the controls the state was built with, so a test suite can choose
        # short retry delays once and keep them across resets.
        self.default_controls = controls or SandboxControls()
        self.controls = self.default_controls
        self.checkouts: dict[str, Checkout] = {}
        # (merchant code, checkout reference) -> checkout: SumUp finds a reference by index, not
        # by reading every checkout (a long run makes thousands).
        self._by_reference: dict[tuple[str, str], Checkout] = {}
        self.deliveries: list[DeliveryRecord] = []
        self.held_events: list[WebhookEvent] = []
        self.lock = asyncio.Lock()
        # API calls the injected latency holds right now: a test waits for a client's call to
        # be on its way (and so past whatever it read before) instead of sleeping a guess.
        self.delayed_calls = 0
        # GET /v0.1/checkouts/{id} answered, by checkout id: what a client's reads cost SumUp.
        self.checkout_reads: collections.Counter[str] = collections.Counter()
        self._event_ids = itertools.count(1)
        self._refund_ids = itertools.count(1)
        self.state_file = state_file
        if state_file is not None:
            self._load(state_file)

    def _load(self, path: Path) -> None:
        try:
            kept = msgspec.json.decode(path.read_bytes(), type=list[Checkout])
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            raise StateFileUnreadable(
                f"cannot read the sandbox's checkouts from {path}: {exc}; move it away to start "
                "with none"
            ) from None
        for checkout in kept:
            self.add(checkout)
        # Refund ids go on from the last one kept: SumUp never gives one twice.
        given = [
            event.id
            for checkout in kept
            for transaction in checkout.transactions
            for event in transaction.given_back
        ]
        self._refund_ids = itertools.count(max(given, default=0) + 1)

    def save(self) -> None:
        """The checkouts to the state file (if any), replaced whole: a stop or a crash midway
        leaves the last whole copy. For the operator alone (mode 0600)."""
        if self.state_file is None:
            return
        data = msgspec.json.encode(list(self.checkouts.values()))
        partial = self.state_file.with_name(f".{self.state_file.name}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # whole on disk before it replaces the last copy
        os.replace(partial, self.state_file)

    def next_refund_id(self) -> int:
        return next(self._refund_ids)

    def next_event_id(self) -> int:
        return next(self._event_ids)

    def reset(self) -> None:
        self.controls = self.default_controls
        self.checkouts.clear()
        self._by_reference.clear()
        self.deliveries.clear()
        self.held_events.clear()
        self.checkout_reads.clear()
        self._event_ids = itertools.count(1)

    def find(self, checkout_id: str, *, merchant_code: str | None = None) -> Checkout:
        """The checkout, as visible to `merchant_code` (None: the sandbox operator sees all)."""
        checkout = self.checkouts.get(checkout_id)
        if checkout is None or (
            merchant_code is not None and checkout.merchant_code != merchant_code
        ):
            raise CheckoutNotFound(checkout_id)
        return checkout

    def find_transaction(self, transaction_id: str, *, merchant_code: str) -> Transaction:
        """The transaction, as visible to `merchant_code`."""
        return self._find_transaction(transaction_id, merchant_code)

    def find_any_transaction(self, transaction_id: str) -> Transaction:
        """The transaction, whichever merchant's (the operator's controls)."""
        return self._find_transaction(transaction_id, None)

    def _find_transaction(self, transaction_id: str, merchant_code: str | None) -> Transaction:
        for checkout in self.checkouts.values():
            if merchant_code is not None and checkout.merchant_code != merchant_code:
                continue
            for transaction in checkout.transactions:
                if transaction.id == transaction_id:
                    return transaction
        raise TransactionNotFound(transaction_id)

    def add(self, checkout: Checkout) -> None:
        """A new checkout; its reference must be new for its merchant (the caller checked)."""
        self.checkouts[checkout.id] = checkout
        self._by_reference[(checkout.merchant_code, checkout.checkout_reference)] = checkout

    def find_by_reference(
        self, merchant_code: str, checkout_reference: str | None
    ) -> list[Checkout]:
        if checkout_reference is not None:
            found = self._by_reference.get((merchant_code, checkout_reference))
            return [] if found is None else [found]
        return [
            checkout
            for checkout in self.checkouts.values()
            if checkout.merchant_code == merchant_code
            and (checkout_reference is None or checkout.checkout_reference == checkout_reference)
        ]
