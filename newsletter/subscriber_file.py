"""Reading a subscriber file (a CSV export from another newsletter tool, or this tool's own
CSV or JSON export) into checked records.

This is the pure half of an import: it knows file formats and column names, not the
database. It takes what the common exports produce — Mailchimp ("Email Address",
"First Name", "Last Name"; the unsubscribed and cleaned exports with their UNSUB_TIME and
CLEAN_TIME columns), Substack, Buttondown, listmonk, Ghost and this tool's own export —
with ``,``, ``;`` or tab between fields, UTF-8 with or without a BOM, CRLF line ends and
quoted fields that span lines.

This tool's JSON export (``subscribers export --format json``) reads back through
:class:`JsonSubscriberFile`: one object per membership, with its list; :func:`open_subscriber_file`
picks the reader.

Each row becomes a :class:`Record` (a valid address with its name, extra columns as
attributes, and the status the file gives, if any) or a :class:`Rejection` (row number
and reason). When a row gives several statuses (a status column, a date of leaving or of
bouncing), the strictest counts. Rows are numbered as a spreadsheet shows them: the header is row 1. Line
breaks and other control characters in names and text columns fold to a space here, where
the data enters; the ``'`` that guards a formula-like cell in an export (see
:mod:`newsletter.csvsafe`) comes off.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

from .addresses import clean_name, parse_address, single_line
from .csvsafe import restore
from .errors import ImportFileError, InvalidAddress

SAMPLE_BYTES = 64 * 1024
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
DELIMITERS = (",", ";", "\t")


def _norm(header: str) -> str:
    """Column names compared without case, spaces or punctuation: "E-mail Address" ->
    "emailaddress"."""
    return re.sub(r"[^a-z0-9]", "", header.lower())


EMAIL_COLUMNS = {"email", "emailaddress", "mail", "emailaddr", "subscriberemail", "useremail",
                 "memberemail"}
NAME_COLUMNS = {"name", "fullname", "subscribername", "displayname", "membername"}
FIRST_NAME_COLUMNS = {"firstname", "first", "givenname", "fname"}
LAST_NAME_COLUMNS = {"lastname", "last", "surname", "familyname", "lname"}
STATUS_COLUMNS = {"status", "subscribertype", "subscriptionstatus", "memberstatus"}
# Ghost: subscribed_to_emails = false means the member opted out of the newsletter.
SUBSCRIBED_FLAG_COLUMNS = {"subscribedtoemails", "subscribed"}
# A value in these columns means the person left (Mailchimp's unsubscribed export, this
# tool's export) or their address was cleaned after bouncing (Mailchimp's cleaned export).
UNSUBSCRIBED_AT_COLUMNS = {"unsubtime", "unsubscribedat", "unsubscribetime", "unsubscribedate"}
BOUNCED_AT_COLUMNS = {"cleantime", "cleanedat", "bouncedat"}
ATTRIBUTES_JSON_COLUMNS = {"attributes", "attribs"}
# Bookkeeping columns of this tool's export (and of its rejected-rows file): not copied into
# attributes, so exporting and importing again changes nothing.
IGNORED_COLUMNS = {"list", "source", "createdat", "confirmedat", "rejectedrow",
                   "rejectedreason"}

# What the exports call each state, mapped to ours. A status not listed rejects the row:
# guessing could subscribe someone who left.
STATUS_VALUES = {
    "active": "active", "subscribed": "active", "subscriber": "active", "confirmed": "active",
    "enabled": "active", "regular": "active", "premium": "active", "paid": "active",
    "free": "active", "comp": "active", "comped": "active", "complimentary": "active",
    "gifted": "active", "trialed": "active", "trial": "active", "churning": "active",
    "pastdue": "active", "member": "active",
    "pending": "pending", "unconfirmed": "pending", "unactivated": "pending",
    "awaitingconfirmation": "pending", "optin": "pending",
    "unsubscribed": "unsubscribed", "unsubscribe": "unsubscribed", "removed": "unsubscribed",
    "disabled": "unsubscribed", "blocklisted": "unsubscribed", "blacklisted": "unsubscribed",
    "blocked": "unsubscribed", "inactive": "unsubscribed", "deleted": "unsubscribed",
    "churned": "unsubscribed", "paused": "unsubscribed", "spammy": "unsubscribed",
    "archived": "unsubscribed",
    "bounced": "bounced", "cleaned": "bounced", "undeliverable": "bounced",
    "hardbounce": "bounced",
    "complained": "complained", "complaint": "complained", "spam": "complained",
    "spamcomplaint": "complained",
    "manual": "manual", "suppressed": "manual",
}
FALSE_VALUES = {"false", "no", "n", "0", "off", "f"}
TRUE_VALUES = {"true", "yes", "y", "1", "on", "t"}

# Most restrictive first: when one address appears twice, the stricter status wins.
STATUS_RANK = {"complained": 5, "bounced": 4, "manual": 4, "unsubscribed": 3, "pending": 2,
               "active": 1, None: 0}


@dataclass(slots=True)
class Record:
    row: int
    email: str
    key: str
    hash: str
    name: str
    attributes: dict[str, Any]
    status: str | None  # active|pending|unsubscribed|bounced|complained|manual, None = unsaid
    list: str | None = None  # the list the row names (JSON files); None: the import's list

    def merge(self, later: Record) -> None:
        """Fold a later row for the same address into this one. The later row wins for
        every field it fills in (the address as spelled, the name, each attribute); an
        empty one keeps the earlier value. The status is the exception: the stricter of the
        two wins, so a duplicate row can never bring back someone who left."""
        self.email = later.email
        if later.name:
            self.name = later.name
        self.attributes.update(later.attributes)
        if STATUS_RANK[later.status] >= STATUS_RANK[self.status]:
            self.status = later.status


class _RowProblem(Exception):
    """A row that cannot go in; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Rejection:
    row: int  # the CSV row, or the line a JSON item starts on
    reason: str
    values: list[str]  # the CSV row's cells
    item: Any = None  # the JSON item as read
    unit: str = "row"  # how to name ``row`` to the user: row (CSV) or line (JSON)


