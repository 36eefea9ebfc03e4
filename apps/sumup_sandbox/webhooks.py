"""Webhook delivery to a checkout's `return_url`, with retries and the sandbox's fault modes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from apps.sumup_sandbox.domain import Checkout
from apps.sumup_sandbox.state import DeliveryOutcome, DeliveryRecord, SandboxState, WebhookEvent

logger = logging.getLogger("sumup-sandbox")

ReleaseOrder = Literal["fifo", "reverse"]


class WebhookDispatcher:
    """Sends CHECKOUT_STATUS_CHANGED events in the background and logs every attempt.

    Status changes never wait for delivery (the buyer's browser must not be blocked), so each
    event copy runs as its own task: first attempt, then one retry per configured delay.
    """

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def notify_status_changed(self, checkout: Checkout) -> None:
        """Called right after a checkout changed; returns at once whatever the fault mode."""
        if checkout.return_url is None:
            return
        event = self._new_event(checkout)
        controls = self._state.controls
        if controls.webhooks == "drop":
            self._log(event, attempt=None, outcome=DeliveryOutcome.DROPPED)
            return
        if controls.webhooks == "hold":
            self._state.held_events.append(event)
            self._log(event, attempt=None, outcome=DeliveryOutcome.HELD)
            return
        for _ in range(controls.duplicate_webhooks):
            self._spawn(self._deliver_in_background(event, delay=controls.webhook_delay))

    async def release_held(self, order: ReleaseOrder) -> list[DeliveryRecord]:
        """Send every held event one after the other, so the receiver sees them in `order`.

        Returns the first attempts; failed ones keep retrying in the background.
        """
        events = list(self._state.held_events)
        self._state.held_events.clear()
        if order == "reverse":
            events.reverse()
        records: list[DeliveryRecord] = []
        for event in events:
            records.extend(
                await self._send_copies_now(event, copies=self._state.controls.duplicate_webhooks)
            )
        return records

    async def resend(self, checkout: Checkout, *, copies: int) -> list[DeliveryRecord]:
        """Send a new event for `checkout` now, `copies` times at once, whatever the fault mode."""
        return await self._send_copies_now(self._new_event(checkout), copies=copies)

    def cancel_pending(self) -> None:
        """Stop every background delivery (sandbox reset)."""
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.cancel_pending()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _new_event(self, checkout: Checkout) -> WebhookEvent:
        if checkout.return_url is None:
            raise ValueError(f"Checkout {checkout.id} has no return_url to notify")
        return WebhookEvent(
            event_id=self._state.next_event_id(),
            checkout_id=checkout.id,
            checkout_status=checkout.status.value,
            url=checkout.return_url,
            created_at=datetime.now(UTC),
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        # Keep a reference: the event loop only holds weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_copies_now(self, event: WebhookEvent, *, copies: int) -> list[DeliveryRecord]:
        records: Sequence[DeliveryRecord] = await asyncio.gather(
            *(self._attempt(event, attempt=1) for _ in range(copies))
        )
        for record in records:
            if record.outcome is DeliveryOutcome.FAILED:
                self._spawn(self._retry(event, after_attempt=1))
        return list(records)

    async def _deliver_in_background(self, event: WebhookEvent, *, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        record = await self._attempt(event, attempt=1)
        if record.outcome is DeliveryOutcome.FAILED:
            await self._retry(event, after_attempt=1)

    async def _retry(self, event: WebhookEvent, *, after_attempt: int) -> None:
        retry_delays = self._state.controls.webhook_retry_delays
        # Attempt n (n >= 2) waits retry_delays[n - 2] after attempt n - 1 failed.
        for attempt in range(after_attempt + 1, len(retry_delays) + 2):
            await asyncio.sleep(retry_delays[attempt - 2])
            record = await self._attempt(event, attempt=attempt)
            if record.outcome is DeliveryOutcome.DELIVERED:
                return
        logger.warning(
            "webhook for checkout %s to %s given up after %d attempts",
            event.checkout_id,
            event.url,
            len(retry_delays) + 1,
        )

    async def _attempt(self, event: WebhookEvent, *, attempt: int) -> DeliveryRecord:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"User-Agent": "sumup-sandbox-webhooks"})
        try:
            response = await self._client.post(
                event.url, json=event.body, timeout=self._state.controls.webhook_timeout
            )
        except httpx.HTTPError as error:
            return self._log(
                event,
                attempt=attempt,
                outcome=DeliveryOutcome.FAILED,
                error=f"{type(error).__name__}: {error}".rstrip(": "),
            )
        outcome = DeliveryOutcome.DELIVERED if response.is_success else DeliveryOutcome.FAILED
        return self._log(event, attempt=attempt, outcome=outcome, http_status=response.status_code)

    def _log(
        self,
        event: WebhookEvent,
        *,
        attempt: int | None,
        outcome: DeliveryOutcome,
        http_status: int | None = None,
        error: str | None = None,
    ) -> DeliveryRecord:
        record = DeliveryRecord(
            event=event,
            attempt=attempt,
            outcome=outcome,
            http_status=http_status,
            error=error,
            timestamp=datetime.now(UTC),
        )
        self._state.deliveries.append(record)
        logger.info(
            "webhook %s checkout=%s status=%s attempt=%s -> %s",
            event.url,
            event.checkout_id,
            event.checkout_status,
            attempt,
            http_status if http_status is not None else (error or outcome.value),
        )
        return record
