"""The database: one schema on SQLite (a file beside newsletter.toml) or PostgreSQL.

:func:`open_store` connects, upgrades the schema in place when an older release made the
database, and returns a :class:`Store`. Work happens in short transactions:
``with store.write() as conn`` for changes (on SQLite it takes the write lock up front, so
two writers queue behind the busy timeout instead of failing halfway) and
``with store.read() as conn`` for queries. Database failures leave these blocks as
:class:`~newsletter.errors.StoreError` naming the database, password masked.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Table, bindparam, create_engine, event, insert, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)

from ..config import mask_url, resolve_database_url
from ..errors import NewsletterError, StoreError
from . import migrations, schema

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_LIST = "main"
T = TypeVar("T")
SQLITE_BUSY_TIMEOUT_S = 15

__all__ = [
    "DEFAULT_LIST",
    "BulkInsert",
    "BulkUpdate",
    "Store",
    "ask_existing",
    "migrations",
    "open_store",
    "open_store_or_scratch",
    "schema",
    "upsert",
]


class Store:
    """A connected, up-to-date database and the newsletter's default list name."""

    def __init__(self, engine: Engine, url: str, default_list: str = DEFAULT_LIST) -> None:
        self.engine = engine
        self.url = url
        self.default_list = default_list
        self.scratch: tempfile.TemporaryDirectory[str] | None = None  # removed on close
        # SQLite lets one writer in at a time, and a writer that finds the lock taken polls
        # for it with growing sleeps (up to 100 ms each): under load, the threads of one
        # process queue here instead, in order, and each goes in the moment the last is done.
        self._writers = threading.RLock() if engine.dialect.name == "sqlite" else None

    @property
    def display_url(self) -> str:
        """The URL fit for messages: password masked."""
        return mask_url(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries, in one transaction for the block (needed by
        PostgreSQL's server-side cursors, which is how long results stream)."""
        with self._errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, *, rollback: bool = False) -> Iterator[Connection]:
        """A connection in a write transaction: committed at the end (or rolled back, for a
        dry run, when ``rollback``), always rolled back on error."""
        with self._writers or nullcontext(), self._errors(), self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            transaction = conn.begin()
            try:
                yield conn
            except BaseException:
                transaction.rollback()
                raise
            if rollback:
                transaction.rollback()
            else:
                transaction.commit()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreError(f"database {self.display_url}: {_reason(exc)}") from exc
        except IntegrityError as exc:
            # Left uncaught by the code inside the block: in practice another process
            # writing the same row at the same moment (PostgreSQL lets both try).
            raise StoreError(
                f"database {self.display_url}: a change conflicted with another one made at "
                f"the same time ({_reason(exc)}); nothing was changed, run the command again"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"


def upsert(conn: Connection, table: Table) -> Any:
    """An INSERT into ``table`` that can say ON CONFLICT DO NOTHING / DO UPDATE, in the
    connection's dialect (both speak it)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table)


def open_store(
    config_or_url: Config | str, *, default_list: str | None = None, upgrade: bool = True
) -> Store:
    """Connect to the database of a configuration (or a URL) and bring its schema up to date.

    ``upgrade=False`` only checks the version, for tools that must not change the database.
    """
    if isinstance(config_or_url, str):
        url = config_or_url
        default_list = default_list or DEFAULT_LIST
    else:
        # A relative SQLite path means "beside newsletter.toml", also when the URL is the
        # built-in default rather than one written in the file.
        url = resolve_database_url(config_or_url.database.url, config_or_url.root)
        default_list = default_list or config_or_url.newsletter.default_list
    url = _driver_url(url)
    store = Store(_engine(url), url, default_list)
    where = store.display_url
    try:
        with store.engine.connect() as conn, conn.begin():
            version = migrations.current_version(conn)
        migrations.check_version(version, where)
        if version != migrations.LATEST:
            if not upgrade:
                raise StoreError(
                    f"database {where} is at schema version {version}, this release needs "
                    f"{migrations.LATEST}; open it once with newsletter to upgrade it"
                )
            with store.write() as conn:
                migrations.upgrade(conn, where)
    except DBAPIError as exc:
        store.close()
        raise StoreError(f"cannot open database {where}: {_reason(exc)}; {_hint(url)}") from exc
    except BaseException:
        store.close()
        raise
    return store


class _DriverMany:
    """One statement for many rows at driver speed.

    SQLAlchemy compiles the statement once and supplies each parameter's conversion (JSON,
    UTC timestamps); the rows then go to the driver's executemany as plain tuples or
    dicts. ``constants`` (a timestamp, a source) are converted once, not once per row; a
    call may give them new values (the same names). Going through the full statement
    machinery row by row took half of a large import."""

    def __init__(self, conn: Connection, statement: Any, types: Mapping[str, Any],
                 constants: Mapping[str, Any]) -> None:
        dialect = conn.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        self.order = list(compiled.positiontup or types) if self.positional else list(types)

        def converter(name: str) -> Any:
            return types[name].dialect_impl(dialect).bind_processor(dialect)

        self.converters = {n: converter(n) for n in constants}
        self.fixed = self._converted(constants)
        self.steps = [(n, n in self.fixed, converter(n)) for n in self.order]

    def _converted(self, constants: Mapping[str, Any]) -> dict[str, Any]:
        if constants.keys() != self.converters.keys():
            raise ValueError(f"constants {sorted(constants)}, expected {sorted(self.converters)}")
        return {n: (convert(v) if (convert := self.converters[n]) else v) for n, v in constants.items()}

    def __call__(self, conn: Connection, rows: Iterable[Mapping[str, Any]],
                 constants: Mapping[str, Any] | None = None) -> None:
        fixed = self.fixed if constants is None else self._converted(constants)
        values = [
            [fixed[n] if is_fixed else (f(row[n]) if f else row[n]) for n, is_fixed, f in self.steps]
            for row in rows
        ]
        if not values:
            return
        params: list[Any] = (
            [tuple(v) for v in values]
            if self.positional
            else [dict(zip(self.order, v, strict=True)) for v in values]
        )
        conn.exec_driver_sql(self.sql, params)


class BulkInsert(_DriverMany):
    """An INSERT for many rows at driver speed, for imports."""

    def __init__(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        constants = dict(constants or {})
        names = [*columns, *constants]
        statement = insert(table).values({n: bindparam(n) for n in names})
        super().__init__(conn, statement, {n: table.c[n].type for n in names}, constants)


class BulkUpdate(_DriverMany):
    """An UPDATE of many rows, each found by ``key``, at driver speed. Rows are mappings
    from column names (and ``key``) to values."""

    def __init__(
        self,
        conn: Connection,
        table: Table,
        key: str,
        columns: Sequence[str],
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        # SQLAlchemy reserves a column's own name for its SET value: bind under other names.
        constants = {f"set_{n}": v for n, v in (constants or {}).items()}
        names = [*(f"set_{c}" for c in columns), *constants]
        statement = (
            update(table)
            .where(table.c[key] == bindparam(f"key_{key}"))
            .values({n.removeprefix("set_"): bindparam(n) for n in names})
        )
        types = {n: table.c[n.removeprefix("set_")].type for n in names}
        types[f"key_{key}"] = table.c[key].type
        super().__init__(conn, statement, types, constants)
        self.key = key
        self.columns = list(columns)

    def __call__(self, conn: Connection, rows: Iterable[Mapping[str, Any]],
                 constants: Mapping[str, Any] | None = None) -> None:
        super().__call__(
            conn,
            ({f"key_{self.key}": row[self.key], **{f"set_{c}": row[c] for c in self.columns}}
             for row in rows),
            None if constants is None else {f"set_{n}": v for n, v in constants.items()},
        )


@contextmanager
def open_store_or_scratch(config_or_url: Config | str) -> Iterator[Store]:
    """The store; or, when it is a SQLite file not made yet, an empty throwaway database
    with the same default list, so a dry run leaves no database behind."""
    url = config_or_url if isinstance(config_or_url, str) else resolve_database_url(
        config_or_url.database.url, config_or_url.root
    )
    path = sqlite_path(url)
    if path is None or path.exists():
        store = open_store(config_or_url)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="newsletter-dry-run-")
        default = None if isinstance(config_or_url, str) else config_or_url.newsletter.default_list
        try:
            store = open_store(f"sqlite:///{Path(scratch.name) / 'scratch.db'}", default_list=default)
        except BaseException:
            scratch.cleanup()
            raise
        store.scratch = scratch
    try:
        yield store
    finally:
        store.close()


def ask_existing(config: Config, query: Callable[[Store], T], default: T) -> T:
    """``query`` run on the database as it is, for a page or listing that only shows
    things: ``default`` when there is no database yet (a SQLite file not made is not
    created), or it cannot be opened or is of another schema version."""
    path = sqlite_path(config.database.url)
    if config.database.url.startswith("sqlite") and (path is None or not path.exists()):
        return default
    try:
        with open_store(config, upgrade=False) as store:
            return query(store)
    except NewsletterError:
        return default


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _driver_url(url: str) -> str:
    """Use psycopg 3 for a plain postgresql:// URL (SQLAlchemy would look for psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _engine(url: str) -> Engine:
    where = mask_url(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            _configure_sqlite(engine)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError:
        raise StoreError(
            f"database {where}: unknown database driver; use sqlite:///newsletter.db or "
            "postgresql+psycopg://user@host/dbname"
        ) from None
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"database {where}: the driver {exc.name!r} is not installed; for PostgreSQL run "
            "pip install 'letterfold[postgres]'"
        ) from None
    except ArgumentError as exc:
        raise StoreError(f"database {where}: not a valid database URL ({exc})") from None


def _configure_sqlite(engine: Engine) -> None:
    """WAL (readers never block the writer), foreign keys enforced, and transactions that
    begin when SQLAlchemy says so rather than when pysqlite guesses."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _reason(exc: DBAPIError) -> str:
    """The driver's message, first line only, with any URL in it masked."""
    message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return mask_url(re.sub(r"\s+", " ", message))


def _hint(url: str) -> str:
    if url.startswith("sqlite"):
        return "check that the folder exists and is writable, or fix [database] url in newsletter.toml"
    return (
        "check that the server is running and the URL is right ([database] url in "
        "newsletter.toml or NEWSLETTER_DATABASE_URL)"
    )