@dataclass(slots=True)
class Layout:
    """Which column holds what, worked out from the header (or the first row)."""

    delimiter: str
    header: list[str] | None
    email: int
    name: int | None = None
    first_name: int | None = None
    last_name: int | None = None
    status: int | None = None
    subscribed_flag: int | None = None
    unsubscribed_at: int | None = None
    bounced_at: int | None = None
    attributes_json: int | None = None
    extra: list[tuple[int, str]] = field(default_factory=list)


class _CountingReader(io.RawIOBase):
    """Counts the bytes handed to the text decoder, for a progress bar."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n or 0

    def close(self) -> None:
        self.raw.close()
        super().close()


def _stricter(a: str | None, b: str | None) -> str | None:
    return a if STATUS_RANK[a] >= STATUS_RANK[b] else b


class _OpenFile:
    """What the CSV and the JSON reader share: the open text, closing it, and the cached
    DNS resolver for deliverability checks."""

    check_deliverability: bool
    _resolver: Any
    _text: io.TextIOWrapper

    def _dns_resolver(self) -> Any:
        if self.check_deliverability and self._resolver is None:
            from email_validator import caching_resolver

            self._resolver = caching_resolver(timeout=10)
        return self._resolver

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SubscriberFile(_OpenFile):
    """An opened subscriber CSV. Opening it checks the format and finds the columns, so a
    file that cannot be imported fails before anything touches the database."""

    kind = "csv"
    lists_in_file = False  # every row goes into the list the import names

    def __init__(
        self,
        path: Path | str,
        *,
        email_column: str | None = None,
        check_deliverability: bool = False,
    ) -> None:
        self.path = Path(path)
        self.check_deliverability = check_deliverability
        self._resolver: Any = None
        sample = self._sniff_bytes()
        self.size = self.path.stat().st_size
        self._counter = _CountingReader(self.path.open("rb"))
        # surrogateescape lets a bad byte through as a marker, so the row that holds it can
        # be named exactly (the decoder reads ahead of the CSV parser).
        self._text = io.TextIOWrapper(
            io.BufferedReader(self._counter),
            encoding="utf-8-sig",
            errors="surrogateescape",
            newline="",
        )
        # Excel may start a CSV with a "sep=;" line naming the delimiter.
        excel = re.match(r'"?sep=([,;\t|])"?\r?(?:\n|$)', sample)
        delimiter = excel.group(1) if excel else _guess_delimiter(sample)
        self._rows = csv.reader(self._text, delimiter=delimiter)
        self._row_number = 0
        try:
            if excel:
                self._next()
            first = self._first_row()
            self.layout = _layout(first, delimiter, email_column, self.where)
        except BaseException:
            self.close()
            raise
        self._pending_first = None if self.layout.header is not None else first

    # -- opening ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return str(self.path)

    def _sniff_bytes(self) -> str:
        if not self.path.exists():
            raise ImportFileError(f"{self.where}: file not found; check the path")
        if self.path.is_dir():
            raise ImportFileError(f"{self.where}: is a folder, not a CSV file")
        try:
            with self.path.open("rb") as f:
                head = f.read(SAMPLE_BYTES)
        except OSError as exc:
            raise ImportFileError(f"{self.where}: cannot be read: {exc.strerror}") from None
        if not head.strip():
            raise ImportFileError(f"{self.where}: the file is empty; export the list again")
        if head.startswith(b"PK\x03\x04") or head.startswith(b"\xd0\xcf\x11\xe0"):
            raise ImportFileError(
                f"{self.where}: is a spreadsheet, not CSV; save it as \"CSV UTF-8\" and "
                "import that file"
            )
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise ImportFileError(
                f"{self.where}: is UTF-16 text; save it as \"CSV UTF-8\" and import that file"
            )
        if b"\x00" in head:
            raise ImportFileError(f"{self.where}: is not a CSV file (it holds binary data)")
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        try:
            return decoder.decode(head, final=False)
        except UnicodeDecodeError as exc:
            line = head[: exc.start].count(b"\n") + 1
            raise ImportFileError(
                f"{self.where} line {line}: is not UTF-8 text; save the file as "
                "\"CSV UTF-8\" and import it again"
            ) from None

    def _next(self) -> list[str] | None:
        try:
            values = next(self._rows)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise ImportFileError(
                f"{self.where} row {self._row_number + 1}: not readable as CSV ({exc}); "
                "check the file is a CSV export"
            ) from None
        self._row_number += 1
        if _UNDECODABLE.search("".join(values)):
            raise ImportFileError(
                f"{self.where} row {self._row_number}: is not UTF-8 text; save the file as "
                "\"CSV UTF-8\" and import it again"
            )
        # Cells this tool's exports (or others') guarded against formulas read as written.
        return [restore(value) for value in values]

    def _first_row(self) -> list[str]:
        while True:
            values = self._next()
            if values is None:
                raise ImportFileError(f"{self.where}: the file has no rows; export the list again")
            if any(v.strip() for v in values):
                return values

    # -- reading ---------------------------------------------------------------------------

    @property
    def bytes_read(self) -> int:
        return self._counter.count

    @property
    def header(self) -> list[str] | None:
        return self.layout.header

    def __iter__(self) -> Iterator[Record | Rejection]:
        if self._pending_first is not None:
            first, self._pending_first = self._pending_first, None
            yield self._record(self._row_number, first)
        while (values := self._next()) is not None:
            if not "".join(values).strip():
                continue  # blank lines are not rows anyone meant
            yield self._record(self._row_number, values)

    def _record(self, row: int, values: list[str]) -> Record | Rejection:
        layout = self.layout

        def cell(index: int | None) -> str:
            return values[index].strip() if index is not None and index < len(values) else ""

        def text(index: int) -> str:
            """A free-text cell, folded onto one line where it enters."""
            return single_line(values[index]) if index < len(values) else ""

        raw_email = values[layout.email] if layout.email < len(values) else ""
        try:
            address = parse_address(
                raw_email,
                check_deliverability=self.check_deliverability,
                dns_resolver=self._dns_resolver(),
            )
            name = cell(layout.name)
            if not name:
                name = " ".join(p for p in (cell(layout.first_name), cell(layout.last_name)) if p)
            name = clean_name(name)
        except InvalidAddress as exc:
            reason = "no email address" if not raw_email.strip() else str(exc)
            return Rejection(row, reason, values)

        try:
            status = self._status(cell)
        except _RowProblem as exc:
            return Rejection(row, str(exc), values)

        attributes: dict[str, Any] = {}
        if layout.attributes_json is not None:
            attributes.update(_json_object(cell(layout.attributes_json)))
        for index, key in layout.extra:
            value = text(index)
            if value:
                attributes[key] = value
        if layout.header is not None:
            for index in range(len(layout.header), len(values)):
                if value := text(index):
                    attributes[f"column_{index + 1}"] = value
        return Record(row, address.email, address.key, address.hash, name, attributes, status)

    def _status(self, cell: Any) -> str | None:
        """The row's status: the strictest of what its columns say (a date of leaving or
        bouncing, a status, a subscribed flag), so a reader marked complained who also has
        an unsubscribe date stays suppressed."""
        layout = self.layout
        dated: str | None = None
        if cell(layout.unsubscribed_at):
            dated = "unsubscribed"
        if cell(layout.bounced_at):
            dated = "bounced"
        status: str | None = dated
        if layout.status is not None and (given := cell(layout.status)):
            named = STATUS_VALUES.get(_norm(given))
            if named is None and dated is None:
                raise _RowProblem(
                    f"unknown status {given!r}; use active, pending, unsubscribed, bounced "
                    "or complained"
                )
            status = _stricter(status, named)
        if layout.subscribed_flag is not None and (flag := cell(layout.subscribed_flag)):
            if flag.lower() in FALSE_VALUES:
                status = _stricter(status, "unsubscribed")
            elif flag.lower() not in TRUE_VALUES:
                raise _RowProblem(f"subscribed should be true or false, not {flag!r}")
        return status



def _guess_delimiter(sample: str) -> str:
    """The delimiter used most on the first line (outside quotes); comma when none is."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for ch in sample.lstrip("\r\n"):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "\r\n":
            break
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _looks_like_address(value: str) -> bool:
    value = value.strip()
    if "@" not in value or " " in value:
        return False
    try:
        parse_address(value)
    except InvalidAddress:
        return False
    return True


