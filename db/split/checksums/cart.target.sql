-- Checksum view of move `cart`, target side (db_cart): every line of the new cart, in the
-- columns the move fills (columns the cart adds later are not compared).

CREATE OR REPLACE TEMP VIEW split_check_cart_items AS
SELECT id AS bucket,
       row(id, user_id, session_id, product_id, quantity, market_place_container_id, order_id,
           created_at, updated_at, deleted_at)::text AS row_text
FROM cart.cart_items;
