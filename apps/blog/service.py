"""Domain logic of blog: published posts and pages, page configs (moved here from cart in the
split), likes of posts (written through the likes service, read through FDW) and the markets and
calendars attached to a page (written through relations, read through FDW).

Page configs
    One active config per container: ("page", posts.id) for a page, ("site", 0) for the
    site-wide default that serves checkouts whose items span pages. Every dict this module
    returns says ``sumup_configured`` and never contains the SumUp API key, which is write-only
    here and readable only by orders through ``export.page_payment_configs``. A merchant and
    key a config stops using are kept for orders (``blog.retired_sumup_keys``, by a trigger;
    read through ``export.retired_sumup_keys``), then pruned here on write.

Feature flags (``features``), all booleans, absent meaning off:
    calendar   the page shows the calendars attached to it and takes bookings into a cart
    market     the page shows the market places attached to it
    cart       the page has its own cart and page-scoped checkout (cart's /page/{slug}/checkout/)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec
from sqlalchemy import (
    BigInteger,
    Select,
    and_,
    any_,
    bindparam,
    delete,
    func,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from apps.blog.contract import MAX_BATCH, MAX_ID, UNSET, PageConfigData, UpdatePageConfig
from apps.blog.contract import SERVICE as BLOG
from apps.blog.models import (
    CONTAINER_TYPES,
    PAGE_CONTAINER,
    SITE_CONTAINER,
    SITE_CONTAINER_ID,
    PageConfig,
    Post,
    RetiredSumUpKey,
    RetiredSumUpKeyDays,
    foreign_container_relations,
    foreign_likes,
    foreign_market_places,
)
from apps.common.db import end_read, table_of
from apps.common.fdw import ProviderUnavailable, remote_read
from apps.common.inputs import one_line_name, shows_nothing, whole_number
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.problems import (
    Conflict,
    DependencyUnavailable,
    InvalidInput,
    NotFound,
    Problem,
)
from apps.likes import contract as likes
from apps.relations import contract as relations

PAGE_SIZE = 20
EXCERPT_LENGTH = 240

FEATURES: dict[str, type] = {"calendar": bool, "market": bool, "cart": bool}
FEATURE_LABELS = {
    "calendar": "Calendars: show attached calendars on the page",
    "market": "Market: show attached market places on the page",
    "cart": "Cart: a page cart with its own checkout",
}

# Each is checked with fullmatch (a pattern ending in $ also matches before a final newline).
# SumUp merchant codes are short uppercase codes ("MH4H92C7", "MSANDBOX1").
MERCHANT_CODE_PATTERN = "[A-Z0-9]{6,12}"  # the form's pattern attribute too
MERCHANT_CODE = re.compile(MERCHANT_CODE_PATTERN)
# SumUp limits checkout_reference to 64 characters. Orders builds it as
# "{prefix}{order_id}-{attempt}" with an order id of up to 19 digits (bigint) and an attempt
# number of up to 4 digits, which leaves 64 - 19 - 1 - 4 = 40 characters for the prefix.
SUMUP_REFERENCE_MAX = 64
MAX_CHECKOUT_PREFIX = SUMUP_REFERENCE_MAX - 19 - 1 - 4
CHECKOUT_PREFIX_PATTERN = rf"[A-Za-z0-9_\-]{{1,{MAX_CHECKOUT_PREFIX}}}"
CHECKOUT_PREFIX = re.compile(CHECKOUT_PREFIX_PATTERN)
API_KEY = re.compile(r"[\x21-\x7e]{8,255}")  # printable ASCII, no spaces


# -- page configs -----------------------------------------------------------------------------
def check_container(container_type: str, container_id: int) -> None:
    if container_type not in CONTAINER_TYPES:
        raise InvalidInput(
            f"container_type must be one of {', '.join(CONTAINER_TYPES)}, not {container_type!r}",
            field="container_type",
        )
    if container_type == SITE_CONTAINER and container_id != SITE_CONTAINER_ID:
        raise InvalidInput(
            f"the site-wide config is container_id {SITE_CONTAINER_ID}", field="container_id"
        )
    if container_type == PAGE_CONTAINER and not 1 <= container_id <= MAX_ID:
        raise InvalidInput("a page's container_id is its post id (>= 1)", field="container_id")


def check_features(features: dict[str, Any]) -> None:
    for key, value in features.items():
        wanted = FEATURES.get(key)
        if wanted is None:
            shown = key if len(key) <= 40 else f"{key[:40]}..."  # not echoed whole: any length
            raise InvalidInput(
                f"There is no feature called {shown!r} (features: {', '.join(FEATURES)}).",
                field=f"features.{shown}",
            )
        if not isinstance(value, wanted):
            raise InvalidInput(
                f"features.{key} must be a {wanted.__name__}", field=f"features.{key}"
            )


def check_update(request: UpdatePageConfig) -> None:
    check_container(request.container_type, request.container_id)
    if request.features is not UNSET:
        check_features(request.features)
    code = request.sumup_merchant_code
    if isinstance(code, str) and not MERCHANT_CODE.fullmatch(code):
        raise InvalidInput(
            "Merchant code must be 6 to 12 capital letters or digits, as SumUp writes it "
            "(for example MH4H92C7).",
            field="sumup_merchant_code",
        )
    prefix = request.sumup_checkout_prefix
    if isinstance(prefix, str) and not CHECKOUT_PREFIX.fullmatch(prefix):
        raise InvalidInput(
            f"Checkout prefix must be 1 to {MAX_CHECKOUT_PREFIX} letters, digits, '-' or '_', "
            f"so that every checkout reference stays within SumUp's {SUMUP_REFERENCE_MAX} "
            "characters.",
            field="sumup_checkout_prefix",
        )
    key = request.sumup_api_key
    if isinstance(key, str) and not API_KEY.fullmatch(key):
        raise InvalidInput(
            "API key must be 8 to 255 characters, without spaces.", field="sumup_api_key"
        )


def _configs() -> Select[PageConfig, str | None, str | None]:
    """Active configs with their page's slug and title (the shape of export.page_configs)."""
    is_page = PageConfig.container_type == PAGE_CONTAINER
    return (
        select(PageConfig, Post.slug, Post.title)
        .outerjoin(Post, and_(is_page, Post.id == PageConfig.container_id))
        .where(PageConfig.deleted_at.is_(None))
        # Rows written by Core UPDATEs in this session must not come back stale.
        .execution_options(populate_existing=True)
    )


