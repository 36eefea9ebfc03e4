-- Checksum views of move `orders`, target side (db_orders): every order, item and payment
-- attempt. Run right after the move, before the orders service writes (see orders.cart.sql).

-- Definition 2 (ops/split/moves.py `Check.definition`): payable_until too, which the move
-- fills.
CREATE OR REPLACE TEMP VIEW split_check_orders AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, user_id, session_id, page_post_id, status, currency, product_total,
               calendar_total, ticket_total, total, description, page_config_id, merchant_code,
               checkout_prefix, flagged, flag_reason, paid_at, payable_until, created_at,
               updated_at) AS row_value
    FROM orders.orders
) AS checked;

-- Definition 1, without payable_until: what ledgers recorded before definition 2 (their
-- checksums name no definition) are compared with. Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_orders_v1 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, user_id, session_id, page_post_id, status, currency, product_total,
               calendar_total, ticket_total, total, description, page_config_id, merchant_code,
               checkout_prefix, flagged, flag_reason, paid_at, created_at, updated_at)
               AS row_value
    FROM orders.orders
) AS checked;

CREATE OR REPLACE TEMP VIEW split_check_order_items AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, order_id, kind, source_id, title, slug, image, unit_price, currency, quantity,
               market_place_container_id) AS row_value
    FROM orders.order_items
) AS checked;

-- Definition 3: the same columns as definition 2; the source side derives another status for
-- the attempt of an expired or cancelled legacy order (orders.cart.sql).
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT a.order_id AS bucket,
           row(a.order_id, a.number, a.checkout_reference, a.sumup_checkout_id, a.hosted_url,
               a.status, a.amount, a.currency, a.created_at, a.updated_at,
               coalesce(o.paid_attempt_id = a.id, false)) AS row_value
    FROM orders.payment_attempts AS a
    JOIN orders.orders AS o ON o.id = a.order_id
) AS checked;

-- Definition 2: whether the attempt is the one its order was paid with (orders 0015,
-- paid_attempt_id), which the move fills. Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts_v2 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT a.order_id AS bucket,
           row(a.order_id, a.number, a.checkout_reference, a.sumup_checkout_id, a.hosted_url,
               a.status, a.amount, a.currency, a.created_at, a.updated_at,
               coalesce(o.paid_attempt_id = a.id, false)) AS row_value
    FROM orders.payment_attempts AS a
    JOIN orders.orders AS o ON o.id = a.order_id
) AS checked;

-- Definition 1, without it. Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts_v1 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT order_id AS bucket,
           row(order_id, number, checkout_reference, sumup_checkout_id, hosted_url, status, amount,
               currency, created_at, updated_at) AS row_value
    FROM orders.payment_attempts
) AS checked;
