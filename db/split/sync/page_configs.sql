-- `rose split sync`, move `page_configs`: delete the target rows of the keys in sync_keys (page
-- config ids, kept by the move), before page_configs.sql runs again for them. In db_blog, as
-- blog_owner, in the sync's transaction.
DELETE FROM blog.page_configs AS target
USING sync_keys AS k
WHERE k.source_table = 'page_configs' AND target.id = (k.key ->> 0)::bigint;