def _layout(first: list[str], delimiter: str, email_column: str | None, where: str) -> Layout:
    """Decide whether the first row is a header and which column holds what."""
    cells = [c.strip() for c in first]
    normed = [_norm(c) for c in cells]
    found = ", ".join(repr(c) for c in cells if c) or "none"

    if email_column is not None:
        wanted = _norm(email_column)
        matches = [i for i, n in enumerate(normed) if n == wanted and wanted]
        if matches:
            return _header_layout(cells, normed, delimiter, matches[0])
        if email_column.isdigit() and 1 <= int(email_column) <= len(cells):
            index = int(email_column) - 1
            if _looks_like_address(cells[index]):
                return _headerless_layout(cells, delimiter, index)
            return _header_layout(cells, normed, delimiter, index)
        raise ImportFileError(
            f"{where}: no column named {email_column!r} (columns found: {found}); "
            "pass --email-column with one of those names"
        )

    for i, n in enumerate(normed):
        if n in EMAIL_COLUMNS:
            return _header_layout(cells, normed, delimiter, i)
    for i, c in enumerate(cells):
        if _looks_like_address(c):
            return _headerless_layout(cells, delimiter, i)
    raise ImportFileError(
        f"{where}: no email column (columns found: {found}); name the column that holds "
        "the addresses with --email-column COLUMN"
    )