def _to_data(config: PageConfig, page_slug: str | None, page_title: str | None) -> PageConfigData:
    return PageConfigData(
        id=config.id,
        container_type=config.container_type,
        container_id=config.container_id,
        page_slug=page_slug,
        page_title=page_title,
        features=dict(config.features or {}),
        sumup_merchant_code=config.sumup_merchant_code,
        sumup_checkout_prefix=config.sumup_checkout_prefix,
        sumup_configured=bool(config.sumup_merchant_code and config.sumup_api_key),
        created_at=config.created_at,
        updated_at=config.updated_at,
    )


def _is_container(container_type: str, container_id: int) -> list[Any]:
    return [
        PageConfig.container_type == container_type,
        PageConfig.container_id == container_id,
        PageConfig.deleted_at.is_(None),
    ]


async def find_page_config(
    session: AsyncSession, container_type: str, container_id: int
) -> PageConfigData | None:
    check_container(container_type, container_id)
    row = (
        await session.execute(
            _configs().where(
                PageConfig.container_type == container_type,
                PageConfig.container_id == container_id,
            )
        )
    ).first()
    return None if row is None else _to_data(*row)


async def get_page_config(
    session: AsyncSession, container_type: str, container_id: int
) -> PageConfigData:
    found = await find_page_config(session, container_type, container_id)
    if found is None:
        raise NotFound(f"no page config for {container_type} {container_id}")
    return found


async def get_page_config_by_id(session: AsyncSession, config_id: int) -> PageConfigData:
    row = (await session.execute(_configs().where(PageConfig.id == config_id))).first()
    if row is None:
        raise NotFound(f"no page config {config_id}")
    return _to_data(*row)


