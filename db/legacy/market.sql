-- The monolith's tables in db_market before the split: products and their likes.
--
-- Run as a superuser connected to db_market (idempotent: it only creates what is missing):
--   psql -d db_market -v owner=market_owner -f db/legacy/market.sql
-- `rose split seed-legacy` runs it with the same variable, then db/legacy/seed_market.sql.
--
-- The monolith used SQLAlchemy's default DateTime: `timestamp without time zone` holding UTC.

CREATE SCHEMA IF NOT EXISTS legacy AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA legacy FROM PUBLIC;
SET ROLE :"owner";

-- Products. A removed product was deleted outright (its likes stayed behind); a withdrawn one
-- was soft-deleted (deleted_at) and keeps its slug.
CREATE TABLE IF NOT EXISTS legacy.products (
    id             serial PRIMARY KEY,
    slug           varchar(255) NOT NULL UNIQUE,
    title          varchar(255) NOT NULL,
    regular_price  numeric(10, 2) NOT NULL,
    special_price  numeric(10, 2),
    currency       char(3) NOT NULL DEFAULT 'GBP',
    created_at     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at     timestamp
);

-- ProductLike: a like names the product by id (the likes service names it by slug). Like
-- post_likes: no unique constraint (liking again inserted a new row) and no foreign key.
CREATE TABLE IF NOT EXISTS legacy.product_likes (
    id         serial PRIMARY KEY,
    user_id    integer NOT NULL,
    product_id integer NOT NULL,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at timestamp
);
CREATE INDEX IF NOT EXISTS ix_product_likes_user_id ON legacy.product_likes (user_id);

RESET ROLE;