def _header_layout(cells: list[str], normed: list[str], delimiter: str, email: int) -> Layout:
    layout = Layout(delimiter=delimiter, header=cells, email=email)
    roles = (
        ("name", NAME_COLUMNS),
        ("first_name", FIRST_NAME_COLUMNS),
        ("last_name", LAST_NAME_COLUMNS),
        ("status", STATUS_COLUMNS),
        ("subscribed_flag", SUBSCRIBED_FLAG_COLUMNS),
        ("unsubscribed_at", UNSUBSCRIBED_AT_COLUMNS),
        ("bounced_at", BOUNCED_AT_COLUMNS),
        ("attributes_json", ATTRIBUTES_JSON_COLUMNS),
    )
    used = {email}
    for attr, names in roles:
        for i, n in enumerate(normed):
            if i not in used and n in names:
                setattr(layout, attr, i)
                used.add(i)
                break
    keys: set[str] = set()
    for i, cell in enumerate(cells):
        if i == layout.first_name:
            key = "first_name"  # kept as attributes too, for greetings
        elif i == layout.last_name:
            key = "last_name"
        elif i in used or normed[i] in IGNORED_COLUMNS or normed[i] in EMAIL_COLUMNS:
            continue
        else:
            key = cell or f"column_{i + 1}"
        while key in keys:
            key += "_2"
        keys.add(key)
        layout.extra.append((i, key))
    return layout


