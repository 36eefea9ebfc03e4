-- A practice monolith for the split: db_market's products and product likes, with the quirks a
-- real one has. Deterministic (no random()): the same :scale gives the same rows.
--
-- After db/legacy/market.sql:
--   psql -d db_market -v scale=1 -f db/legacy/seed_market.sql
-- At scale N: 500*N product ids, about 7,500*N product likes.

-- Products 1 .. 500*N. Every 97th was deleted outright: its likes are orphans. Every 53rd is
-- withdrawn (soft-deleted): its likes still name a slug, so they move.
INSERT INTO legacy.products
    (id, slug, title, regular_price, special_price, currency, created_at, updated_at, deleted_at)
SELECT p,
       'product-' || p,
       'Product ' || p,
       2.50 + p % 40,
       CASE WHEN p % 9 = 0 THEN 1.99 + p % 30 END,
       'GBP',
       timestamp '2022-06-01 09:00' + p * interval '3 hours',
       timestamp '2022-06-01 09:00' + p * interval '3 hours',
       CASE WHEN p % 53 = 0 THEN timestamp '2024-03-01 12:00' + p * interval '1 hour' END
FROM generate_series(1, 500 * :scale) AS p
WHERE p % 97 <> 0;
SELECT setval(pg_get_serial_sequence('legacy.products', 'id'), 500 * :scale);

-- Likes: 6,500*N distinct (user, product) pairs over 500*N users. For a user u and a round q
-- (0..12) the product is (37q + 13u) mod 505*N + 1, distinct for distinct q; product ids above
-- 500*N no longer exist (orphans, like the deleted every-97th). One like in ten was unliked
-- (deleted_at 20 days later).
--
-- Then the duplicates the monolith's toggle left (liking again inserted a new row):
--   i % 20 = 0,  even round: active like + a later row that was unliked again
--   i % 20 = 0,  odd round:  active like + an EARLIER active row (imported with older clock)
--   i % 20 = 3:              unliked like + a later active row (liked again)
--   i % 20 = 13:             unliked like + an earlier row, unliked later (stays unliked)
-- Rows are inserted in created_at order, so ids follow time as in the real table.
WITH pairs AS (
    SELECT i,
           i % (500 * :scale) + 1 AS user_id,
           ((i / (500 * :scale)) * 37 + (i % (500 * :scale)) * 13) % (505 * :scale) + 1
               AS product_id,
           timestamp '2023-01-01 10:00' + (i::bigint * 7919 % 525600) * interval '1 minute' AS liked_at
    FROM generate_series(0, 6500 * :scale - 1) AS i
),
likes AS (
    SELECT i, user_id, product_id, liked_at AS created_at,
           CASE WHEN i % 10 = 3 THEN liked_at + interval '20 days' END AS deleted_at
    FROM pairs
    UNION ALL
    SELECT i, user_id, product_id,
           CASE
               WHEN i % 20 = 0 AND (i / 20) % 2 = 0 THEN liked_at + interval '30 days'
               WHEN i % 20 = 0 THEN liked_at - interval '10 days'
               WHEN i % 20 = 3 THEN liked_at + interval '30 days'
               ELSE liked_at - interval '5 days'
           END,
           CASE
               WHEN i % 20 = 0 AND (i / 20) % 2 = 0 THEN liked_at + interval '40 days'
               WHEN i % 20 = 13 THEN liked_at + interval '25 days'
           END
    FROM pairs
    WHERE i % 20 IN (0, 3, 13)
)
INSERT INTO legacy.product_likes (user_id, product_id, created_at, updated_at, deleted_at)
SELECT user_id, product_id, created_at, coalesce(deleted_at, created_at), deleted_at
FROM likes
ORDER BY created_at, i;
