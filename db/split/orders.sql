-- Move `orders`: db_cart legacy.orders + legacy.order_items -> db_orders orders.orders,
-- orders.order_items, orders.payment_attempts
--
-- Runs in db_orders, in the move's one transaction, as orders_owner, after `rose split run` has
-- copied into temporary tables (legacy columns and types, unchanged):
--   stage_orders, stage_order_items, stage_page_configs   from db_cart
--   stage_products                                        from db_market
-- Parts: setup, `-- split:classify` (temporary tables only; `rose split plan` runs it read-only),
-- `-- split:apply` (writes the target). See relations.sql for the conventions.
--
-- Orders and items keep their ids (buyers have order numbers; events stored order ids).
-- The legacy order carried its one SumUp checkout; the target keeps checkouts as payment
-- attempts: one attempt (number 1) per order that had a checkout.
--
-- Statuses (the orders service's rules: FAILED is not final, an expired checkout ends an attempt,
-- not the order; the buyer may pay again while the order is pending):
--   legacy status   order       attempt
--   pending         pending     PENDING   (reconciliation asks SumUp, as for any pending order)
--   paid            paid        PAID      paid_at = the legacy updated_at (when it was marked paid),
--                                         paid_attempt_id = that attempt
--   failed          pending     FAILED
--   expired         pending     PENDING   (see below)
--   cancelled       cancelled   PENDING   (see below)
-- The monolith's expired and cancelled are its own word, not SumUp's: the checkout may still be
-- open there and take a payment (a buyer's tab left open). As EXPIRED (final for orders) such a
-- payment was ignored, webhook included: money taken for an order never paid nor refunded. As
-- PENDING, orders asks SumUp as for any open attempt (webhook, return page, reconciliation, which
-- closes it): a payment SumUp took makes the expired one paid and the cancelled one refund_due.
-- An order without a checkout gets no attempt.
-- An order with nothing to pay (total 0) and no checkout is paid or cancelled: the orders
-- service pays such an order as it is made, without SumUp, and cancels one that did not go
-- through. A legacy one never paid (pending, failed, expired) moves as cancelled (noted), with
-- or without a merchant: as pending the buyer was shown "Waiting for SumUp", "Pay again" was a
-- 409 (no merchant) or a checkout of 0.00, and it expired half an hour later (audit s20c LOW 4).
-- Pending orders (failed and expired ones included) are payable for the orders service's
-- default window (ORDERS_PAYABLE_SECONDS, 1800 s: SumUp's hosted checkout session) from their
-- last change (updated_at: a new checkout), as the service's own orders are from creation: a
-- buyer on SumUp's page at the cut-over can finish; older ones are overdue at once and
-- reconciliation expires them the usual way (asking SumUp first, refunding a late payment).
-- The monolith had no deadline: without one they could be paid again without end, at prices
-- from before the split.
--
-- The merchant snapshot (page_config_id, merchant_code, checkout_prefix), resolved as the orders
-- service does: the order's own config when it recorded one, else its page's active config, else
-- the site default ('site', 0); the first of them with a SumUp merchant code. No prefix: 'rose-'.
-- When none resolves, an order with nothing to pay (total 0) moves with the three NULL, as the
-- service makes such an order (orders 0011, ck_orders_free_or_has_merchant: only an order with
-- something to pay must name its merchant). One with something to pay is skipped, and so is a
-- free one with a SumUp checkout: its payment attempt could only be asked about at a merchant.
--
-- Quirks:
--   no description             moved as 'rose-ash order #<id>' (noted)
--   description over 255       moved as its first 255 characters, the target's limit (noted)
--   checkout, no reference     the attempt's reference is '<prefix><id>-1' (noted)
--   item of a product gone     moved as is: the item is a snapshot (title, slug, price) (noted)
--   item with quantity 0       skipped (a line removed before checkout; the target wants > 0)
--   neither user nor session   skipped with its items (nobody could own it in the service)
--   total <> sum of its parts  skipped with its items (the target checks the sum)
--   one checkout, two orders   refused, naming them (the checkout's id or reference)
--   hosted URL over 1,024      refused, naming them (the target's limit; a cut URL is wrong)
--   no merchant resolvable     total > 0 (or a checkout): skipped with its items (the target
--                              needs the snapshot); total 0: moved with NULL merchant columns
--   free, never paid           total 0, no checkout, pending/failed/expired: moved as
--                              cancelled (noted), with or without a merchant
-- Every skipped row is listed in the ledger with its id and reason.

CREATE TEMP TABLE split_orders (
    id                 bigint PRIMARY KEY,
    status             text NOT NULL,
    attempt_status     text,
    paid_at            timestamptz,
    description        text NOT NULL,
    page_config_id     bigint,
    merchant_code      text,
    checkout_prefix    text,
    checkout_reference text,
    in_target          boolean NOT NULL
) ON COMMIT DROP;

-- split:classify

-- A page (or the site) with more than one active config: the monolith had no unique index, the
-- target allows one, and which SumUp merchant the page's orders pay is a person's decision, not
-- the split's: refused before anything moves, naming them (the same check in page_configs.sql).
DO $check$
DECLARE
    found text;
BEGIN
    SELECT string_agg(format('%s %s (ids %s)', container_type, container_id, ids), '; '
                      ORDER BY container_type, container_id)
    INTO found
    FROM (
        SELECT container_type, container_id, string_agg(id::text, ', ' ORDER BY id) AS ids
        FROM stage_page_configs
        WHERE deleted_at IS NULL
        GROUP BY container_type, container_id
        HAVING count(*) > 1
    ) AS duplicated;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'db_cart legacy.page_configs has more than one active config of %: the '
            'target allows one per page and one for the site, and which one holds the merchant '
            'its orders pay is for a person to decide. Set deleted_at on all but one in the '
            'monolith (after a run: rose split abort --move page_configs --move orders unfreezes '
            'it first), then plan and run again', found;
    END IF;
END
$check$;

INSERT INTO split_orders
SELECT o.id,
       CASE
           WHEN o.status IN ('paid', 'cancelled') THEN o.status
           -- Nothing to pay and no checkout: orders pays such an order as it is made, so one
           -- never paid cannot be waited for or paid again there; it did not go through.
           WHEN o.total_amount = 0 AND o.sumup_checkout_id IS NULL THEN 'cancelled'
           ELSE 'pending'
       END,
       -- Expired and cancelled: open, so that orders asks SumUp (see the header).
       CASE WHEN o.sumup_checkout_id IS NOT NULL THEN
           CASE o.status
               WHEN 'paid' THEN 'PAID'
               WHEN 'failed' THEN 'FAILED'
               ELSE 'PENDING'
           END
       END,
       CASE WHEN o.status = 'paid' THEN o.updated_at AT TIME ZONE 'UTC' END,
       left(coalesce(nullif(o.description, ''), 'rose-ash order #' || o.id), 255),
       chosen.id,
       chosen.sumup_merchant_code,
       CASE WHEN chosen.id IS NOT NULL THEN coalesce(chosen.sumup_checkout_prefix, 'rose-') END,
       coalesce(o.sumup_reference, coalesce(chosen.sumup_checkout_prefix, 'rose-') || o.id || '-1'),
       EXISTS (SELECT FROM orders.orders AS existing WHERE existing.id = o.id)
FROM stage_orders AS o
LEFT JOIN stage_page_configs AS own
       ON own.id = o.page_config_id AND own.sumup_merchant_code IS NOT NULL
LEFT JOIN stage_page_configs AS page
       ON page.container_type = 'page' AND page.container_id = o.page_post_id
      AND page.deleted_at IS NULL AND page.sumup_merchant_code IS NOT NULL
LEFT JOIN stage_page_configs AS site
       ON site.container_type = 'site' AND site.container_id = 0
      AND site.deleted_at IS NULL AND site.sumup_merchant_code IS NOT NULL
LEFT JOIN LATERAL (
    SELECT candidate.id, candidate.sumup_merchant_code, candidate.sumup_checkout_prefix
    FROM (
        VALUES (1, own.id, own.sumup_merchant_code, own.sumup_checkout_prefix),
               (2, page.id, page.sumup_merchant_code, page.sumup_checkout_prefix),
               (3, site.id, site.sumup_merchant_code, site.sumup_checkout_prefix)
    ) AS candidate (preference, id, sumup_merchant_code, sumup_checkout_prefix)
    WHERE candidate.id IS NOT NULL
    ORDER BY candidate.preference
    LIMIT 1
) AS chosen ON true;

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'orders', id,
       CASE WHEN skip_reason IS NULL THEN 'moved' ELSE 'skipped' END,
       coalesce(skip_reason, note)
FROM (
    SELECT o.id,
           CASE
               WHEN s.in_target THEN 'already in the target'
               WHEN o.user_id IS NULL AND o.session_id IS NULL
                   THEN 'neither user nor session: nobody could own it in the orders service'
               WHEN o.total_amount <> o.product_total + o.calendar_total + o.ticket_total
                   THEN 'total_amount is not the sum of the product, calendar and ticket totals'
               WHEN s.page_config_id IS NULL AND o.total_amount <> 0
                   THEN 'no page config with a SumUp merchant (its own, its page''s or the site''s)'
               -- (Nothing to pay: moved without a merchant, unless it has a checkout to move.)
               WHEN s.page_config_id IS NULL AND o.sumup_checkout_id IS NOT NULL
                   THEN 'nothing to pay but a SumUp checkout, and no page config with a SumUp '
                        'merchant (its own, its page''s or the site''s)'
           END AS skip_reason,
           nullif(concat_ws('; ',
               CASE WHEN nullif(o.description, '') IS NULL
                    THEN 'no description: moved as "rose-ash order #<id>"' END,
               CASE WHEN length(o.description) > 255
                    THEN 'description longer than 255 characters: moved as its first 255' END,
               CASE WHEN o.sumup_checkout_id IS NOT NULL AND o.sumup_reference IS NULL
                    THEN 'no sumup_reference: the payment attempt''s is <prefix><id>-1' END,
               CASE WHEN o.status NOT IN ('paid', 'cancelled') AND s.status = 'cancelled'
                    THEN 'nothing to pay, no SumUp checkout and never paid: moved as cancelled '
                         '(the orders service pays an order with nothing to pay as it is made)'
               END
           ), '') AS note
    FROM stage_orders AS o
    JOIN split_orders AS s ON s.id = o.id
) AS decided;

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'order_items', id,
       CASE WHEN skip_reason IS NULL THEN 'moved' ELSE 'skipped' END,
       coalesce(skip_reason, note)
FROM (
    SELECT i.id,
           CASE
               WHEN EXISTS (SELECT FROM orders.order_items AS existing WHERE existing.id = i.id)
                   THEN 'already in the target'
               WHEN order_outcome.outcome IS DISTINCT FROM 'moved' THEN 'its order is not moved'
               WHEN i.quantity <= 0
                   THEN 'quantity 0: a line removed from the order before checkout'
               WHEN i.unit_price < 0 THEN 'a negative unit price'
           END AS skip_reason,
           CASE WHEN p.id IS NULL
                THEN 'the product no longer exists: moved as is (the item is a snapshot)' END
               AS note
    FROM stage_order_items AS i
    LEFT JOIN split_outcome AS order_outcome
           ON order_outcome.source_table = 'orders' AND order_outcome.source_id = i.order_id
    LEFT JOIN stage_products AS p ON p.id = i.product_id
) AS decided;

-- Orders that would move with one SumUp checkout between them (its id, or its reference):
-- the target gives a checkout one payment attempt of one order, and which order a payment of it
-- paid is a person's decision: refused before anything moves, naming them.
DO $check$
DECLARE
    found text;
BEGIN
    SELECT string_agg(format('%s %s (ids %s)', what, key, ids), '; ' ORDER BY what, key)
    INTO found
    FROM (
        SELECT what, key, string_agg(id::text, ', ' ORDER BY id) AS ids
        FROM (
            SELECT 'checkout' AS what, o.sumup_checkout_id AS key, o.id
            FROM stage_orders AS o JOIN split_orders AS s ON s.id = o.id
            JOIN split_outcome AS outcome
              ON outcome.source_table = 'orders' AND outcome.source_id = o.id
            WHERE outcome.outcome = 'moved' AND s.attempt_status IS NOT NULL
            UNION ALL
            SELECT 'reference', s.checkout_reference, o.id
            FROM stage_orders AS o JOIN split_orders AS s ON s.id = o.id
            JOIN split_outcome AS outcome
              ON outcome.source_table = 'orders' AND outcome.source_id = o.id
            WHERE outcome.outcome = 'moved' AND s.attempt_status IS NOT NULL
        ) AS attempts
        GROUP BY what, key
        HAVING count(*) > 1
    ) AS shared;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'db_cart legacy.orders share a SumUp checkout: %: the target gives a '
            'checkout one payment attempt of one order, and which order its payment belongs to '
            'is for a person to decide. Correct the orders in the monolith (after a run: rose '
            'split abort --move orders unfreezes them), then plan and run again', found;
    END IF;
END
$check$;

-- Orders that would move with a SumUp hosted URL longer than the attempt's hosted_url holds
-- (1,024 characters: SumUp's are far shorter, so such a URL is damaged). Cut, it would send the
-- buyer to a page that is not their checkout; dropped, the attempt would move changed: which
-- URL is right is a person's decision: refused before anything moves, naming them.
DO $check$
DECLARE
    found text;
BEGIN
    SELECT string_agg(o.id::text, ', ' ORDER BY o.id)
    INTO found
    FROM stage_orders AS o
    JOIN split_orders AS s ON s.id = o.id
    JOIN split_outcome AS outcome ON outcome.source_table = 'orders' AND outcome.source_id = o.id
    WHERE outcome.outcome = 'moved' AND s.attempt_status IS NOT NULL
      AND length(o.sumup_hosted_url) > 1024;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'db_cart legacy.orders with a sumup_hosted_url longer than 1,024 '
            'characters (ids %): orders.payment_attempts.hosted_url holds 1,024, and a cut URL '
            'would not be their checkout. Correct them in the monolith (the checkout''s URL as '
            'SumUp gives it, or NULL as a checkout without one moves; after a run: rose split '
            'abort --move orders unfreezes them), then plan and run again', found;
    END IF;
END
$check$;

INSERT INTO split_planned (target_table, planned)
SELECT 'orders.orders', count(*)
FROM split_outcome WHERE source_table = 'orders' AND outcome = 'moved'
UNION ALL
SELECT 'orders.order_items', count(*)
FROM split_outcome WHERE source_table = 'order_items' AND outcome = 'moved'
UNION ALL
SELECT 'orders.payment_attempts', count(*)
FROM split_outcome AS outcome
JOIN split_orders AS s ON s.id = outcome.source_id
WHERE outcome.source_table = 'orders' AND outcome.outcome = 'moved'
  AND s.attempt_status IS NOT NULL;

-- split:apply

WITH wanted AS (
    SELECT o.*, s.status AS target_status, s.paid_at, s.description AS target_description,
           s.page_config_id AS target_page_config_id, s.merchant_code, s.checkout_prefix
    FROM stage_orders AS o
    JOIN split_orders AS s ON s.id = o.id
    JOIN split_outcome AS outcome ON outcome.source_table = 'orders' AND outcome.source_id = o.id
    WHERE outcome.outcome = 'moved'
),
inserted AS (
    INSERT INTO orders.orders
        (id, user_id, session_id, page_post_id, status, currency, product_total,
         calendar_total, ticket_total, total, description, page_config_id, merchant_code,
         checkout_prefix, paid_at, payable_until, created_at, updated_at)
    SELECT id, user_id, session_id, page_post_id, target_status, currency, product_total,
           calendar_total, ticket_total, total_amount, target_description,
           target_page_config_id, merchant_code, checkout_prefix, paid_at,
           CASE WHEN target_status = 'pending'
                THEN updated_at AT TIME ZONE 'UTC' + interval '1800 seconds' END,
           created_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC'
    FROM wanted
    ORDER BY id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'orders.orders', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

-- Items take the order's currency (the legacy item had none of its own).
WITH wanted AS (
    SELECT i.*, o.currency
    FROM stage_order_items AS i
    JOIN stage_orders AS o ON o.id = i.order_id
    JOIN split_outcome AS outcome
      ON outcome.source_table = 'order_items' AND outcome.source_id = i.id
    WHERE outcome.outcome = 'moved'
),
inserted AS (
    INSERT INTO orders.order_items
        (id, order_id, kind, source_id, title, slug, image, unit_price, currency, quantity,
         market_place_container_id)
    SELECT id, order_id, 'product', product_id, product_title, product_slug, product_image,
           unit_price, currency, quantity, market_place_container_id
    FROM wanted
    ORDER BY id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'orders.order_items', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

WITH wanted AS (
    SELECT o.id AS order_id, s.checkout_reference, o.sumup_checkout_id, o.sumup_hosted_url,
           s.attempt_status, o.total_amount, o.currency, o.created_at, o.updated_at
    FROM stage_orders AS o
    JOIN split_orders AS s ON s.id = o.id
    JOIN split_outcome AS outcome ON outcome.source_table = 'orders' AND outcome.source_id = o.id
    WHERE outcome.outcome = 'moved' AND s.attempt_status IS NOT NULL
),
inserted AS (
    INSERT INTO orders.payment_attempts
        (order_id, number, checkout_reference, sumup_checkout_id, hosted_url, status, amount,
         currency, created_at, updated_at)
    SELECT order_id, 1, checkout_reference, sumup_checkout_id, sumup_hosted_url,
           attempt_status, total_amount, currency,
           created_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC'
    FROM wanted
    ORDER BY order_id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'orders.payment_attempts', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

-- A paid order was paid with its one checkout: the attempt just made for it (orders 0015,
-- orders.paid_attempt_id; the orders service records it when it marks an order paid).
UPDATE orders.orders AS o
SET paid_attempt_id = attempt.id
FROM orders.payment_attempts AS attempt
JOIN split_orders AS s ON s.id = attempt.order_id
JOIN split_outcome AS outcome
  ON outcome.source_table = 'orders' AND outcome.source_id = attempt.order_id
WHERE attempt.order_id = o.id
  AND attempt.number = 1
  AND outcome.outcome = 'moved'
  AND s.status = 'paid'
  AND s.attempt_status = 'PAID';

-- Past the largest id, never backwards (see relations.sql). Payment attempts got new ids from
-- their own sequence.
SELECT setval(
    pg_get_serial_sequence('orders.orders', 'id'),
    greatest(
        max(id) + 1,
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('orders.orders', 'id')::regclass) + 1, 1)),
    false)
FROM orders.orders
HAVING max(id) IS NOT NULL;

SELECT setval(
    pg_get_serial_sequence('orders.order_items', 'id'),
    greatest(
        max(id) + 1,
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('orders.order_items', 'id')::regclass) + 1, 1)),
    false)
FROM orders.order_items
HAVING max(id) IS NOT NULL;
