-- The monolith's tables in db_blog before the split: posts and their likes.
--
-- Run as a superuser connected to db_blog (idempotent: it only creates what is missing):
--   psql -d db_blog -v owner=blog_owner -f db/legacy/blog.sql
-- `rose split seed-legacy` runs it with the same variable, then db/legacy/seed_blog.sql.
--
-- The monolith used SQLAlchemy's default DateTime: `timestamp without time zone` holding UTC.
-- The split reads every such column `AT TIME ZONE 'UTC'`.

-- Everything of the monolith lives in schema `legacy`, owned by the database's owner, readable
-- by nobody else. The split reads it as a superuser; `rose split finalize` drops its tables.
CREATE SCHEMA IF NOT EXISTS legacy AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA legacy FROM PUBLIC;
SET ROLE :"owner";

-- Posts and pages (a page is a post with is_page). Only read by the split: a post like whose
-- post is gone is an orphan.
CREATE TABLE IF NOT EXISTS legacy.posts (
    id           serial PRIMARY KEY,
    slug         varchar(255) NOT NULL UNIQUE,
    title        varchar(255) NOT NULL,
    is_page      boolean NOT NULL DEFAULT false,
    status       varchar(16) NOT NULL DEFAULT 'draft',
    published_at timestamp,
    created_at   timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at   timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- PostLike. Unliking set deleted_at; liking again inserted a NEW row instead of restoring the
-- old one, and there was no unique constraint, so one user and post can have several rows.
-- No foreign key to posts either: deleting a post left its likes behind.
CREATE TABLE IF NOT EXISTS legacy.post_likes (
    id         serial PRIMARY KEY,
    user_id    integer NOT NULL,
    post_id    integer NOT NULL,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at timestamp
);
CREATE INDEX IF NOT EXISTS ix_post_likes_user_id ON legacy.post_likes (user_id);

RESET ROLE;