async def page_configs_batch(
    session: AsyncSession,
    *,
    ids: Sequence[int] | None = None,
    container_type: str | None = None,
    container_ids: Sequence[int] | None = None,
) -> list[PageConfigData]:
    """Many configs in one query: by ``ids``, or by ``container_ids`` of one ``container_type``.
    Unknown keys are left out; the result is ordered by id."""
    if ids and container_ids:
        raise InvalidInput("give either ids or container_ids, not both", field="container_ids")
    if not ids and not container_ids:
        raise InvalidInput("give ids, or container_type with container_ids", field="ids")
    keys = list(ids or container_ids or [])
    field = "ids" if ids else "container_ids"
    if len(keys) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} {field} in one call", field=field)
    query = _configs().order_by(PageConfig.id)
    if ids:
        query = query.where(PageConfig.id.in_(keys))
    else:
        if container_type is None:
            raise InvalidInput("container_ids need a container_type", field="container_type")
        for container_id in keys:
            check_container(container_type, container_id)
        query = query.where(
            PageConfig.container_type == container_type, PageConfig.container_id.in_(keys)
        )
    return [_to_data(*row) for row in (await session.execute(query)).all()]


async def _require_container(session: AsyncSession, container_type: str, container_id: int) -> None:
    """A page's config needs the page (a post with is_page); the site container always exists."""
    if container_type != PAGE_CONTAINER:
        return
    found = await session.scalar(
        select(Post.id).where(Post.id == container_id, Post.is_page.is_(True))
    )
    if found is None:
        raise NotFound(f"no page {container_id}")


async def _insert_if_missing(session: AsyncSession, container_type: str, container_id: int) -> None:
    """Create an empty config unless an active one exists. Concurrent calls for one container
    create one row: the partial unique index is the ON CONFLICT arbiter."""
    await _inserted(session, container_type, container_id)


async def _inserted(session: AsyncSession, container_type: str, container_id: int) -> bool:
    """:func:`_insert_if_missing`, saying whether this call created the row."""
    table = table_of(PageConfig)
    created = await session.scalar(
        insert(table)
        .values(container_type=container_type, container_id=container_id)
        .on_conflict_do_nothing(
            index_elements=["container_type", "container_id"],
            index_where=table.c.deleted_at.is_(None),
        )
        .returning(table.c.id)
    )
    return created is not None


async def ensure_page_config(
    session: AsyncSession, container_type: str, container_id: int
) -> PageConfigData:
    check_container(container_type, container_id)
    await _require_container(session, container_type, container_id)
    await _insert_if_missing(session, container_type, container_id)
    return await get_page_config(session, container_type, container_id)


async def update_page_config(
    session: AsyncSession, request: UpdatePageConfig, retired_key_days: int
) -> PageConfigData:
    """Apply ``request`` to the container's config, creating the config first if missing. A
    merchant and key the config stops using are kept for orders by the table's trigger (blog
    migration 0004), in this transaction; those kept longer than ``retired_key_days`` are
    deleted here (:func:`prune_retired_keys`)."""
    check_update(request)
    await _require_container(session, request.container_type, request.container_id)
    await _insert_if_missing(session, request.container_type, request.container_id)
    request = await _key_goes_with_its_merchant(session, request)
    changes: dict[str, Any] = {}
    if request.features is not UNSET:
        # Merged in the statement (jsonb ||), so concurrent updates of other flags are kept.
        changes["features"] = PageConfig.features.op("||")(type_coerce(request.features, JSONB))
    for name in ("sumup_merchant_code", "sumup_api_key", "sumup_checkout_prefix"):
        value = getattr(request, name)
        if value is not UNSET:
            changes[name] = value
    if changes:
        await session.execute(
            update(PageConfig)
            .where(*_is_container(request.container_type, request.container_id))
            .values(**changes, updated_at=func.now())
        )
    await prune_retired_keys(session, retired_key_days)
    return await get_page_config(session, request.container_type, request.container_id)


