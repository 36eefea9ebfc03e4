-- Checksum view of move `likes`, source side, post likes (db_blog). As likes.market.sql, for
-- posts: the target names a post by id.

CREATE OR REPLACE TEMP VIEW split_check_likes AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT l.user_id::bigint AS bucket,
           row(l.user_id, 'post'::text, NULL::text, l.post_id,
               min(l.created_at) AT TIME ZONE 'UTC',
               max(l.updated_at) AT TIME ZONE 'UTC',
               CASE WHEN bool_or(l.deleted_at IS NULL) THEN NULL
                    ELSE max(l.deleted_at) AT TIME ZONE 'UTC' END) AS row_value
    FROM legacy.post_likes AS l
    JOIN legacy.posts AS p ON p.id = l.post_id
    GROUP BY l.user_id, l.post_id
) AS checked;
