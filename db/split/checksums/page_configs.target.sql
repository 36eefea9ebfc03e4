-- Checksum view of move `page_configs`, target side (db_blog): every page config.

CREATE OR REPLACE TEMP VIEW split_check_page_configs AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, container_type, container_id, features, sumup_merchant_code, sumup_api_key,
               sumup_checkout_prefix, created_at, updated_at, deleted_at) AS row_value
    FROM blog.page_configs
) AS checked;
