-- A practice monolith for the split: db_cart's page configs, container relations, orders, order
-- items and cart lines, with the quirks a real one has. Deterministic (no random()).
--
-- After db/legacy/cart.sql:
--   psql -d db_cart -v scale=1 -f db/legacy/seed_cart.sql
-- At scale N: pages 1 .. 20*N (the pages of db/legacy/seed_blog.sql), product ids up to
-- 505*N (those of db/legacy/seed_market.sql, some gone), 1,000*N orders, ~2,500*N items.

-- Page configs: the site default ('site', 0) first, then per page: for every 5th page an older
-- config that was deleted, and the current one. Every 7th page's features is NULL (written
-- before the column had a default). Every 3rd page has its own SumUp merchant; the others pay
-- through the site's.
WITH configs AS (
    SELECT 'site' AS container_type, 0 AS container_id,
           '{"market": true, "calendar": true}'::json AS features,
           'MSITE0001' AS merchant, 'sup_sk_site_default_0001' AS api_key, 'rose-' AS prefix,
           timestamp '2022-01-01 09:00' AS created_at, NULL::timestamp AS deleted_at
    UNION ALL
    SELECT 'page', p, '{"market": false}'::json, NULL, NULL, NULL,
           timestamp '2022-02-01 09:00' + p * interval '1 hour',
           timestamp '2022-06-01 09:00' + p * interval '1 hour'
    FROM generate_series(1, 20 * :scale) AS p
    WHERE p % 5 = 0
    UNION ALL
    SELECT 'page', p,
           CASE WHEN p % 7 <> 0
                THEN json_build_object('market', p % 2 = 0, 'calendar', p % 3 <> 0) END,
           CASE WHEN p % 3 = 0 THEN 'MPAGE' || lpad(p::text, 4, '0') END,
           CASE WHEN p % 3 = 0 THEN 'sup_sk_page_' || lpad(p::text, 4, '0') END,
           CASE WHEN p % 3 = 0 THEN 'p' || p || '-' END,
           timestamp '2022-07-01 09:00' + p * interval '1 hour',
           NULL
    FROM generate_series(1, 20 * :scale) AS p
)
INSERT INTO legacy.page_configs
    (container_type, container_id, features, sumup_merchant_code, sumup_api_key,
     sumup_checkout_prefix, created_at, updated_at, deleted_at)
SELECT container_type, container_id, features, merchant, api_key, prefix,
       created_at, coalesce(deleted_at, created_at), deleted_at
FROM configs
ORDER BY created_at;

-- Relations of each page p: its market (child 'market' p) and, on even pages, its calendar
-- ('calendar' 100+p). History: every 4th page had another market that was detached; every
-- 6th page detached its market once and attached it again (a detached row, then the active
-- one). Every 10th page has its calendar attached twice, a second apart (two concurrent
-- attaches in the monolith, which had no unique index).
WITH relations AS (
    SELECT p, 'market' AS child_type, 1000 + p AS child_id, 0 AS sort_order,
           'Old market' AS label,
           timestamp '2022-03-01 09:00' + p * interval '1 hour' AS created_at,
           timestamp '2022-09-01 09:00' + p * interval '1 hour' AS deleted_at
    FROM generate_series(1, 20 * :scale) AS p WHERE p % 4 = 0
    UNION ALL
    SELECT p, 'market', p, 0, 'Market',
           timestamp '2022-04-01 09:00' + p * interval '1 hour',
           timestamp '2022-05-01 09:00' + p * interval '1 hour'
    FROM generate_series(1, 20 * :scale) AS p WHERE p % 6 = 0
    UNION ALL
    SELECT p, 'market', p, 0, 'Market',
           timestamp '2022-07-01 09:00' + p * interval '1 hour', NULL
    FROM generate_series(1, 20 * :scale) AS p
    UNION ALL
    SELECT p, 'calendar', 100 + p, 1, 'Events',
           timestamp '2022-08-01 09:00' + p * interval '1 hour', NULL
    FROM generate_series(1, 20 * :scale) AS p WHERE p % 2 = 0
    UNION ALL
    SELECT p, 'calendar', 100 + p, 1, 'Events',
           timestamp '2022-08-01 09:00:01' + p * interval '1 hour', NULL
    FROM generate_series(1, 20 * :scale) AS p WHERE p % 10 = 0
)
INSERT INTO legacy.container_relations
    (parent_type, parent_id, child_type, child_id, sort_order, label,
     created_at, updated_at, deleted_at)
