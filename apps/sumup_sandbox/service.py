"""Use cases of the sandbox: apply a domain transition under the state lock, then notify."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from apps.sumup_sandbox.domain import (
    ChargeBackDecision,
    Checkout,
    CheckoutHasNoReturnUrl,
    DuplicateCheckout,
    NewCheckout,
    RefundNotAllowed,
    Transaction,
    attempt_payment,
    charge_back_transaction,
    decide_charge_back,
    decline_payment,
    expire_checkout,
    expire_if_overdue,
    open_checkout,
    refund_transaction,
)
from apps.sumup_sandbox.state import DeliveryRecord, SandboxState
from apps.sumup_sandbox.webhooks import WebhookDispatcher


def _now() -> datetime:
    return datetime.now(UTC)


class SandboxUnavailable(Exception):
    """A fault switched on by a control: the API answers 503."""


class CheckoutService:
    """Shared by the API, the hosted page and the operator controls.

    Every read or change happens under `state.lock`, so concurrent requests see whole
    transitions and a (merchant, reference) pair can only be created once.
    """

    def __init__(
        self, state: SandboxState, dispatcher: WebhookDispatcher, *, public_url: str
    ) -> None:
        self.state = state
        self.dispatcher = dispatcher
        self._hosted_page_base_url = f"{public_url.rstrip('/')}/pay"

    async def create(self, new: NewCheckout) -> Checkout:
        async with self.state.lock:
            if self.state.find_by_reference(new.merchant_code, new.checkout_reference):
                raise DuplicateCheckout(new.merchant_code, new.checkout_reference)
            checkout = open_checkout(
                new, hosted_page_base_url=self._hosted_page_base_url, now=_now()
            )
            self.state.add(checkout)
            if self.state.controls.checkout_creations == "lose_answer":
                raise SandboxUnavailable("the checkout was made, but its answer is lost")
            return checkout

    async def get(self, checkout_id: str, *, merchant_code: str | None = None) -> Checkout:
        async with self.state.lock:
            return self._find(checkout_id, merchant_code=merchant_code)

    async def list_by_reference(
        self, *, merchant_code: str, checkout_reference: str | None
    ) -> list[Checkout]:
        async with self.state.lock:
            checkouts = self.state.find_by_reference(merchant_code, checkout_reference)
            for checkout in checkouts:
                self._expire_if_overdue(checkout)
            return checkouts

    async def list_all(self) -> list[Checkout]:
        async with self.state.lock:
            for checkout in self.state.checkouts.values():
                self._expire_if_overdue(checkout)
            return list(self.state.checkouts.values())

    async def deactivate(self, checkout_id: str, *, merchant_code: str | None = None) -> Checkout:
        """DELETE /v0.1/checkouts/{id} and the operator's expire: both end the attempt."""
        async with self.state.lock:
            checkout = self._find(checkout_id, merchant_code=merchant_code)
            if expire_checkout(checkout):
                self.dispatcher.notify_status_changed(checkout)
            return checkout

    async def pay(self, checkout_id: str, *, amount_override: Decimal | None = None) -> Checkout:
        async with self.state.lock:
            checkout = self._find(checkout_id)
            attempt_payment(checkout, now=_now(), amount_override=amount_override)
            self.dispatcher.notify_status_changed(checkout)
            return checkout

    async def fail(self, checkout_id: str) -> Checkout:
        async with self.state.lock:
            checkout = self._find(checkout_id)
            decline_payment(checkout, now=_now())
            self.dispatcher.notify_status_changed(checkout)
            return checkout

    async def transaction(self, transaction_id: str, *, merchant_code: str) -> Transaction:
        async with self.state.lock:
            return self.state.find_transaction(transaction_id, merchant_code=merchant_code)

    async def refund(
        self, transaction_id: str, amount: Decimal | None, *, merchant_code: str
    ) -> Transaction:
        """POST .../payments/{id}/refunds, as the `refunds` control says SumUp behaves."""
        mode = self.state.controls.refunds
        async with self.state.lock:
            transaction = self.state.find_transaction(transaction_id, merchant_code=merchant_code)
            if mode == "refuse":
                raise RefundNotAllowed("The sandbox is switched to refuse refunds")
            if mode == "unavailable":
                raise SandboxUnavailable("refunds are switched to unavailable")
            refund_transaction(
                transaction,
                amount,
                refund_id=self.state.next_refund_id(),
                now=_now(),
                status=self.state.controls.refund_event_status,
            )
            if mode == "lose_answer":
                raise SandboxUnavailable("the refund was made, but its answer is lost")
            return transaction

    async def charge_back(
        self, transaction_id: str, amount: Decimal | None, *, pending: bool = False
    ) -> Transaction:
        """The operator's charge-back of a payment (all that is left when ``amount`` is None):
        the card issuer takes the money back, outside the merchant's refunds."""
        async with self.state.lock:
            transaction = self.state.find_any_transaction(transaction_id)
            charge_back_transaction(
                transaction,
                amount,
                event_id=self.state.next_refund_id(),
                now=_now(),
                pending=pending,
            )
            return transaction

    async def decide_charge_back(
        self, transaction_id: str, decision: ChargeBackDecision, *, event_id: int | None
    ) -> Transaction:
        """The operator's decision of a pending charge-back (the card issuer's, later)."""
        async with self.state.lock:
            transaction = self.state.find_any_transaction(transaction_id)
            decide_charge_back(transaction, decision, event_id=event_id)
            return transaction

    async def resend_webhook(self, checkout_id: str, *, copies: int) -> list[DeliveryRecord]:
        async with self.state.lock:
            checkout = self._find(checkout_id)
            if checkout.return_url is None:
                raise CheckoutHasNoReturnUrl(checkout_id)
        # Outside the lock: delivery waits on the receiver, which may call the API back.
        return await self.dispatcher.resend(checkout, copies=copies)

    def _find(self, checkout_id: str, *, merchant_code: str | None = None) -> Checkout:
        checkout = self.state.find(checkout_id, merchant_code=merchant_code)
        self._expire_if_overdue(checkout)
        return checkout

    def _expire_if_overdue(self, checkout: Checkout) -> None:
        # Lazily applied on every access: the sandbox has no scheduler, and nobody can observe
        # the difference because every read goes through here.
        if expire_if_overdue(checkout, now=_now()):
            self.dispatcher.notify_status_changed(checkout)
