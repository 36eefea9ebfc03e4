-- Checksum view of move `likes`, target side (db_likes): every like, bucketed by user id.

CREATE OR REPLACE TEMP VIEW split_check_likes AS
SELECT user_id AS bucket,
       row(user_id, target_type, target_slug, target_id, created_at, updated_at,
           deleted_at)::text AS row_text
FROM likes.likes;
