"""Checkouts and their payment state machine, as SumUp documents them.

Pure logic without HTTP or I/O: the service layer adds locking and webhooks, the routes add the
wire format. Status rules (reference/sumup.md): PENDING -> PAID | FAILED | EXPIRED; FAILED is not
final (the buyer may retry on the hosted page); PAID and EXPIRED are final.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal


class CheckoutStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class TransactionStatus(StrEnum):
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"


# SumUp's sandbox declines these amounts whatever card is used; the local sandbox does the same so
# that failure paths can be exercised with the same test data as a real sandbox account.
ALWAYS_FAILING_AMOUNTS: frozenset[Decimal] = frozenset(
    {Decimal("11.00"), Decimal("42.01"), Decimal("42.76"), Decimal("42.91")}
)

PAYABLE_STATUSES: frozenset[CheckoutStatus] = frozenset(
    {CheckoutStatus.PENDING, CheckoutStatus.FAILED}
)


class CheckoutError(Exception):
    """Base class of the domain errors; the message is meant for humans."""


class CheckoutNotFound(CheckoutError):
    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"Checkout {checkout_id} not found")
        self.checkout_id = checkout_id


class DuplicateCheckout(CheckoutError):
    def __init__(self, merchant_code: str, checkout_reference: str) -> None:
        super().__init__(
            f"Checkout with reference {checkout_reference!r} already exists "
            f"for merchant {merchant_code}"
        )


class CheckoutAlreadyPaid(CheckoutError):
    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"Checkout {checkout_id} has already been processed (paid)")


class CheckoutExpired(CheckoutError):
    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"Checkout {checkout_id} has expired and can no longer be paid")


class TransactionNotFound(CheckoutError):
    def __init__(self, transaction_id: str) -> None:
        super().__init__(f"Transaction {transaction_id} not found")


class RefundNotAllowed(CheckoutError):
    """SumUp's 409: the transaction cannot be refunded (not paid, or nothing left)."""


class InvalidRefundAmount(CheckoutError):
    """SumUp's 400: the amount is not more than zero."""


class ChargeBackNotPending(CheckoutError):
    """A 409: no charge-back of the transaction (or none with that event id) waits for a
    decision."""


class AmbiguousChargeBack(CheckoutError):
    """A 400: more than one charge-back of the transaction is pending and none was named."""


class CheckoutHasNoReturnUrl(CheckoutError):
    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"Checkout {checkout_id} has no return_url to send webhooks to")


ChargeBackDecision = Literal["SUCCESSFUL", "FAILED"]
# SumUp's documented statuses of a refund event whose money is going or gone back (PENDING: on
# its way). A refund in any other (FAILED, or one a client may not know) gives nothing back.
REFUND_GIVING_BACK = frozenset(
    {"PENDING", "SCHEDULED", "SUCCESSFUL", "REFUNDED", "PAID_OUT", "RECONCILED"}
)


@dataclass(frozen=True)
class GivenBack:
    """Money of a transaction given back: a refund the merchant asked for, or a charge-back
    (the card's holder disputed the payment and the card issuer took it back)."""

    id: int
    amount: Decimal
    timestamp: datetime
    kind: Literal["REFUND", "CHARGE_BACK"] = "REFUND"
    # A charge-back's: PENDING while the card issuer has not decided the dispute (nothing went
    # back by it so far), SUCCESSFUL once decided for the buyer (the money went back), FAILED
    # once decided for the merchant (nothing goes back by it). A refund is SUCCESSFUL, unless
    # the `refund_event_status` control says otherwise.
    status: str = "SUCCESSFUL"

    @property
    def pending(self) -> bool:
        return self.status == "PENDING"

    @property
    def gave_back(self) -> bool:
        if self.kind == "REFUND":
            return self.status in REFUND_GIVING_BACK
        return self.status == "SUCCESSFUL"


@dataclass
class Transaction:
    id: str
    transaction_code: str
    amount: Decimal
    currency: str
    status: TransactionStatus
    timestamp: datetime
    merchant_code: str
    auth_code: str | None
    given_back: list[GivenBack] = field(default_factory=list)

    @property
    def given_back_amount(self) -> Decimal:
        return sum((event.amount for event in self.given_back if event.gave_back), Decimal(0))

    @property
    def charged_back(self) -> bool:
        return any(event.kind == "CHARGE_BACK" and event.gave_back for event in self.given_back)

    @property
    def refundable_amount(self) -> Decimal:
        """What is left to give back: charged back money is gone from the merchant already."""
        if self.status not in (TransactionStatus.SUCCESSFUL, TransactionStatus.REFUNDED):
            return Decimal(0)
        return self.amount - self.given_back_amount