def _headerless_layout(cells: list[str], delimiter: str, email: int) -> Layout:
    """No header: the address column is the email; in a two-column file the other column
    is the name; anything else is kept as column_N."""
    layout = Layout(delimiter=delimiter, header=None, email=email)
    others = [i for i in range(len(cells)) if i != email]
    if len(others) == 1:
        layout.name = others[0]
    else:
        layout.extra = [(i, f"column_{i + 1}") for i in others]
    return layout


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object cell (listmonk's attributes, this tool's export); anything else is
    kept under "attributes" as text rather than lost."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"attributes": text}
    return value if isinstance(value, dict) else {"attributes": value}


# ---------------------------------------------------------------------------------------------
# JSON: this tool's own export (`subscribers export --format json`), read back


# Keys of this tool's JSON export that are bookkeeping, not attributes (the list is used
# when the import does not name one; the dates of leaving and bouncing count as statuses).
JSON_IGNORED_KEYS = {"list", "source", "createdat", "confirmedat", "rejectedline",
                     "rejectedreason"}
JSON_READ_CHARS = 64 * 1024


class JsonSubscriberFile(_OpenFile):
    """An opened JSON subscriber file: an array of objects, one per membership, such as
    ``subscribers export --format json`` writes (``email``, ``name``, ``status``, ``list``,
    ``attributes`` and dates). Read item by item, so memory stays flat however long the
    file. A file that is not such an array fails on opening; a syntax error further down
    fails the import at its line (the import is all or nothing); an item that cannot go in
    is rejected with the line it starts on."""

    kind = "json"
    lists_in_file = True  # each item names its list
    header: list[str] | None = None

    def __init__(
        self,
        path: Path | str,
        *,
        email_column: str | None = None,
        check_deliverability: bool = False,
    ) -> None:
        self.path = Path(path)
        self.email_column = email_column
        self.check_deliverability = check_deliverability
        self._resolver: Any = None
        _check_json_file(self.path)
        self._counter = _CountingReader(self.path.open("rb"))
        self._text = io.TextIOWrapper(io.BufferedReader(self._counter), encoding="utf-8-sig")
        self._decoder = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._line = 1
        self._eof = False
        try:
            self._skip_space()
            if self._peek() != "[":
                raise ImportFileError(
                    f"{self.where} line {self._line}: a JSON subscriber file is a list of "
                    'members, [{"email": ...}, ...], as `newsletter subscribers export '
                    "--format json` writes it"
                )
            self._advance(self._pos + 1)
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def bytes_read(self) -> int:
        return self._counter.count

    # -- the text, a little at a time ------------------------------------------------------

    def _fill(self) -> bool:
        """Read more text; False at the end of the file."""
        if self._eof:
            return False
        if self._pos > JSON_READ_CHARS:
            self._buf, self._pos = self._buf[self._pos:], 0
        try:
            more = self._text.read(max(JSON_READ_CHARS, len(self._buf) - self._pos))
        except UnicodeDecodeError:
            raise ImportFileError(
                f"{self.where} after line {self._line}: is not UTF-8 text; export the list again"
            ) from None
        if not more:
            self._eof = True
            return False
        self._buf += more
        return True

    def _advance(self, to: int) -> None:
        self._line += self._buf.count("\n", self._pos, to)
        self._pos = to

    def _skip_space(self) -> None:
        while True:
            at = self._pos
            while at < len(self._buf) and self._buf[at] in " \t\r\n":
                at += 1
            self._advance(at)
            if at < len(self._buf) or not self._fill():
                return

    def _peek(self) -> str:
        return self._buf[self._pos] if self._pos < len(self._buf) else ""

    def _value(self) -> Any:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue
                line = self._line + self._buf.count("\n", self._pos, exc.pos)
                raise ImportFileError(
                    f"{self.where} line {line}: not valid JSON ({exc.msg}); nothing was "
                    "imported; fix the file or export it again"
                ) from None
            if end == len(self._buf) and self._fill():
                continue  # a number or word may go on in the next piece
            self._advance(end)
            return value

    def _expected(self, what: str) -> ImportFileError:
        found = self._peek()
        got = f"found {found!r}" if found else "the file ends"
        return ImportFileError(
            f"{self.where} line {self._line}: expected {what}, {got}; nothing was imported; "
            "fix the file or export it again"
        )

    # -- reading ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Record | Rejection]:
        first = True
        while True:
            self._skip_space()
            if self._peek() == "]":
                self._advance(self._pos + 1)
                self._skip_space()
                if self._peek():
                    raise self._expected("nothing after the closing ]")
                return
            if not first:
                if self._peek() != ",":
                    raise self._expected("',' or ']' after an item")
                self._advance(self._pos + 1)
                self._skip_space()
            if not self._peek():
                raise self._expected("an item or the closing ]")
            first = False
            line = self._line
            yield self._record(line, self._value())

    def _record(self, line: int, item: Any) -> Record | Rejection:
        def reject(reason: str) -> Rejection:
            return Rejection(line, reason, [], item=item, unit="line")

        if not isinstance(item, dict):
            return reject('not a member; each item is an object such as {"email": "ann@example.com"}')
        by_role: dict[str, str] = {}
        rest: list[str] = []
        wanted_email = _norm(self.email_column) if self.email_column else None
        for key in item:
            normed = _norm(str(key))
            role = _json_role(normed, wanted_email)
            if role is None:
                if normed not in JSON_IGNORED_KEYS:
                    rest.append(key)
            elif role not in by_role:
                by_role[role] = key

        def text(role: str) -> str | None:
            value = item.get(by_role[role]) if role in by_role else None
            if value is None:
                return None
            if not isinstance(value, str):
                raise _RowProblem(f"{by_role[role]} should be text, not {json.dumps(value)[:40]}")
            return value

        try:
            raw_email = text("email") or ""
            if not raw_email.strip():
                return reject("no email address")
            try:
                address = parse_address(raw_email, check_deliverability=self.check_deliverability,
                                        dns_resolver=self._dns_resolver())
                name = text("name") or " ".join(
                    p for p in ((text("first_name") or "").strip(), (text("last_name") or "").strip()) if p
                )
                name = clean_name(name)
            except InvalidAddress as exc:
                return reject(str(exc))
            status = self._status(item, by_role, text)
            list_name = self._list(text)
            attributes = self._attributes(item, by_role, rest)
        except _RowProblem as exc:
            return reject(str(exc))
        return Record(line, address.email, address.key, address.hash, name, attributes, status,
                      list_name)

    def _status(self, item: dict[str, Any], by_role: dict[str, str], text: Any) -> str | None:
        status: str | None = None
        if item.get(by_role.get("unsubscribed_at", "")):
            status = "unsubscribed"
        if item.get(by_role.get("bounced_at", "")):
            status = "bounced"
        given = text("status")
        if given and given.strip():
            named = STATUS_VALUES.get(_norm(given))
            if named is None:
                raise _RowProblem(
                    f"unknown status {given!r}; use active, pending, unsubscribed, bounced "
                    "or complained"
                )
            status = _stricter(status, named)
        if "subscribed_flag" in by_role:
            flag = item[by_role["subscribed_flag"]]
            if flag is False or (isinstance(flag, str) and flag.strip().lower() in FALSE_VALUES):
                status = _stricter(status, "unsubscribed")
            elif not (flag is True or flag is None
                      or (isinstance(flag, str) and flag.strip().lower() in TRUE_VALUES | {""})):
                raise _RowProblem(f"{by_role['subscribed_flag']} should be true or false, not {flag!r}")
        return status

    @staticmethod
    def _list(text: Any) -> str | None:
        from .errors import ListError
        from .subscribers import check_list_name

        value = (text("list") or "").strip()
        if not value:
            return None
        try:
            return check_list_name(value)
        except ListError as exc:
            raise _RowProblem(str(exc)) from None

    @staticmethod
    def _attributes(item: dict[str, Any], by_role: dict[str, str], rest: list[str]) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if "attributes" in by_role:
            given = item[by_role["attributes"]]
            if isinstance(given, str):
                given = _json_object(given.strip())
            if given is not None and not isinstance(given, dict):
                raise _RowProblem(
                    f"{by_role['attributes']} should be an object, not {json.dumps(given)[:40]}"
                )
            attributes.update(given or {})
        for role in ("first_name", "last_name"):
            if role in by_role and isinstance(value := item[by_role[role]], str) and value.strip():
                attributes[role] = single_line(value)
        for key in rest:
            value = item[key]
            if isinstance(value, str):
                value = single_line(value)
            if value not in (None, ""):
                attributes[str(key)] = value
        return attributes