async def _key_goes_with_its_merchant(
    session: AsyncSession, request: UpdatePageConfig
) -> UpdatePageConfig:
    """The request as it goes with the stored key, read once under the config row's lock (kept
    until the update, so a concurrent one cannot change the merchant after this):

    - one removing the merchant removes its key too (kept for its orders by the retiring
      trigger): a key left without its merchant would pair with whichever merchant the config
      names next. A config that names no merchant keeps the key it holds (given before the
      merchant: a form saved naming none, a feature ticked, is no removal of anything);
    - one naming another merchant than the stored one while keeping the stored key is refused:
      that key is the stored merchant's. Kept, it would pair the new merchant with it (its
      checkouts asked for with a key SumUp refuses), and the retiring trigger would drop the
      kept key of a merchant named again (a form opened before another editor switched
      merchants, sent after): the only copy that merchant's orders are settled and refunded
      with. A key stored without a merchant was given for the merchant named next."""
    code = request.sumup_merchant_code
    if code is UNSET or request.sumup_api_key is not UNSET:
        return request
    stored_code, has_key = (
        await session.execute(
            select(PageConfig.sumup_merchant_code, PageConfig.sumup_api_key.is_not(None))
            .where(*_is_container(request.container_type, request.container_id))
            .with_for_update()
        )
    ).one()
    if code is None:
        if stored_code is None:
            return request
        return msgspec.structs.replace(request, sumup_api_key=None)
    if has_key and stored_code is not None and stored_code != code:
        raise InvalidInput(
            f"Give the API key of merchant {code} too: the stored key is merchant "
            f"{stored_code}'s. Or tick Remove the API key to save the page without one.",
            field="sumup_api_key",
        )
    return request


CHANGED_SINCE_OPENED = (
    "These settings changed since you opened them (another editor saved them meanwhile): the "
    "form now shows them as they are. Make your changes again and save."
)


def config_version(config: PageConfigData | None) -> str:
    """What the admin form carries to say which settings it showed: the config's last change
    (empty before the container has one)."""
    return _version(None if config is None else config.updated_at)


def _version(updated_at: datetime | None) -> str:
    return "" if updated_at is None else updated_at.isoformat()


async def check_unchanged_since(
    session: AsyncSession, container_type: str, container_id: int, version: str
) -> None:
    """Refuse (409) a form that showed other settings than the stored ones (``version``, from
    :func:`config_version`): saved, it would put back every field another editor changed since
    it was opened. The row stays locked until the update that follows commits.

    A form that showed no config yet (``""``) inserts it here: there is no row to lock, and two
    editors saving at once both passed, the second overwriting the first. The insert of the
    second waits for the first's (the unique index) and then inserts nothing: refused."""
    stored = await session.scalar(
        select(PageConfig.updated_at)
        .where(*_is_container(container_type, container_id))
        .with_for_update()
    )
    if version != _version(stored):
        raise Conflict(CHANGED_SINCE_OPENED, field="config_version")
    if stored is None and not await _inserted(session, container_type, container_id):
        raise Conflict(CHANGED_SINCE_OPENED, field="config_version")


async def record_retired_key_days(session: AsyncSession, days: int) -> None:
    """Record ``days`` (``BLOG_RETIRED_SUMUP_KEY_DAYS``, fixed for a process: blog does this
    when it starts) as the time retired keys are readable: export.retired_sumup_keys returns
    only entries younger than it, so a key past its days is never read, even while nobody
    writes a config (blog has no background job)."""
    recorded = insert(RetiredSumUpKeyDays).values(one=True, days=days)
    await session.execute(
        recorded.on_conflict_do_update(
            index_elements=[RetiredSumUpKeyDays.one],
            set_={"days": recorded.excluded.days},
            where=RetiredSumUpKeyDays.days != recorded.excluded.days,
        )
    )


async def prune_retired_keys(session: AsyncSession, days: int) -> None:
    """Delete the retired keys kept ``days`` or longer (past them they are not readable
    either): when blog starts, and with every config write."""
    await session.execute(
        delete(RetiredSumUpKey).where(
            RetiredSumUpKey.retired_at <= func.now() - func.make_interval(0, 0, 0, days)
        )
    )


# -- posts ------------------------------------------------------------------------------------
class Attachment(msgspec.Struct):
    """A market place or calendar attached to a page (a relation read through FDW)."""

    child_type: str
    child_id: int
    label: str | None
    sort_order: int
    # A market place's name and slug, as market has them now (read through FDW).
    name: str | None = None
    slug: str | None = None


