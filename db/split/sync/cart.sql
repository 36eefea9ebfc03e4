-- `rose split sync`, move `cart`: delete the target lines of the keys in sync_keys (a cart,
-- user or anonymous session, and a product), before cart.sql runs again for them. In db_cart,
-- as cart_owner, in the sync's transaction; split.sync_outcome says which source lines (ids
-- kept) each key moved.
DELETE FROM cart.cart_items AS target
USING split.sync_outcome AS synced
JOIN sync_keys AS k ON k.source_table = 'cart_items' AND k.key = synced.key
WHERE synced.move = 'cart' AND synced.source_table = 'cart_items'
  AND synced.outcome = 'moved' AND target.id = synced.source_id;