SELECT 'page', p, child_type, child_id, sort_order, label,
       created_at, coalesce(deleted_at, created_at), deleted_at
FROM relations
ORDER BY created_at;

-- Orders 1 .. 1000*N, by i % 20: 0-11 paid, 12-14 pending, 15-16 failed, 17-18 cancelled,
-- 19 expired. No checkout was ever created for i % 40 = 12 (pending) and i % 40 = 17
-- (cancelled before paying). A third are anonymous (session only); i % 500 = 250 has neither
-- user nor session (an order typed in by hand, which the orders service cannot own). A quarter
-- span several pages (no page_post_id). i % 25 = 0 has no description; i % 50 = 1 has no
-- sumup_reference. Totals are filled from the items below.
INSERT INTO legacy.orders
    (id, user_id, session_id, page_post_id, page_config_id, status, currency,
     calendar_total, ticket_total, description, sumup_checkout_id, sumup_reference,
     sumup_hosted_url, created_at, updated_at)
SELECT o.i,
       CASE WHEN o.i % 3 = 0 OR o.i % 500 = 250 THEN NULL ELSE 1 + o.i % (500 * :scale) END,
       CASE WHEN o.i % 500 = 250 THEN NULL ELSE 'sess-' || substr(md5('session' || o.i), 1, 24) END,
       o.page,
       CASE WHEN o.has_checkout THEN coalesce(page_config.id, site_config.id) END,
       o.status,
       'GBP',
       CASE WHEN o.i % 7 = 0 THEN 12.50 ELSE 0 END,
       CASE WHEN o.i % 11 = 0 THEN 16.00 ELSE 0 END,
       CASE WHEN o.i % 25 <> 0 THEN 'rose-ash order #' || o.i END,
       CASE WHEN o.has_checkout THEN 'co_' || substr(md5('checkout' || o.i), 1, 29) END,
       CASE WHEN o.has_checkout AND o.i % 50 <> 1 THEN 'rose-ash-' || o.i END,
       CASE WHEN o.has_checkout
            THEN 'https://checkout.sumup.com/pay/co_' || substr(md5('checkout' || o.i), 1, 29)
       END,
       timestamp '2023-01-01 08:00' + o.i * interval '47 minutes',
       timestamp '2023-01-01 08:00' + o.i * interval '47 minutes'
           + CASE WHEN o.status = 'pending' THEN interval '0' ELSE interval '6 minutes' END
FROM (
    SELECT i,
           CASE WHEN i % 4 = 0 THEN NULL ELSE 1 + i % (20 * :scale) END AS page,
           CASE
               WHEN i % 20 < 12 THEN 'paid'
               WHEN i % 20 < 15 THEN 'pending'
               WHEN i % 20 < 17 THEN 'failed'
               WHEN i % 20 < 19 THEN 'cancelled'
               ELSE 'expired'
           END AS status,
           i % 40 NOT IN (12, 17) AS has_checkout
    FROM generate_series(1, 1000 * :scale) AS i
) AS o
LEFT JOIN legacy.page_configs AS page_config
       ON page_config.container_type = 'page' AND page_config.container_id = o.page
      AND page_config.deleted_at IS NULL AND page_config.sumup_merchant_code IS NOT NULL
CROSS JOIN (SELECT id FROM legacy.page_configs WHERE container_type = 'site') AS site_config
ORDER BY o.i;
SELECT setval(pg_get_serial_sequence('legacy.orders', 'id'), 1000 * :scale);