def refund_transaction(
    transaction: Transaction,
    amount: Decimal | None,
    *,
    refund_id: int,
    now: datetime,
    status: str = "SUCCESSFUL",
) -> GivenBack:
    """Give ``amount`` (all that is left when None) of a successful transaction back. Fully
    refunded, the transaction's status becomes REFUNDED."""
    left = transaction.refundable_amount
    if left <= 0:
        raise RefundNotAllowed(
            f"Transaction {transaction.id} cannot be refunded: it is {transaction.status.value}"
            + (" and charged back" if transaction.charged_back else "")
            + (
                " and fully refunded"
                if transaction.given_back and not transaction.charged_back
                else ""
            )
        )
    wanted = left if amount is None else amount
    if wanted <= 0:
        raise InvalidRefundAmount("amount must be greater than zero")
    if wanted > left:
        raise RefundNotAllowed(
            f"Transaction {transaction.id} has {left} left to refund, not {wanted}"
        )
    refund = GivenBack(id=refund_id, amount=wanted, timestamp=now, status=status)
    transaction.given_back.append(refund)
    if transaction.refundable_amount == 0:
        transaction.status = TransactionStatus.REFUNDED
    return refund


def charge_back_transaction(
    transaction: Transaction,
    amount: Decimal | None,
    *,
    event_id: int,
    now: datetime,
    pending: bool = False,
) -> GivenBack:
    """The card issuer takes ``amount`` (all that is left when None) of a successful payment
    back. The transaction stays SUCCESSFUL (it was paid; its simple status says CHARGEBACK),
    and what was charged back can no longer be refunded. A pending one (a dispute not decided
    yet) takes nothing so far: what it names can still be refunded, and so go back twice."""
    left = transaction.refundable_amount
    wanted = left if amount is None else amount
    if left <= 0 or wanted > left:
        raise RefundNotAllowed(
            f"Transaction {transaction.id} has {max(left, Decimal(0))} left to charge back, "
            f"not {wanted}"
        )
    if wanted <= 0:
        raise InvalidRefundAmount("amount must be greater than zero")
    charge_back = GivenBack(
        id=event_id,
        amount=wanted,
        timestamp=now,
        kind="CHARGE_BACK",
        status="PENDING" if pending else "SUCCESSFUL",
    )
    transaction.given_back.append(charge_back)
    return charge_back


def decide_charge_back(
    transaction: Transaction, decision: ChargeBackDecision, *, event_id: int | None = None
) -> GivenBack:
    """The card issuer decides a pending charge-back (``event_id``'s; the transaction's only
    pending one when None): SUCCESSFUL for the buyer (what it names goes back now, even if it
    was refunded meanwhile: the money then went back twice), FAILED for the merchant (nothing
    goes back by it). The transaction's status is unchanged; charged back, its simple status
    says CHARGEBACK."""
    pending = [
        event
        for event in transaction.given_back
        if event.kind == "CHARGE_BACK"
        and event.pending
        and (event_id is None or event.id == event_id)
    ]
    if not pending:
        named = "" if event_id is None else f" with event id {event_id}"
        raise ChargeBackNotPending(
            f"Transaction {transaction.id} has no pending charge-back{named} to decide"
        )
    if len(pending) > 1:
        raise AmbiguousChargeBack(
            f"Transaction {transaction.id} has {len(pending)} pending charge-backs: name one by "
            "its event_id"
        )
    [undecided] = pending
    decided = replace(undecided, status=decision)
    transaction.given_back[transaction.given_back.index(undecided)] = decided
    return decided


@dataclass(frozen=True)
class NewCheckout:
    """A validated create-checkout request."""

    checkout_reference: str
    amount: Decimal
    currency: str
    merchant_code: str
    description: str | None = None
    return_url: str | None = None
    redirect_url: str | None = None
    hosted_checkout_enabled: bool = False
    valid_until: datetime | None = None
    customer_id: str | None = None
    purpose: str | None = None


