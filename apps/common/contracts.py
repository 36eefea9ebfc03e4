"""The shape of a contract between services, written once as code.

A service's ``contract`` module declares what others may ask of it, with typed request and
answer structures:

- :class:`Action` ``POST /internal/actions/{name}``: a change (JSON in, JSON out);
- :class:`Query` ``GET /internal/data/{name}``: a read (query parameters in, JSON out);
- :class:`Fragment` ``GET /internal/fragments/{name}``: an HTML snippet for another's page;
- :class:`ExportView`: a view of its ``export`` schema other services read through postgres_fdw.

The provider registers its routes from these objects (``apps.common.internal``), callers use the
typed methods of :class:`~apps.common.internal_client.InternalClient` with them, and consumers
build their foreign tables from the views. A changed field is then a type error at every caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

Request = TypeVar("Request", bound=msgspec.Struct)
Answer = TypeVar("Answer")
Params = TypeVar("Params", bound=msgspec.Struct)


PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """A query or fragment that takes no parameters."""


class IdentityParams(msgspec.Struct, forbid_unknown_fields=True):
    """Whose: a signed-in user's (``user_id``) or an anonymous session's (``session_id``)."""

    user_id: PositiveId | None = None
    session_id: SessionId | None = None


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    """Sign-in: what the anonymous session gathered becomes the user's. ``check_only``: move
    nothing, only answer 409 if the session was given to another account (sign-in asks every
    service so before any of them moves anything)."""

    user_id: PositiveId
    session_id: SessionId
    check_only: bool = False


class Adopted(msgspec.Struct):
    adopted: int


@dataclass(frozen=True)
class Action(Generic[Request, Answer]):
    """A change another service may ask for. ``keyed``: it honours ``Idempotency-Key`` (its
    effect runs once per key), so a caller may retry it."""

    service: str
    name: str
    request: type[Request]
    answer: type[Answer]
    keyed: bool = True

    @property
    def path(self) -> str:
        return f"/internal/actions/{self.name}"


@dataclass(frozen=True)
class Query(Generic[Params, Answer]):
    """A read another service may make; ``params`` are its query parameters."""

    service: str
    name: str
    params: type[Params]
    answer: type[Answer]  # a class, or a generic alias such as list[Relation]

    @property
    def path(self) -> str:
        return f"/internal/data/{self.name}"


@dataclass(frozen=True)
class Fragment(Generic[Params]):
    """An HTML snippet another service may embed in its pages."""

    service: str
    name: str
    params: type[Params]

    @property
    def path(self) -> str:
        return f"/internal/fragments/{self.name}"


Call = Action[Any, Any] | Query[Any, Any] | Fragment[Any]

# The PostgreSQL type of an export view column (as format_type() spells it) -> SQLAlchemy type.
_SQL_TYPES: dict[str, TypeEngine[Any]] = {
    "bigint": BigInteger(),
    "integer": Integer(),
    "boolean": Boolean(),
    "text": Text(),
    "jsonb": JSONB(),
    "timestamp with time zone": DateTime(timezone=True),
}


def sqlalchemy_type(sql_type: str) -> TypeEngine[Any]:
    if sql_type in _SQL_TYPES:
        return _SQL_TYPES[sql_type]
    if sql_type.startswith("character varying"):
        length = sql_type.partition("(")[2].rstrip(")")
        return String(int(length)) if length else String()
    if sql_type.startswith("character("):
        return String(int(sql_type.partition("(")[2].rstrip(")")))
    if sql_type.startswith("numeric("):
        precision, _, scale = sql_type.partition("(")[2].rstrip(")").partition(",")
        return Numeric(int(precision), int(scale))
    raise ValueError(f"no SQLAlchemy type is declared for the SQL type {sql_type!r}")


@dataclass(frozen=True)
class ViewColumn:
    name: str
    sql_type: str  # as PostgreSQL's format_type() spells it

    @property
    def declaration(self) -> str:
        return f"{self.name} {self.sql_type}"


@dataclass(frozen=True)
class ExportView:
    """A view in the provider's ``export`` schema: its columns are its contract."""

    provider: str
    name: str
    columns: tuple[ViewColumn, ...]
    primary_key: str | None = "id"

    @classmethod
    def of(
        cls, provider: str, name: str, *columns: str, primary_key: str | None = "id"
    ) -> ExportView:
        """``ExportView.of("likes", "likes", "id bigint", "user_id bigint", ...)``."""
        parsed = tuple(ViewColumn(*column.split(" ", 1)) for column in columns)
        return cls(provider, name, parsed, primary_key)

    def column(self, name: str) -> ViewColumn:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.provider} export view {self.name} has no column {name!r}")

    def foreign_table(self, columns: Iterable[str] | None = None) -> Table:
        """The consumer's foreign table of this view (in a schema named after the provider),
        with all its columns or only ``columns``. Never in a service's migrated MetaData."""
        wanted = [self.column(name) for name in columns] if columns is not None else self.columns
        return Table(
            self.name,
            MetaData(schema=self.provider),
            *(
                Column(
                    column.name,
                    sqlalchemy_type(column.sql_type),
                    primary_key=column.name == self.primary_key,
                )
                for column in wanted
            ),
        )


@dataclass(frozen=True)
class Contract:
    """Everything a service offers to others: who it is (its name, its development port,
    whether browsers reach it), its calls, its export views, the action that moves what an
    anonymous session gathered to the user at sign-in (if it keeps any), and the fragment it
    puts in every page's navigation (if any)."""

    service: str
    dev_port: int
    public: bool
    calls: Sequence[Call]
    views: Sequence[ExportView] = ()
    on_sign_in: Action[SignIn, Any] | None = None
    # The snippet every public page's navigation embeds from this service (whose cart, whose
    # orders), if it offers one.
    nav: Fragment[IdentityParams] | None = None
    _by_name: dict[str, Call] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for call in self.calls:
            if call.service != self.service:
                raise ValueError(f"{call.name} belongs to {call.service}, not {self.service}")
            key = f"{type(call).__name__}:{call.name}"
            if key in self._by_name:
                raise ValueError(f"{self.service} declares {key} twice")
            self._by_name[key] = call

    def view(self, name: str) -> ExportView:
        for view in self.views:
            if view.name == name:
                return view
        raise KeyError(f"{self.service} exports no view {name!r}")