_JSON_ROLES = (
    ("name", NAME_COLUMNS),
    ("first_name", FIRST_NAME_COLUMNS),
    ("last_name", LAST_NAME_COLUMNS),
    ("status", STATUS_COLUMNS),
    ("subscribed_flag", SUBSCRIBED_FLAG_COLUMNS),
    ("unsubscribed_at", UNSUBSCRIBED_AT_COLUMNS),
    ("bounced_at", BOUNCED_AT_COLUMNS),
    ("attributes", ATTRIBUTES_JSON_COLUMNS),
    ("list", {"list"}),
)


def _json_role(normed: str, wanted_email: str | None) -> str | None:
    """What a key of a JSON item holds (keys compared as column names are)."""
    if normed == wanted_email or (wanted_email is None and normed in EMAIL_COLUMNS):
        return "email"
    for role, names in _JSON_ROLES:
        if normed in names:
            return role
    return None


def _check_json_file(path: Path) -> None:
    if not path.exists():
        raise ImportFileError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise ImportFileError(f"{path}: is a folder, not a JSON file")
    try:
        with path.open("rb") as f:
            head = f.read(SAMPLE_BYTES)
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot be read: {exc.strerror}") from None
    if not head.strip():
        raise ImportFileError(f"{path}: the file is empty; export the list again")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        raise ImportFileError(f"{path}: is not UTF-8 text; export the list again")


def _looks_like_json(path: Path) -> bool:
    """A .json file, or one whose text starts as a JSON array of objects."""
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return re.match(rb"(?:\xef\xbb\xbf)?\s*\[\s*[{\]]", head) is not None


def open_subscriber_file(
    path: Path | str,
    *,
    email_column: str | None = None,
    check_deliverability: bool = False,
) -> SubscriberFile | JsonSubscriberFile:
    """Open a subscriber file for import: JSON (this tool's JSON export) when it is named
    .json or starts as a JSON array, else CSV."""
    path = Path(path)
    opener = JsonSubscriberFile if _looks_like_json(path) else SubscriberFile
    return opener(path, email_column=email_column, check_deliverability=check_deliverability)
