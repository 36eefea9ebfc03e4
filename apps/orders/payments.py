"""SumUp through its official SDK (pinned: ``sumup==0.4.0``), behind a small gateway.

Amounts go out as the float of a 2-decimal Decimal (the SDK cannot send a Decimal) and come back
compared as ``Decimal(str(amount))``. Every call has a timeout (the SDK's default is none). SDK
errors become :class:`PaymentProviderUnavailable` (no answer, 5xx: try again later) or
:class:`PaymentProviderError` (an answer we cannot use).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from sumup import AsyncSumup
from sumup.errors import APIConnectionError, APIError, ConflictError, NotFoundError

from apps.common.http_transport import AiohttpTransport
from apps.common.observability import inject_trace
from apps.common.problems import BadGateway, DependencyUnavailable

logger = logging.getLogger("rose.orders.sumup")

SUMUP_BASE_URL = "https://api.sumup.com"
CENT = Decimal("0.01")
# SumUp's transaction events that give a payment's money back to the buyer: a refund, or a
# charge-back (the buyer disputed the payment and the card issuer took it back).
GIVING_BACK = frozenset({"REFUND", "CHARGE_BACK"})
# The statuses of a refund event whose money is going or gone back (SumUp's documented ones,
# FAILED aside). A status outside them (the SDK's type is open) is not taken as money back,
# nor as none: whatever asks is left to a person.
REFUND_GIVING_BACK = frozenset(
    {"PENDING", "SCHEDULED", "SUCCESSFUL", "REFUNDED", "PAID_OUT", "RECONCILED"}
)
# Of those, the ones SumUp has not carried out yet (it may still fail them).
REFUND_ON_ITS_WAY = frozenset({"PENDING", "SCHEDULED"})


class PaymentProviderUnavailable(DependencyUnavailable):
    def __init__(self, detail: str) -> None:
        super().__init__(f"SumUp is unavailable: {detail}", service="sumup")


class CheckoutStatusUnknown(PaymentProviderUnavailable):
    """SumUp reports an open checkout in a status orders does not know (the SDK's
    CheckoutStatus is open: its four and any other string, such as a moment's PROCESSING):
    whether it took the money cannot be told yet, so it is waited out as SumUp not answering
    (a webhook 503, SumUp sends it again; the return page still waiting; the next pass asks
    again). Closing the checkout (the order's time over, or replaced) leaves it to a person."""

    def __init__(self, checkout_id: str, status: str) -> None:
        DependencyUnavailable.__init__(
            self,
            f"SumUp reports checkout {checkout_id} {status}, a status orders does not know: "
            "asked again until SumUp reports PENDING, FAILED, PAID or EXPIRED",
            service="sumup",
        )


class PaymentProviderError(BadGateway):
    """SumUp refused a request; ``sumup_status`` is the HTTP status it answered (401: the
    API key is not, or no longer, valid)."""

    def __init__(self, detail: str, sumup_status: int | None = None) -> None:
        super().__init__(f"SumUp refused the request: {detail}", service="sumup")
        self.sumup_status = sumup_status

    @property
    def key_refused(self) -> bool:
        """SumUp refused the merchant's API key (401: revoked or never issued; 403: not
        allowed this): every request with that key alike, until a person gives it a new one."""
        return self.sumup_status in (401, 403)


class CheckoutRefused(PaymentProviderError):
    """SumUp answered a request to make a checkout with a refusal (a 4xx: the key, the
    merchant, the fields): it made none, so there is nothing to look up or close after."""


def made_no_checkout(exc: BaseException) -> bool:
    """``exc`` (or what it was raised from) is SumUp's refusal to make the checkout."""
    return isinstance(exc, CheckoutRefused) or isinstance(exc.__cause__, CheckoutRefused)


def sumup_waits(exc: BaseException) -> str | None:
    """What SumUp said, for a failure the code expects and waits out in one line, without a
    traceback: SumUp down or slow, or refusing the merchant's key (revoked in its dashboard:
    a person gives the page a new one). None for any other failure."""
    if isinstance(exc, PaymentProviderUnavailable) or (
        isinstance(exc, PaymentProviderError) and exc.key_refused
    ):
        return exc.detail
    return None


class CheckoutNotFound(Exception):
    pass


class RefundRefused(Exception):
    """SumUp answered a refund with a refusal (400, 403, 404, 409, 422): a person must look
    (a 401, the merchant's key refused, waits for a new key instead)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"SumUp refused the refund ({status}): {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class RemoteCheckout:
    id: str
    reference: str
    status: str
    amount: Decimal
    currency: str
    hosted_url: str | None
    transaction_code: str | None
    # SumUp's id of the successful transaction (what a refund names), once paid.
    transaction_id: str | None = None
    # The transaction that took the money, also once refunded since (in part or in full).
    paid_transaction_id: str | None = None
    # Until when SumUp lets it be paid (what its creator asked for; None if it did not say).
    valid_until: datetime | None = None
    # Found by its reference after SumUp said it had one (409): made by an earlier request,
    # which may not have been this order's (see apps.orders.service._open_checkout).
    recovered: bool = False


@dataclass(frozen=True)
class MoneyBack:
    """What SumUp's transaction says of its money: what it took (None when it does not say),
    and what went back to the buyer since: its refunds (orders', or a person's in SumUp's
    dashboard) and the charge-backs the card issuer decided for the buyer."""

    taken: Decimal | None
    refunded: Decimal
    charged_back: Decimal = Decimal(0)
    # A charge-back not decided yet (PENDING, or a status orders does not know): the money
    # may still go back by it, or not.
    charge_back_pending: bool = False
    # A refund event in a status orders does not know (REFUND_GIVING_BACK, FAILED): whether its
    # money went back is not known.
    refund_status_unknown: str | None = None
    # A refund event still on its way (PENDING, SCHEDULED): counted in ``refunded``, but SumUp
    # may yet fail it, so whatever cannot be undone waits for it (a review letting bookings go).
    refund_pending: bool = False

    @property
    def given_back(self) -> Decimal:
        return self.refunded + self.charged_back

    @property
    def all_given_back(self) -> bool:
        return self.taken is not None and self.given_back >= self.taken


@dataclass(frozen=True)
class MerchantAccount:
    merchant_code: str
    api_key: str


def as_amount(value: Decimal) -> float:
    return float(value.quantize(CENT))


def _transaction_id(checkout: object, *statuses: str) -> str | None:
    """The id of the checkout's first transaction in one of ``statuses``."""
    for transaction in getattr(checkout, "transactions", None) or ():
        status = getattr(transaction, "status", None)
        if str(getattr(status, "value", status)) in statuses and transaction.id:
            return str(transaction.id)
    return None


def _remote(checkout: Any) -> RemoteCheckout:
    """Any of the SDK's checkout models (create, get and list answer with different classes that
    share these fields but no base class, hence ``Any``)."""
    status = getattr(checkout, "status", None)
    currency = getattr(checkout, "currency", None)
    return RemoteCheckout(
        id=str(checkout.id),
        reference=str(checkout.checkout_reference),
        status=str(getattr(status, "value", status) or "PENDING"),
        amount=Decimal(str(checkout.amount)).quantize(CENT),
        currency=str(getattr(currency, "value", currency)),
        hosted_url=getattr(checkout, "hosted_checkout_url", None),
        transaction_code=getattr(checkout, "transaction_code", None),
        transaction_id=_transaction_id(checkout, "SUCCESSFUL"),
        # Refunded since, in part or in full, SumUp says REFUNDED.
        paid_transaction_id=_transaction_id(checkout, "SUCCESSFUL", "REFUNDED"),
        valid_until=getattr(checkout, "valid_until", None),
    )


async def _traced(request: httpx.Request) -> None:
    carrier: dict[str, str] = {}
    inject_trace(carrier)
    request.headers.update(carrier)


def sdk_client(api_key: str, base_url: str, timeout: httpx.Timeout) -> AsyncSumup:
    """The SumUp SDK's client, its httpx client sending through aiohttp
    (apps/common/http_transport.py). Swapped before the first call, so the SDK's own
    connection pool never opened a connection."""
    client = AsyncSumup(api_key=api_key, base_url=base_url, timeout=timeout)
    client._client._transport = AiohttpTransport()
    return client


# SDK clients kept open at once, one per merchant API key in use: each is a connection pool.
MAX_SDK_CLIENTS = 16


@dataclass(eq=False)
class SdkClient:
    """One merchant API key's SDK client, and how many calls are running on it."""

    sdk: AsyncSumup
    calls: int = 0
    retired: bool = False
    closed: bool = False


@dataclass
class _Reads:
    """One checkout's reads (:meth:`SumUpGateway.get_checkout`): the one running, and the one
    that starts once it ends, which every caller asking meanwhile waits for."""

    running: asyncio.Future[RemoteCheckout] | None = None
    next: asyncio.Future[RemoteCheckout] | None = None


def _retrieved(read: asyncio.Future[Any]) -> None:
    """A shared read's outcome is read even when every caller gave up, never logged."""
    if not read.cancelled():
        read.exception()


class SumUpGateway:
    def __init__(
        self,
        base_url: str = SUMUP_BASE_URL,
        timeout_seconds: float = 10.0,
        *,
        max_clients: int = MAX_SDK_CLIENTS,
    ) -> None:
        self.base_url = base_url
        self.timeout = httpx.Timeout(timeout_seconds, connect=min(3.0, timeout_seconds))
        # One SDK client (one connection pool) per merchant API key, the most recently used
        # ``max_clients`` of them: keys rotate, and a pool per key ever seen stayed open.
        self._max_clients = max_clients
        self._clients: OrderedDict[str, SdkClient] = OrderedDict()
        # Pushed out while calls were running on them: closed when the last one answers.
        self._retired: set[SdkClient] = set()
        # The reads of a checkout (by key and checkout id) running and waiting to start.
        self._reads: dict[tuple[str, str], _Reads] = {}

    def client_for(self, account: MerchantAccount) -> SdkClient:
        """The client of ``account``'s key (made on first use), now the most recently used;
        pushing the least recently used one out when there are too many."""
        if not account.api_key:
            # The SDK would send "Bearer None"; refuse instead.
            raise PaymentProviderError("no API key is configured for this merchant")
        client = self._clients.get(account.api_key)
        if client is not None:
            self._clients.move_to_end(account.api_key)
            return client
        sdk = sdk_client(account.api_key, self.base_url, self.timeout)
        # Every SumUp call carries the W3C trace context of the order's work.
        sdk._client.event_hooks["request"].append(_traced)
        client = self._clients[account.api_key] = SdkClient(sdk)
        while len(self._clients) > self._max_clients:
            _, pushed_out = self._clients.popitem(last=False)
            pushed_out.retired = True
            self._retired.add(pushed_out)
        return client

    def open_clients(self) -> int:
        return len(self._clients) + sum(not client.closed for client in self._retired)

    @asynccontextmanager
    async def _using(self, account: MerchantAccount) -> AsyncIterator[AsyncSumup]:
        """The SDK client of ``account``'s key for one call; a client pushed out is closed
        once no call runs on it."""
        client = self.client_for(account)
        client.calls += 1
        try:
            for idle in [each for each in self._retired if each.calls == 0]:
                await self._close(idle)
            yield client.sdk
        finally:
            client.calls -= 1
            if client.retired and client.calls == 0:
                await self._close(client)

    async def _close(self, client: SdkClient) -> None:
        self._retired.discard(client)
        if not client.closed:
            client.closed = True
            await client.sdk.aclose()

    async def aclose(self) -> None:
        for client in [*self._clients.values(), *self._retired]:
            await self._close(client)
        self._clients.clear()

    async def create_checkout(
        self,
        account: MerchantAccount,
        *,
        reference: str,
        amount: Decimal,
        currency: str,
        description: str,
        webhook_url: str,
        redirect_url: str,
        valid_until: datetime | None = None,
    ) -> RemoteCheckout:
        """Create a hosted checkout; a reference SumUp already has (409 DUPLICATED_CHECKOUT,
        e.g. our earlier try whose answer was lost) is recovered by listing by reference."""
        async with self._using(account) as client:
            try:
                created = await client.checkouts.create(
                    checkout_reference=reference,
                    amount=as_amount(amount),
                    currency=currency,
                    merchant_code=account.merchant_code,
                    description=description,
                    return_url=webhook_url,
                    redirect_url=redirect_url,
                    hosted_checkout={"enabled": True},
                    valid_until=valid_until,
                )
                return _remote(created)
            except ConflictError as exc:
                if _error_code(exc) != "DUPLICATED_CHECKOUT":
                    raise PaymentProviderError(_described(exc)) from exc
                logger.info("checkout %s already exists at SumUp; recovering it", reference)
                try:
                    found = await self._by_reference(client, reference)
                except APIConnectionError as lookup_error:
                    raise PaymentProviderUnavailable(type(lookup_error).__name__) from exc
                except APIError as lookup_error:
                    raise _classify(lookup_error) from exc
                if found is None:
                    raise PaymentProviderError(
                        f"SumUp reports {reference} as duplicated but does not list it"
                    ) from exc
                return found
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                refused = _classify(exc)
                if isinstance(refused, PaymentProviderError):
                    refused = CheckoutRefused(refused.detail, refused.sumup_status)
                raise refused from exc

    async def find_checkout(
        self, account: MerchantAccount, reference: str
    ) -> RemoteCheckout | None:
        """The checkout SumUp holds under ``reference`` for the account's merchant, if any."""
        async with self._using(account) as client:
            try:
                return await self._by_reference(client, reference)
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                raise _classify(exc) from exc

    async def _by_reference(self, client: AsyncSumup, reference: str) -> RemoteCheckout | None:
        for checkout in await client.checkouts.list(checkout_reference=reference):
            if checkout.checkout_reference == reference:
                return replace(_remote(checkout), recovered=True)
        return None

    async def get_checkout(self, account: MerchantAccount, checkout_id: str) -> RemoteCheckout:
        """The checkout as SumUp has it, read after this call began. Reads of one checkout
        with one key share SumUp's answer: a caller waits for the read that starts next (not
        one running, begun before it asked: the checkout may have changed since), so at most
        one read of a checkout runs and one waits, however many ask at once (unsigned webhooks
        and return-page loads, which anyone with the checkout's id can send without end)."""
        key = (account.api_key, checkout_id)
        reads = self._reads.setdefault(key, _Reads())
        if reads.next is None or reads.next.done():  # done: cancelled before it began
            reads.next = asyncio.ensure_future(self._read_next(key, reads, account, checkout_id))
            reads.next.add_done_callback(_retrieved)
        # Shielded: a caller that gives up (its request ended) ends no other caller's read.
        return await asyncio.shield(reads.next)

    async def _read_next(
        self, key: tuple[str, str], reads: _Reads, account: MerchantAccount, checkout_id: str
    ) -> RemoteCheckout:
        this = reads.next
        try:
            running = reads.running
            if running is not None:
                await asyncio.wait([running])  # its outcome is its callers'
            # Starting now: whoever asks from here on waits for the read after this one.
            reads.next, reads.running = None, this
            return await self._read_checkout(account, checkout_id)
        finally:
            # Ended, read or not (cancelled while it waited: at shutdown), it is no one's
            # next or running read any more, so a later caller starts a read of its own.
            if reads.next is this:
                reads.next = None
            if reads.running is this:
                reads.running = None
            if reads.running is None and reads.next is None:
                self._reads.pop(key, None)

    async def _read_checkout(self, account: MerchantAccount, checkout_id: str) -> RemoteCheckout:
        async with self._using(account) as client:
            try:
                return _remote(await client.checkouts.get(checkout_id))
            except NotFoundError as exc:
                raise CheckoutNotFound(checkout_id) from exc
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                raise _classify(exc) from exc

    async def deactivate_checkout(
        self, account: MerchantAccount, checkout_id: str
    ) -> RemoteCheckout:
        """Close a checkout so it cannot be paid any more; one SumUp already processed (409
        CHECKOUT_PROCESSED) is returned as it is, so its payment is not lost."""
        async with self._using(account) as client:
            try:
                return _remote(await client.checkouts.deactivate(checkout_id))
            except ConflictError:
                return await self.get_checkout(account, checkout_id)
            except NotFoundError as exc:
                raise CheckoutNotFound(checkout_id) from exc
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                raise _classify(exc) from exc

    async def refund(self, account: MerchantAccount, transaction_id: str, amount: Decimal) -> None:
        """Ask SumUp to give ``amount`` of the transaction back. Raises
        :class:`PaymentProviderUnavailable` when the outcome is unknown (no answer) and
        :class:`RefundRefused` when SumUp says no."""
        async with self._using(account) as client:
            try:
                await client.transactions.refund(
                    account.merchant_code, transaction_id, amount=as_amount(amount)
                )
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                if exc.status is None or exc.status >= 500 or exc.status == 429:
                    raise PaymentProviderUnavailable(_described(exc)) from exc
                raise RefundRefused(exc.status, _described(exc)) from exc

    async def money_back(self, account: MerchantAccount, transaction_id: str) -> MoneyBack:
        """What the transaction took and what of it went back so far, as SumUp's events say.
        A failed refund or charge-back gave nothing back; a pending refund (orders' own, on
        its way) counts; a charge-back counts once SUCCESSFUL, and is reported undecided in
        any other status."""
        async with self._using(account) as client:
            try:
                transaction = await client.transactions.get(
                    account.merchant_code, id=transaction_id
                )
            except APIConnectionError as exc:
                raise PaymentProviderUnavailable(type(exc).__name__) from exc
            except APIError as exc:
                raise _classify(exc) from exc
        refunded, charged_back, pending = Decimal(0), Decimal(0), False
        refund_pending = False
        unknown: str | None = None
        for event in transaction.events or ():
            kind = getattr(event.type, "value", event.type)
            state = getattr(event.status, "value", event.status)
            if kind not in GIVING_BACK or state == "FAILED" or event.amount is None:
                continue
            amount = Decimal(str(event.amount))
            if kind == "REFUND":
                if state in REFUND_GIVING_BACK:
                    refunded += amount  # pending too: a refund on its way is money going back
                    refund_pending = refund_pending or state in REFUND_ON_ITS_WAY
                else:
                    unknown = str(state)
            elif state == "SUCCESSFUL":
                charged_back += amount
            else:
                pending = True  # a dispute not decided (or a status not known here)
        return MoneyBack(
            taken=None
            if transaction.amount is None
            else Decimal(str(transaction.amount)).quantize(CENT),
            refunded=refunded.quantize(CENT),
            charged_back=charged_back.quantize(CENT),
            charge_back_pending=pending,
            refund_status_unknown=unknown,
            refund_pending=refund_pending,
        )


def _error_code(exc: APIError) -> str | None:
    body = exc.body
    code = getattr(body, "error_code", None)
    if code is None and isinstance(body, dict):
        code = body.get("error_code")
    return str(code) if code is not None else None


def _described(exc: APIError) -> str:
    """SumUp's refusal as the SDK words it, with SumUp's own message where the SDK kept a body
    it has no type for (a 403 of a transaction's lookup: "Unexpected response") as plain JSON."""
    body = exc.body
    if isinstance(body, dict):
        for field in ("detail", "message", "error_message", "title"):
            message = body.get(field)
            if isinstance(message, str) and message and message not in exc.message:
                return f"HTTP {exc.status}: {message}" if exc.status is not None else message
    return str(exc)


def _classify(exc: APIError) -> Exception:
    if exc.status is None or exc.status >= 500 or exc.status == 429:
        return PaymentProviderUnavailable(_described(exc))
    return PaymentProviderError(_described(exc), exc.status)
