-- Checksum view of move `cart`, target side (db_cart): every line of the new cart, in the
-- columns the move fills (columns the cart adds later are not compared).

CREATE OR REPLACE TEMP VIEW split_check_cart_items AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, user_id, session_id, product_id, quantity, market_place_container_id, order_id,
               created_at, updated_at, deleted_at) AS row_value
    FROM cart.cart_items
) AS checked;