class PostSummary(msgspec.Struct):
    id: int
    slug: str
    title: str
    excerpt: str
    is_page: bool
    published_at: datetime | None
    # None when nobody is signed in, or when likes could not be read (see ``degraded``).
    is_liked: bool | None


class PostList(msgspec.Struct):
    posts: list[PostSummary]
    page: int
    per_page: int
    total: int
    pages: int
    degraded: list[str]


class PostDetail(msgspec.Struct):
    id: int
    slug: str
    title: str
    body: str
    is_page: bool
    published_at: datetime | None
    is_liked: bool | None
    # Pages only: what is attached to the page (empty for posts, or when relations is down).
    markets: list[Attachment]
    calendars: list[Attachment]
    degraded: list[str]


class PageLink(msgspec.Struct):
    slug: str
    title: str


def _excerpt(body: str) -> str:
    text = " ".join(body.split())
    if len(text) <= EXCERPT_LENGTH:
        return text
    return text[:EXCERPT_LENGTH].rsplit(" ", 1)[0] + "…"


def _published() -> list[Any]:
    return [Post.status == "published"]


async def liked_ids_among(session: AsyncSession, user_id: int, ids: Iterable[int]) -> set[int]:
    """Which of these posts the user likes: one remote query, the page's ids as one array."""
    keys = list(ids)
    if not keys:
        return set()
    rows = await session.scalars(
        select(foreign_likes.c.target_id).where(
            foreign_likes.c.user_id == user_id,
            foreign_likes.c.target_type == "post",
            foreign_likes.c.target_id == any_(bindparam("ids", keys, type_=ARRAY(BigInteger))),
        )
    )
    return set(rows)


async def liked_post_ids(
    session: AsyncSession, user_id: int | None, post_ids: Iterable[int]
) -> tuple[set[int] | None, list[str]]:
    """The liked ones among ``post_ids`` (one remote query for them all), or None with
    ``["likes"]`` when the likes database cannot be reached."""
    ids = list(post_ids)
    if user_id is None or not ids:
        return None, []
    try:
        async with remote_read(session, "likes"):
            return await liked_ids_among(session, user_id, ids), []
    except ProviderUnavailable:
        return None, ["likes"]


def _liked(liked: set[int] | None, post_id: int) -> bool | None:
    return None if liked is None else post_id in liked


