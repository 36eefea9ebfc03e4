-- The monolith's tables in db_cart before the split: cart lines, orders, page configs and
-- container relations, all owned by the old cart app.
--
-- Run as a superuser connected to db_cart (idempotent: it only creates what is missing):
--   psql -d db_cart -v owner=cart_owner -f db/legacy/cart.sql
-- `rose split seed-legacy` runs it with the same variable, then db/legacy/seed_cart.sql.
--
-- The monolith used SQLAlchemy's default DateTime: `timestamp without time zone` holding UTC.

CREATE SCHEMA IF NOT EXISTS legacy AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA legacy FROM PUBLIC;
SET ROLE :"owner";

-- PageConfig: features and SumUp merchant of a page ('page', posts.id) or of the site
-- ('site', 0). Deleting soft-deleted, so a page may have older, deleted rows. `features` is
-- json (not jsonb) and NULL on rows written before the column had a default.
CREATE TABLE IF NOT EXISTS legacy.page_configs (
    id                    serial PRIMARY KEY,
    container_type        varchar(32) NOT NULL,
    container_id          integer NOT NULL,
    features              json,
    sumup_merchant_code   varchar(32),
    sumup_api_key         varchar(255),
    sumup_checkout_prefix varchar(40),
    created_at            timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at            timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at            timestamp
);

-- ContainerRelation: a child (market, calendar) attached to a parent (page). Detaching
-- soft-deleted the row and attaching again inserted a new one, so detached rows are history.
-- Without a unique index, two concurrent attaches could leave two active rows for one pair.
CREATE TABLE IF NOT EXISTS legacy.container_relations (
    id          serial PRIMARY KEY,
    parent_type varchar(32) NOT NULL,
    parent_id   integer NOT NULL,
    child_type  varchar(32) NOT NULL,
    child_id    integer NOT NULL,
    sort_order  integer NOT NULL DEFAULT 0,
    label       varchar(255),
    created_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at  timestamp
);
CREATE INDEX IF NOT EXISTS ix_container_relations_parent
    ON legacy.container_relations (parent_type, parent_id);

-- Order: one SumUp checkout per order, its id, reference and hosted page on the order itself.
-- status: pending (checkout open, or never created), paid, failed (SumUp said FAILED),
-- cancelled, expired (the checkout expired unpaid). page_config_id is the config whose merchant
-- took the payment (NULL when no checkout was created). Older orders have no description, and
-- a few no sumup_reference (it was not stored before the checkout reference was introduced).
CREATE TABLE IF NOT EXISTS legacy.orders (
    id                serial PRIMARY KEY,
    user_id           integer,
    session_id        varchar(64),
    page_post_id      integer,
    page_config_id    integer REFERENCES legacy.page_configs (id),
    status            varchar(20) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'paid', 'failed', 'cancelled', 'expired')),
    currency          char(3) NOT NULL DEFAULT 'GBP',
    product_total     numeric(12, 2) NOT NULL DEFAULT 0,
    calendar_total    numeric(12, 2) NOT NULL DEFAULT 0,
    ticket_total      numeric(12, 2) NOT NULL DEFAULT 0,
    total_amount      numeric(12, 2) NOT NULL DEFAULT 0,
    description       text,
    sumup_checkout_id varchar(64),
    sumup_reference   varchar(64),
    sumup_hosted_url  text,
    created_at        timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at        timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX IF NOT EXISTS ix_orders_user_id ON legacy.orders (user_id);

-- OrderItem: a snapshot of the product when the order was made (title, slug, price). The
-- product lives in db_market and may be gone since. A line removed before checkout stayed with
-- quantity 0.
CREATE TABLE IF NOT EXISTS legacy.order_items (
    id                        serial PRIMARY KEY,
    order_id                  integer NOT NULL REFERENCES legacy.orders (id) ON DELETE CASCADE,
    product_id                integer NOT NULL,
    product_title             varchar(255) NOT NULL,
    product_slug              varchar(255),
    product_image             varchar(512),
    unit_price                numeric(10, 2) NOT NULL,
    quantity                  integer NOT NULL,
    market_place_container_id integer,
    created_at                timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX IF NOT EXISTS ix_order_items_order_id ON legacy.order_items (order_id);

-- CartItem: a product in a shopper's cart, moved by the split's `cart` move into cart.cart_items.
-- A signed-in user's line has user_id (and the session it was added in); an anonymous one only
-- session_id. market_place_container_id is the page the product was added through (NULL on
-- lines from before the monolith recorded it). Removing a line soft-deleted it. The monolith had
-- no unique index, so concurrent adds left two live lines of one product in one cart; setting a
-- quantity to 0 kept the line, and nothing capped quantities.
CREATE TABLE IF NOT EXISTS legacy.cart_items (
    id                        serial PRIMARY KEY,
    user_id                   integer,
    session_id                varchar(64),
    product_id                integer NOT NULL,
    quantity                  integer NOT NULL DEFAULT 1,
    market_place_container_id integer,
    created_at                timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at                timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at                timestamp
);

RESET ROLE;
