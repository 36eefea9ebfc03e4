-- `rose split sync`, move `likes`: delete the target likes of the keys in sync_keys (a user and
-- a product, or a user and a post), before likes.sql runs again for them. In db_likes, as
-- likes_owner, in the sync's transaction, after the staging: a product is named by its slug
-- (stage_products holds the products of the keys).
DELETE FROM likes.likes AS target
USING sync_keys AS k
JOIN stage_products AS p ON p.id = (k.key ->> 1)::bigint
WHERE k.source_table = 'product_likes' AND target.user_id = (k.key ->> 0)::bigint
  AND target.target_type = 'product' AND target.target_slug = p.slug;

DELETE FROM likes.likes AS target
USING sync_keys AS k
WHERE k.source_table = 'post_likes' AND target.user_id = (k.key ->> 0)::bigint
  AND target.target_type = 'post' AND target.target_id = (k.key ->> 1)::bigint;

-- A product renamed or removed since: its likes carry the slug they were moved with. The
-- captured product keys ([id, slug], before and after the change) name it; the likes to
-- re-apply are those of the product's users (their keys are in sync_keys too).
DELETE FROM likes.likes AS target
USING sync_keys AS product, sync_keys AS k
WHERE product.source_table = 'products' AND k.source_table = 'product_likes'
  AND (k.key ->> 1)::bigint = (product.key ->> 0)::bigint
  AND target.user_id = (k.key ->> 0)::bigint
  AND target.target_type = 'product' AND target.target_slug = product.key ->> 1;