@dataclass
class Checkout:
    id: str
    checkout_reference: str
    # `amount` is what the API reports; `created_amount` is what the merchant asked for. They only
    # differ when a test overrides the charged amount to simulate a mismatch.
    amount: Decimal
    created_amount: Decimal
    currency: str
    merchant_code: str
    date: datetime
    description: str | None
    return_url: str | None
    redirect_url: str | None
    hosted_checkout_url: str | None
    valid_until: datetime | None
    customer_id: str | None
    purpose: str | None
    status: CheckoutStatus = CheckoutStatus.PENDING
    transactions: list[Transaction] = field(default_factory=list)

    @property
    def successful_transaction(self) -> Transaction | None:
        """The transaction that paid the checkout (still so when refunded since)."""
        paid = (TransactionStatus.SUCCESSFUL, TransactionStatus.REFUNDED)
        return next((tx for tx in self.transactions if tx.status in paid), None)

    @property
    def is_payable(self) -> bool:
        return self.status in PAYABLE_STATUSES


def open_checkout(new: NewCheckout, *, hosted_page_base_url: str, now: datetime) -> Checkout:
    checkout_id = str(uuid.uuid4())
    hosted_url = f"{hosted_page_base_url}/{checkout_id}" if new.hosted_checkout_enabled else None
    return Checkout(
        id=checkout_id,
        checkout_reference=new.checkout_reference,
        amount=new.amount,
        created_amount=new.amount,
        currency=new.currency,
        merchant_code=new.merchant_code,
        date=now,
        description=new.description,
        return_url=new.return_url,
        redirect_url=new.redirect_url,
        hosted_checkout_url=hosted_url,
        valid_until=new.valid_until,
        customer_id=new.customer_id,
        purpose=new.purpose,
    )


def _new_transaction_code() -> str:
    # SumUp transaction codes look like "TEENSK4W2K": ten upper-case letters and digits.
    alphabet = string.ascii_uppercase + string.digits
    return "T" + "".join(secrets.choice(alphabet) for _ in range(9))


def _ensure_payable(checkout: Checkout) -> None:
    if checkout.status is CheckoutStatus.PAID:
        raise CheckoutAlreadyPaid(checkout.id)
    if checkout.status is CheckoutStatus.EXPIRED:
        raise CheckoutExpired(checkout.id)


def _record_transaction(
    checkout: Checkout, status: TransactionStatus, amount: Decimal, now: datetime
) -> Transaction:
    transaction = Transaction(
        id=str(uuid.uuid4()),
        transaction_code=_new_transaction_code(),
        amount=amount,
        currency=checkout.currency,
        status=status,
        timestamp=now,
        merchant_code=checkout.merchant_code,
        auth_code=f"{secrets.randbelow(1_000_000):06d}"
        if status is TransactionStatus.SUCCESSFUL
        else None,
    )
    checkout.transactions.append(transaction)
    return transaction


def attempt_payment(
    checkout: Checkout, *, now: datetime, amount_override: Decimal | None = None
) -> Transaction:
    """The buyer pressed Pay: succeed unless the amount is one SumUp's sandbox always declines."""
    _ensure_payable(checkout)
    charged_amount = checkout.amount if amount_override is None else amount_override
    checkout.amount = charged_amount
    if checkout.created_amount in ALWAYS_FAILING_AMOUNTS:
        checkout.status = CheckoutStatus.FAILED
        return _record_transaction(checkout, TransactionStatus.FAILED, charged_amount, now)
    checkout.status = CheckoutStatus.PAID
    return _record_transaction(checkout, TransactionStatus.SUCCESSFUL, charged_amount, now)


def decline_payment(checkout: Checkout, *, now: datetime) -> Transaction:
    """The buyer's payment was declined: FAILED, which still allows another attempt."""
    _ensure_payable(checkout)
    checkout.status = CheckoutStatus.FAILED
    return _record_transaction(checkout, TransactionStatus.FAILED, checkout.amount, now)


def expire_checkout(checkout: Checkout) -> bool:
    """End the attempt (deactivation or end of lifetime). Returns whether the status changed."""
    if checkout.status is CheckoutStatus.PAID:
        raise CheckoutAlreadyPaid(checkout.id)
    if checkout.status is CheckoutStatus.EXPIRED:
        return False
    checkout.status = CheckoutStatus.EXPIRED
    return True


def expire_if_overdue(checkout: Checkout, *, now: datetime) -> bool:
    """A checkout past its `valid_until` becomes unusable. Returns whether the status changed."""
    if checkout.valid_until is None or not checkout.is_payable or now < checkout.valid_until:
        return False
    checkout.status = CheckoutStatus.EXPIRED
    return True
