-- Checksum view of move `likes`, target side (db_likes): every like, bucketed by user id.

CREATE OR REPLACE TEMP VIEW split_check_likes AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT user_id AS bucket,
           row(user_id, target_type, target_slug, target_id, created_at, updated_at,
               deleted_at) AS row_value
    FROM likes.likes
) AS checked;
