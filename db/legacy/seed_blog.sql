-- A practice monolith for the split: db_blog's posts and post likes, with the quirks a real one
-- has. Deterministic (no random()): the same :scale gives the same rows.
--
-- After db/legacy/blog.sql:
--   psql -d db_blog -v scale=1 -f db/legacy/seed_blog.sql
-- At scale N: pages 1 .. 20*N, posts up to 200*N, about 2,750*N post likes.

-- Posts 1 .. 200*N; 1 .. 20*N are pages. Every 50th non-page post was deleted outright: its
-- likes are orphans. Every 13th non-page post is a draft.
INSERT INTO legacy.posts (id, slug, title, is_page, status, published_at, created_at, updated_at)
SELECT p,
       CASE WHEN p <= 20 * :scale THEN 'page-' ELSE 'post-' END || p,
       CASE WHEN p <= 20 * :scale THEN 'Page ' ELSE 'Post ' END || p,
       p <= 20 * :scale,
       CASE WHEN p > 20 * :scale AND p % 13 = 0 THEN 'draft' ELSE 'published' END,
       CASE WHEN p <= 20 * :scale OR p % 13 <> 0
            THEN timestamp '2022-05-01 08:00' + p * interval '5 hours' END,
       timestamp '2022-05-01 08:00' + p * interval '5 hours',
       timestamp '2022-05-01 08:00' + p * interval '5 hours'
FROM generate_series(1, 200 * :scale) AS p
WHERE p <= 20 * :scale OR p % 50 <> 0;
SELECT setval(pg_get_serial_sequence('legacy.posts', 'id'), 200 * :scale);

-- Likes: 2,400*N distinct (user, post) pairs over 400*N users (post (31q + 11u) mod 205*N + 1
-- for round q in 0..5; ids above 200*N are gone: orphans). One in ten was unliked. The same
-- duplicate patterns as product likes (see db/legacy/seed_market.sql).
WITH pairs AS (
    SELECT i,
           i % (400 * :scale) + 1 AS user_id,
           ((i / (400 * :scale)) * 31 + (i % (400 * :scale)) * 11) % (205 * :scale) + 1
               AS post_id,
           timestamp '2023-02-01 10:00' + (i::bigint * 6151 % 525600) * interval '1 minute' AS liked_at
    FROM generate_series(0, 2400 * :scale - 1) AS i
),
likes AS (
    SELECT i, user_id, post_id, liked_at AS created_at,
           CASE WHEN i % 10 = 3 THEN liked_at + interval '20 days' END AS deleted_at
    FROM pairs
    UNION ALL
    SELECT i, user_id, post_id,
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
INSERT INTO legacy.post_likes (user_id, post_id, created_at, updated_at, deleted_at)
SELECT user_id, post_id, created_at, coalesce(deleted_at, created_at), deleted_at
FROM likes
ORDER BY created_at, i;
