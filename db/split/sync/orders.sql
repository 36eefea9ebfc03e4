-- `rose split sync`, move `orders`: delete the target rows of the orders in sync_keys (order
-- ids, kept), their items and payment attempts first, before orders.sql runs again for them.
-- In db_orders, as orders_owner, in the sync's transaction.
CREATE TEMP TABLE sync_order_ids ON COMMIT DROP AS
SELECT DISTINCT (key ->> 0)::bigint AS id FROM sync_keys WHERE source_table = 'orders';

DELETE FROM orders.payment_attempts WHERE order_id IN (SELECT id FROM sync_order_ids);
DELETE FROM orders.order_items WHERE order_id IN (SELECT id FROM sync_order_ids);
DELETE FROM orders.orders WHERE id IN (SELECT id FROM sync_order_ids);