-- Items: order i has 1 + i % 4 lines. Product ids run up to 505*N: some products are gone
-- (the item keeps its snapshot). i % 100 = 42 has a first line with quantity 0 (removed from
-- the order before checkout, but never deleted).
INSERT INTO legacy.order_items
    (order_id, product_id, product_title, product_slug, product_image, unit_price, quantity,
     market_place_container_id, created_at)
SELECT o.id,
       line.product_id,
       'Product ' || line.product_id,
       'product-' || line.product_id,
       CASE WHEN line.product_id % 5 <> 0 THEN '/media/products/' || line.product_id || '.jpg' END,
       CASE WHEN line.product_id % 9 = 0 THEN 1.99 + line.product_id % 30
            ELSE 2.50 + line.product_id % 40 END,
       CASE WHEN o.id % 100 = 42 AND line.k = 0 THEN 0 ELSE 1 + (o.id + line.k) % 3 END,
       o.page_post_id,
       o.created_at
FROM legacy.orders AS o
CROSS JOIN LATERAL (
    SELECT k, (o.id * 7 + k * 131) % (505 * :scale) + 1 AS product_id
    FROM generate_series(0, o.id % 4) AS k
) AS line
ORDER BY o.id, line.k;

UPDATE legacy.orders AS o
SET product_total = items.total,
    total_amount = items.total + o.calendar_total + o.ticket_total
FROM (
    SELECT order_id, sum(unit_price * quantity) AS total
    FROM legacy.order_items GROUP BY order_id
) AS items
WHERE items.order_id = o.id;

-- Cart lines 1 .. 500*N, by i: user i%500 on even i, else an anonymous session (every line
-- carries the session it was added in). Product (17i mod 505N)+1: ids above 500N and every 97th
-- no longer exist; every 53rd is withdrawn. The page is 1 + i % 20N, NULL when i % 101 = 0 (older
-- lines). Every 9th line was removed (deleted_at). Quirks: i % 25 = 0 has quantity 0 (set to 0,
-- never removed), i % 40 = 7 has quantity 150 (nothing capped it), i % 15 = 11 a second live
-- line of the same product in the same cart, added a minute later (two concurrent adds), and
-- i % 250 = 125 neither user nor session.
WITH lines AS (
    SELECT i,
           CASE WHEN i % 2 = 0 THEN 1 + i % (500 * :scale) END AS user_id,
           CASE WHEN i % 250 <> 125 THEN 'sess-' || substr(md5('cart' || i), 1, 24) END
               AS session_id,
           (i * 17) % (505 * :scale) + 1 AS product_id,
           CASE WHEN i % 25 = 0 THEN 0 WHEN i % 40 = 7 THEN 150 ELSE 1 + i % 4 END AS quantity,
           CASE WHEN i % 101 <> 0 THEN 1 + i % (20 * :scale) END AS page,
           timestamp '2024-06-01 08:00' + i * interval '13 minutes' AS added_at,
           CASE WHEN i % 9 = 0
                THEN timestamp '2024-06-02 08:00' + i * interval '13 minutes' END AS deleted_at
    FROM generate_series(1, 500 * :scale) AS i
),
all_lines AS (
    SELECT i, 0 AS copy, user_id, session_id, product_id, quantity, page, added_at, deleted_at
    FROM lines
    UNION ALL
    SELECT i, 1, user_id, session_id, product_id, 2, page, added_at + interval '1 minute', NULL
    FROM lines
    WHERE i % 15 = 11 AND deleted_at IS NULL
)
INSERT INTO legacy.cart_items
    (user_id, session_id, product_id, quantity, market_place_container_id,
     created_at, updated_at, deleted_at)
SELECT user_id, session_id, product_id, quantity, page, added_at,
       coalesce(deleted_at, added_at), deleted_at
FROM all_lines
ORDER BY added_at, copy;