async def list_published_posts(
    session: AsyncSession, *, user_id: int | None, page: int = 1, per_page: int = PAGE_SIZE
) -> PostList:
    """One page of published posts (not pages), newest first, with the user's like states."""
    listed = [*_published(), Post.is_page.is_(False)]
    total = await session.scalar(select(func.count()).select_from(Post).where(*listed)) or 0
    posts = list(
        await session.scalars(
            select(Post)
            .where(*listed)
            .order_by(Post.published_at.desc(), Post.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    liked, degraded = await liked_post_ids(session, user_id, (post.id for post in posts))
    summaries = [
        PostSummary(
            id=post.id,
            slug=post.slug,
            title=post.title,
            excerpt=_excerpt(post.body),
            is_page=post.is_page,
            published_at=post.published_at,
            is_liked=_liked(liked, post.id),
        )
        for post in posts
    ]
    pages = max(1, -(-total // per_page))
    return PostList(summaries, page, per_page, total, pages, degraded)


async def list_published_pages(session: AsyncSession) -> list[PageLink]:
    rows = await session.execute(
        select(Post.slug, Post.title)
        .where(*_published(), Post.is_page.is_(True))
        .order_by(Post.title, Post.id)
    )
    return [PageLink(slug, title) for slug, title in rows]


async def require_published_post(session: AsyncSession, slug: str) -> Post:
    post = await session.scalar(select(Post).where(Post.slug == slug, *_published()))
    if post is None:
        raise NotFound(f"no post {slug!r}")
    return post


async def require_page(session: AsyncSession, slug: str) -> Post:
    """A page by slug, published or not (the admin pages edit drafts too)."""
    page = await session.scalar(select(Post).where(Post.slug == slug, Post.is_page.is_(True)))
    if page is None:
        raise NotFound(f"no page {slug!r}")
    return page


async def page_attachments(
    session: AsyncSession, page_id: int
) -> tuple[list[Attachment], list[str]]:
    """What is attached to a page, read through FDW (one remote query), or ``["relations"]``
    as degraded when relations cannot be reached."""
    relations = foreign_container_relations.c
    try:
        async with remote_read(session, "relations"):
            rows = await session.execute(
                select(
                    relations.child_type, relations.child_id, relations.label, relations.sort_order
                )
                .where(
                    relations.parent_type == PAGE_CONTAINER,
                    relations.parent_id == page_id,
                    relations.child_type.in_(("market", "calendar")),
                )
                .order_by(relations.sort_order, relations.id)
            )
            attachments = [Attachment(*row) for row in rows]
    except ProviderUnavailable:
        return [], ["relations"]
    ids = [item.child_id for item in attachments if item.child_type == "market"]
    if not ids:
        return attachments, []
    try:
        places = {place.id: place for place in await market_places(session, ids)}
    except ProviderUnavailable:
        return attachments, ["market"]
    shown: list[Attachment] = []
    for item in attachments:
        if item.child_type == "market":
            place = places.get(item.child_id)
            if place is None:
                continue  # market has no such market place (any more): nothing to show
            item.name, item.slug = place.name, place.slug
        shown.append(item)
    return shown, []


class MarketPlace(msgspec.Struct):
    id: int
    slug: str
    name: str


async def market_places(session: AsyncSession, ids: list[int] | None = None) -> list[MarketPlace]:
    """Market places that exist (market's export view through FDW), all or those of ``ids``."""
    places = foreign_market_places.c
    query = select(places.id, places.slug, places.name).order_by(places.name, places.id)
    if ids is not None:
        query = query.where(places.id.in_(ids))
    async with remote_read(session, "market"):
        rows = await session.execute(query)
        return [MarketPlace(id=row.id, slug=row.slug, name=row.name) for row in rows]


# What each attachment's feature is called in a page's config.
ATTACHMENT_FEATURES = {"market": "market", "calendar": "calendar"}


async def features_switched_off(session: AsyncSession, page_id: int) -> set[str]:
    """The kinds of attachment (``market``, ``calendar``) the page's editor switched off in its
    config: its buyers are not shown them. A page without a config, or one that never said,
    shows them all."""
    features = await session.scalar(
        select(PageConfig.features).where(*_is_container(PAGE_CONTAINER, page_id))
    )
    if not isinstance(features, dict):
        return set()
    return {kind for kind, name in ATTACHMENT_FEATURES.items() if features.get(name) is False}


async def get_published_post(
    session: AsyncSession, slug: str, *, user_id: int | None
) -> PostDetail:
    post = await require_published_post(session, slug)
    liked, degraded = await liked_post_ids(session, user_id, [post.id])
    attachments: list[Attachment] = []
    if post.is_page:
        attachments, relations_degraded = await page_attachments(session, post.id)
        degraded = [*degraded, *relations_degraded]
        switched_off = await features_switched_off(session, post.id)
        attachments = [item for item in attachments if item.child_type not in switched_off]
    return PostDetail(
        id=post.id,
        slug=post.slug,
        title=post.title,
        body=post.body,
        is_page=post.is_page,
        published_at=post.published_at,
        is_liked=_liked(liked, post.id),
        markets=[item for item in attachments if item.child_type == "market"],
        calendars=[item for item in attachments if item.child_type == "calendar"],
        degraded=degraded,
    )


# -- writes in other services -----------------------------------------------------------------
def _one_call_key(action: str) -> str:
    """An idempotency key for one logical call, so the internal client may retry it safely."""
    return f"blog:{action}:{uuid.uuid4()}"


async def like_post(
    session: AsyncSession, internal: InternalClient, user_id: int, slug: str, liked: bool | None
) -> bool:
    """Like or unlike a published post (``liked``; None flips it). Likes knows no posts: blog
    checks it exists."""
    post_id = (await require_published_post(session, slug)).id
    await end_read(session)
    target = likes.LikeTarget(user_id=user_id, target_type="post", target_id=post_id)
    return await likes.change_like(internal, target, liked, caller=BLOG)


class MenuItemForm(msgspec.Struct):
    """The admin form that attaches or detaches a market place (a menu item) of a page. Text,
    as forms send it: :func:`existing_market_place` says in words what is wrong with it."""

    market_place_id: Annotated[str, msgspec.Meta(max_length=20)] = ""
    label: Annotated[str, msgspec.Meta(max_length=255)] | None = None


CHOOSE_MARKET_PLACE = "Choose one of the market places."


def market_place_id(value: str) -> int:
    wanted = whole_number(value, "market_place_id", CHOOSE_MARKET_PLACE)
    if not 1 <= wanted <= MAX_ID:
        raise InvalidInput(CHOOSE_MARKET_PLACE, field="market_place_id")
    return wanted


async def existing_market_place(session: AsyncSession, value: str) -> MarketPlace:
    """The market place the form names, if market has it (read through FDW): a page attaches
    only market places that exist."""
    wanted = market_place_id(value)
    try:
        found = await market_places(session, [wanted])
    except ProviderUnavailable:
        raise DependencyUnavailable(
            "Market places cannot be checked right now; try again shortly.", service="market"
        ) from None
    if not found:
        raise InvalidInput(CHOOSE_MARKET_PLACE, field="market_place_id")
    return found[0]


async def attach_market_place(
    session: AsyncSession, internal: InternalClient, slug: str, item: MenuItemForm
) -> relations.Relation:
    page_id = (await require_page(session, slug)).id
    place = await existing_market_place(session, item.market_place_id)
    await end_read(session)
    # A blank label is no label: the relation carries the market place's name.
    label = place.name
    if item.label and not shows_nothing(item.label):
        label = one_line_name(item.label, "label")
    attached = await internal.call(
        relations.attach_child,
        relations.AttachChild(
            parent_type=PAGE_CONTAINER,
            parent_id=page_id,
            child_type="market",
            child_id=place.id,
            label=label,
        ),
        idempotency_key=_one_call_key("attach"),
    )
    await _undo_if_removed_meanwhile(session, internal, page_id, place)
    return attached


async def _undo_if_removed_meanwhile(
    session: AsyncSession, internal: InternalClient, page_id: int, place: MarketPlace
) -> None:
    """Look again, now relations attached it: market may have removed the place since it was
    checked, having read where it is attached before this attach (no lock spans the two
    services). Gone: this attach is undone, and the editor told. Live: any removal commits after
    this look, and market then looks again and detaches it (apps.relations.contract.
    detach_left_behind). Only a place seen gone is detached: a live one keeps its relation."""
    try:
        live = await market_places(session, [place.id])
    except ProviderUnavailable:
        live = [place]  # it was live a moment ago; a removal since is market's to detach
    finally:
        await end_read(session)
    if live:
        return
    gone = (
        f"Market place {place.name!r} was removed in market meanwhile: it is not attached to "
        "this page."
    )
    try:
        await internal.call(
            relations.detach_child,
            relations.DetachChild(
                parent_type=PAGE_CONTAINER,
                parent_id=page_id,
                child_type="market",
                child_id=place.id,
            ),
            idempotency_key=_one_call_key("detach"),
        )
    except InternalCallError as exc:
        raise Problem(
            f"Market place {place.name!r} was removed in market meanwhile, and relations could "
            f"not be asked to detach it again ({exc}): it is not shown on the page; detach it "
            "once relations answers.",
            status_code=exc.http_status,
            field="market_place_id",
            service="relations",
        ) from exc
    raise Conflict(gone, field="market_place_id")


async def detach_market_place(
    session: AsyncSession, internal: InternalClient, slug: str, market_place_id: int
) -> bool:
    page_id = (await require_page(session, slug)).id
    await end_read(session)
    answer = await internal.call(
        relations.detach_child,
        relations.DetachChild(
            parent_type=PAGE_CONTAINER,
            parent_id=page_id,
            child_type="market",
            child_id=market_place_id,
        ),
        idempotency_key=_one_call_key("detach"),
    )
    return answer.detached
