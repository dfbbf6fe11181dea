"""Welcome sequences: emails kept as files, mailed to each new reader once per step.

A sequence is a folder ``sequences/<name>/`` beside ``newsletter.toml``::

    sequence.md          optional front matter: list (default: the default list), enabled
    01-welcome.md        front matter: subject, preheader, delay (0, 30m, 1h, 2d, 1w)
    02-three-posts.md    body: Markdown, like a post

A sequence *starts* the first time ``tick`` (or ``newsletter sequences``) sees it; from then
on every reader who *joins* the list (confirms through the site, is added ``--confirmed``,
or is imported ``--welcome``) gets each step ``delay`` after joining.

Each step is a campaign of the engine (``campaigns.sequence`` names the sequence), whose
journal grows: a tick adds the readers whose step has fallen due as ``queued`` rows, in one
transaction under the campaign's row lock, and the engine sends them as it sends an issue
(claims fenced by tokens, outcomes journalled, dead senders' rows ``unknown``). The journal's
unique (campaign, reader) row is what makes a step reach a reader at most once; a reader
whose step fell due more than ``[schedule] grace`` ago (the machine was off) is journalled
``skipped`` and reported instead of mailed late. A step added to a sequence later is not
sent to readers whose time for it had passed before it existed. A step's email is rendered
afresh by every tick that sends it, so an edit reaches the readers not yet mailed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, exists, func, insert, select, update

from .config import Config
from .content import Document, Issue, _known_keys, _string, read_document
from .errors import ContentError, NewsletterError
from .store import Store, upsert
from .store.schema import campaigns, deliveries, lists, memberships
from .store.schema import sequences as sequences_t
from .store.schema import subscribers as subscribers_t
from .subscribers import list_id as resolve_list_id
from .subscribers import not_suppressed

if TYPE_CHECKING:
    from .campaign import CampaignRow
    from .providers import Provider
    from .render import Rendered

SEQUENCE_FILE = "sequence.md"
SEQUENCE_KEYS = {"list", "enabled"}
STEP_KEYS = {"subject", "preheader", "delay"}
STEP_NAME = re.compile(r"^(\d+)-[a-z0-9][a-z0-9-]*\.md$")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DELAY = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
DELAY_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}

ADDED_LATE = "the step was added after it fell due"


class SequenceError(NewsletterError):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------
# The files


@dataclass(frozen=True, slots=True)
class Step:
    sequence: str
    name: str  # the file name without .md, e.g. 01-welcome
    number: int
    path: Path
    subject: str
    preheader: str
    delay: dt.timedelta
    body: str
    body_line: int

    @property
    def key(self) -> str:
        """The step's name in the journal: ``<sequence>/<step>``."""
        return f"{self.sequence}/{self.name}"


@dataclass(frozen=True, slots=True)
class Sequence:
    name: str
    path: Path
    list_name: str | None
    enabled: bool
    steps: tuple[Step, ...]


def sequences_dir(config: Config) -> Path:
    return config.root / "sequences"


def parse_delay(value: Any, where: str) -> dt.timedelta:
    """``0``, ``30m``, ``1h``, ``2d``, ``1w``: how long after joining a step goes out."""
    if isinstance(value, bool) or value is None:
        raise ContentError(f"{where}: delay {value!r} is not a delay; write e.g. delay: 0, delay: 1h or delay: 3d")
    if isinstance(value, int) and value == 0:
        return dt.timedelta(0)
    text = str(value).strip().lower()
    if text == "0":
        return dt.timedelta(0)
    match = DELAY.fullmatch(text)
    if not match:
        hint = f"; write the unit, e.g. delay: {text}d" if text.isdigit() else ""
        raise ContentError(
            f"{where}: delay {value!r} is not a delay{hint or '; write e.g. delay: 0, 30m, 1h, 2d or 1w'}"
        )
    return dt.timedelta(**{DELAY_UNITS[match[2]]: int(match[1])})


def show_delay(delay: dt.timedelta) -> str:
    """A delay as the files write it: 0, 30m, 6h, 3d, 2w."""
    seconds = int(delay.total_seconds())
    if seconds == 0:
        return "0"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"


def _line(doc: Document, key: str) -> str:
    """``file line N`` for ``key`` of the front matter, or the file alone."""
    for number, text in enumerate(doc.path.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(rf"^{re.escape(key)}\s*:", text):
            return f"{doc.path} line {number}"
        if number > 1 and text.strip() in ("---", "..."):
            break
    return str(doc.path)


def load_step(path: Path, sequence: str) -> Step:
    match = STEP_NAME.match(path.name)
    if not match:
        raise ContentError(
            f"{path}: a step's file name is its number, a dash and a name in lower case, "
            "e.g. 01-welcome.md"
        )
    doc = read_document(path)
    _known_keys(doc, STEP_KEYS)
    subject = _string(doc, "subject", required=True, hint="The welcome email's subject")
    if "delay" not in doc.meta:
        raise ContentError(
            f"{path}: delay is missing; add e.g. `delay: 0` (on joining) or `delay: 3d` "
            "(three days after)"
        )
    delay = parse_delay(doc.meta["delay"], _line(doc, "delay"))
    if not doc.body.strip():
        raise ContentError(f"{path}: the step has no text; write the email below the front matter")
    return Step(
        sequence=sequence, name=path.stem, number=int(match[1]), path=path,
        subject=subject or "", preheader=_string(doc, "preheader") or "", delay=delay,
        body=doc.body, body_line=doc.body_line,
    )


def load_sequence(folder: Path) -> Sequence:
    """Read a sequence folder; raises ContentError naming the file (and line) at fault."""
    name = folder.name
    if not NAME.match(name):
        raise ContentError(
            f"{folder}: a sequence's folder name is lower-case letters, digits and dashes, e.g. welcome"
        )
    list_name, enabled = None, True
    settings = folder / SEQUENCE_FILE
    if settings.is_file():
        doc = read_document(settings)
        _known_keys(doc, SEQUENCE_KEYS)
        list_name = _string(doc, "list")
        raw = doc.meta.get("enabled", True)
        if not isinstance(raw, bool):
            raise ContentError(f"{_line(doc, 'enabled')}: enabled must be true or false, not {raw!r}")
        enabled = raw
    steps = []
    for path in sorted(folder.glob("*.md")):
        if path.name == SEQUENCE_FILE or path.name.startswith("."):
            continue
        steps.append(load_step(path, name))
    numbers: dict[int, Step] = {}
    for step in steps:
        other = numbers.get(step.number)
        if other is not None:
            raise ContentError(
                f"{step.path}: step number {step.number} is also {other.path.name}; give each "
                "step a number of its own"
            )
        numbers[step.number] = step
    if not steps:
        raise ContentError(f"{folder}: the sequence has no steps; add a file such as 01-welcome.md")
    steps.sort(key=lambda s: s.number)
    return Sequence(name=name, path=folder, list_name=list_name, enabled=enabled, steps=tuple(steps))


@dataclass(frozen=True, slots=True)
class Broken:
    """A sequence folder that does not load, and why."""

    name: str
    path: Path
    error: str


def load_all(config: Config) -> list[Sequence | Broken]:
    """Every folder under sequences/, by name; one that does not load as :class:`Broken`."""
    root = sequences_dir(config)
    if not root.is_dir():
        return []
    found: list[Sequence | Broken] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(load_sequence(folder))
        except NewsletterError as exc:
            found.append(Broken(folder.name, folder, str(exc)))
    return found


def find_sequence(config: Config, name: str) -> Sequence:
    """The sequence called ``name``; an error listing the others when there is none."""
    folder = sequences_dir(config) / name
    if not NAME.match(name) or not folder.is_dir():
        known = ", ".join(s.name for s in load_all(config)) or "none yet"
        raise SequenceError(
            f"no sequence {name!r} in {sequences_dir(config)} (sequences: {known}); "
            f"make the folder sequences/{name}/ with a step such as 01-welcome.md"
        )
    return load_sequence(folder)


def find_step(sequence: Sequence, name: str) -> Step:
    for step in sequence.steps:
        if name in (step.name, str(step.number), f"{step.number:02d}"):
            return step
    known = ", ".join(s.name for s in sequence.steps)
    raise SequenceError(f"sequence {sequence.name!r} has no step {name!r} (steps: {known})")


# ---------------------------------------------------------------------------------------------
# The email


def step_issue(step: Step) -> Issue:
    """A step as the renderer's Issue: its body is the note, and there are no posts."""
    return Issue(
        path=step.path.parent, slug=step.key, subject=step.subject, preheader=step.preheader,
        list_name=None, send_at=None, date=dt.date.today(), note=step.body,
        note_line=step.body_line, posts=(), file=step.path, sequence=step.sequence,
    )


def render_step(config: Config, step: Step) -> Rendered:
    from .render import render_issue

    return render_issue(config, step_issue(step))


def check_steps(config: Config, name: str, step: str | None = None) -> list[tuple[Rendered, list]]:
    """The pre-flight checks of every step of sequence ``name`` (or of ``step``), as a tick
    runs them before sending: each rendered step with its findings."""
    from .checks import run_checks

    sequence = find_sequence(config, name)
    steps = [find_step(sequence, step)] if step else list(sequence.steps)
    out = []
    for each in steps:
        rendered = render_step(config, each)
        out.append((rendered, run_checks(config, rendered)))
    return out


# ---------------------------------------------------------------------------------------------
# Starting a sequence, and the journal of its steps


@dataclass(frozen=True, slots=True)
class Started:
    name: str
    list_id: int
    list_name: str
    started_at: dt.datetime
    problem: str


def _started(conn: Any, name: str) -> Started | None:
    row = conn.execute(
        select(sequences_t.c.name, sequences_t.c.list_id, lists.c.name.label("list_name"),
               sequences_t.c.started_at, sequences_t.c.problem)
        .select_from(sequences_t.outerjoin(lists, lists.c.id == sequences_t.c.list_id))
        .where(sequences_t.c.name == name)
    ).first()
    if row is None or row.started_at is None or row.list_id is None:
        return None
    return Started(row.name, row.list_id, row.list_name, row.started_at, row.problem or "")


def started(store: Store, name: str) -> Started | None:
    """When ``name`` started and for which list; None when no tick has seen it yet."""
    with store.read() as conn:
        return _started(conn, name)


def start(config: Config, store: Store, sequence: Sequence, now: dt.datetime) -> Started:
    """Record that ``sequence`` has started (once: a second call, or a second process at
    the same moment, keeps the first time), and make a journal for each of its steps."""
    list_name = sequence.list_name or config.newsletter.default_list
    lid = resolve_list_id(store, list_name)
    with store.write() as conn:
        # The row is the lock: a second process waits here for the first one's commit.
        conn.execute(upsert(conn, sequences_t)
                     .values(name=sequence.name, list_id=lid, started_at=now, problem="")
                     .on_conflict_do_nothing(index_elements=[sequences_t.c.name]))
        found = conn.execute(
            select(sequences_t.c.list_id, sequences_t.c.started_at)
            .where(sequences_t.c.name == sequence.name).with_for_update()
        ).one()
        if found.started_at is None or found.list_id != lid:
            # First start after its files failed to load, or moved to another list:
            # readers who join that list from now on.
            conn.execute(update(sequences_t).where(sequences_t.c.name == sequence.name)
                         .values(list_id=lid, started_at=now))
        for step in sequence.steps:
            _open_step(conn, step, lid, config.provider.name, now)
    got = started(store, sequence.name)
    assert got is not None
    return got


def _open_step(conn: Any, step: Step, list_id: int, provider: str, now: dt.datetime) -> None:
    """The step's campaign, made empty (``finished``: no reader is due yet) when missing."""
    have = conn.execute(
        select(campaigns.c.id).where(campaigns.c.issue == step.key, campaigns.c.list_id == list_id)
    ).first()
    if have is not None:
        return
    conn.execute(insert(campaigns).values(
        uid=os.urandom(8).hex(), issue=step.key, list_id=list_id, status="finished",
        subject=step.subject, content_hash="", source_hashes={}, provider=provider, total=0,
        web_html="", created_at=now, updated_at=now, finished_at=now, last_error="",
        sequence=step.sequence,
    ))


def record_problem(store: Store, name: str, problem: str) -> bool:
    """Keep the problems a tick found for sequence ``name``; True when they differ from the
    last tick's (so a problem that goes on is reported once, not every minute)."""
    with store.write() as conn:
        conn.execute(upsert(conn, sequences_t).values(name=name, problem="")
                     .on_conflict_do_nothing(index_elements=[sequences_t.c.name]))
        old = conn.execute(
            select(sequences_t.c.problem).where(sequences_t.c.name == name).with_for_update()
        ).scalar_one()
        if (old or "") == problem:
            return False
        conn.execute(update(sequences_t).where(sequences_t.c.name == name).values(problem=problem))
        return bool(problem)


def _step_campaign(store: Store, step: Step, list_name: str) -> CampaignRow:
    from .campaign import find_campaign

    row = find_campaign(store, step.key, list_name)
    if row is None:
        raise SequenceError(f"{step.key} has no journal yet; run `newsletter tick`")
    return row


@dataclass(frozen=True, slots=True)
class Enqueued:
    queued: int  # readers whose step fell due now, added to the queue
    missed: int  # readers whose step fell due more than the grace ago: skipped, reported
    added_late: int  # readers whose time for the step passed before it existed: skipped quietly


def _joined(list_id: int, since: dt.datetime) -> Any:
    """Active, unsuppressed members of the list who joined at or after ``since``."""
    return and_(
        memberships.c.list_id == list_id, memberships.c.status == "active",
        memberships.c.welcome_from.is_not(None), memberships.c.welcome_from >= since,
        not_suppressed(),
    )


def _members() -> Any:
    return memberships.join(subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id)


def due_count(store: Store, start: Started, step: Step, campaign_id: int, now: dt.datetime) -> int:
    """Readers whose step has fallen due and who are not in its journal yet."""
    with store.read() as conn:
        return conn.execute(
            select(func.count()).select_from(_members()).where(
                _joined(start.list_id, start.started_at),
                memberships.c.welcome_from <= now - step.delay,
                ~_in_journal(campaign_id),
            )
        ).scalar_one()


def _in_journal(campaign_id: int) -> Any:
    return exists().where(deliveries.c.campaign_id == campaign_id,
                          deliveries.c.subscriber_id == memberships.c.subscriber_id)


def enqueue(store: Store, start: Started, step: Step, campaign: CampaignRow, now: dt.datetime,
            grace: dt.timedelta) -> Enqueued:
    """Add the readers whose step has fallen due to its journal: ``queued`` within the
    grace, ``skipped`` after it. One transaction under the campaign's row lock, so two ticks
    at once add each reader once; the campaign is reopened for the engine when any is queued."""
    due_by = now - step.delay  # joined at or before this: the step is due
    late_by = due_by - grace  # joined before this: due more than the grace ago
    existed = campaign.created_at - step.delay  # joined before this: due before the step existed
    with store.write() as conn:
        status = conn.execute(
            select(campaigns.c.status).where(campaigns.c.id == campaign.id).with_for_update()
        ).scalar_one()
        if status == "cancelled":
            return Enqueued(0, 0, 0)
        rows = conn.execute(
            select(memberships.c.subscriber_id, memberships.c.welcome_from).select_from(_members())
            .where(_joined(start.list_id, start.started_at), memberships.c.welcome_from <= due_by,
                   ~_in_journal(campaign.id))
            .order_by(memberships.c.subscriber_id)
        ).all()
        queued, missed, added_late = [], [], []
        for subscriber_id, joined in rows:
            if joined >= late_by:
                queued.append({"s": subscriber_id, "st": "queued", "r": None})
            elif joined < existed:
                added_late.append({"s": subscriber_id, "st": "skipped", "r": ADDED_LATE})
            else:
                due = joined + step.delay
                missed.append({"s": subscriber_id, "st": "skipped",
                               "r": f"due {due:%Y-%m-%d %H:%M} UTC, more than the grace before a tick ran"})
        every = queued + missed + added_late
        if every:
            conn.execute(
                insert(deliveries).values(
                    campaign_id=campaign.id, subscriber_id=bindparam("s"), status=bindparam("st"),
                    reason=bindparam("r"), attempts=0, updated_at=now,
                ),
                every,
            )
            total = conn.execute(
                select(func.count()).where(deliveries.c.campaign_id == campaign.id)).scalar_one()
            values: dict[str, Any] = {"total": total, "updated_at": now}
            if queued and status == "finished":
                values.update(status="sending", finished_at=None)
            conn.execute(update(campaigns).where(campaigns.c.id == campaign.id).values(**values))
    return Enqueued(len(queued), len(missed), len(added_late))


# ---------------------------------------------------------------------------------------------
# Tick: send every step that is due


@dataclass(frozen=True, slots=True)
class SequenceEvent:
    """What a tick did for one step (or, with ``step`` empty, found about a sequence).

    ``outcome`` is sent, stopped (the run paused), failed (not sent: ``detail`` says why),
    missed (readers whose step fell due more than the grace ago) or busy."""

    sequence: str
    step: str
    outcome: str
    detail: str
    new: bool = True

    @property
    def problem(self) -> bool:
        return self.outcome in ("stopped", "failed", "missed")

    def __str__(self) -> str:
        where = f"{self.sequence}/{self.step}" if self.step else self.sequence
        if self.outcome == "sent":
            return f"sequence {where}: {self.detail}"
        verb = {"stopped": "stopped", "failed": "not sent", "missed": "missed",
                "busy": "left alone"}[self.outcome]
        return f"sequence {where}: {verb}: {self.detail}"


ProviderFactory = Callable[[Config], "Provider"]


def tick(config: Config, store: Store, now: dt.datetime, *,
         provider_factory: ProviderFactory | None = None,
         should_stop: Callable[[], bool] = lambda: False,
         **send_options: Any) -> tuple[list[SequenceEvent], str | None]:
    """Start the sequences not seen before and send every step that is due. Returns the
    events and, when a signal stopped a run, "interrupted" or "terminated"."""
    events: list[SequenceEvent] = []
    interrupted: str | None = None
    for sequence in load_all(config):
        if should_stop() or interrupted:
            break
        if isinstance(sequence, Broken):
            new = record_problem(store, sequence.name, sequence.error)
            events.append(SequenceEvent(sequence.name, "", "failed", sequence.error, new=new))
            continue
        if not sequence.enabled:
            continue
        found: list[SequenceEvent] = []
        try:
            begun = start(config, store, sequence, now)
        except NewsletterError as exc:
            found.append(SequenceEvent(sequence.name, "", "failed", str(exc)))
        else:
            for step in sequence.steps:
                if should_stop():
                    break
                event, interrupted = _tick_step(config, store, begun, step, now, provider_factory,
                                                send_options)
                found.extend(event)
                if interrupted:
                    break
        # A failure that goes on is told once; each missed or stopped run is news.
        failures = "\n".join(str(e) for e in found if e.outcome == "failed")
        new = record_problem(store, sequence.name, failures)
        events.extend(SequenceEvent(e.sequence, e.step, e.outcome, e.detail, new=new)
                      if e.outcome == "failed" else e for e in found)
    return events, interrupted


def _tick_step(config: Config, store: Store, begun: Started, step: Step, now: dt.datetime,
               provider_factory: ProviderFactory | None,
               send_options: dict[str, Any]) -> tuple[list[SequenceEvent], str | None]:
    from . import campaign as engine
    from .checks import preflight
    from .providers import get_provider

    name = step.name
    campaign = _step_campaign(store, step, begun.list_name)
    if campaign.status == "cancelled":
        return [], None
    waiting = due_count(store, begun, step, campaign.id, now)
    if not waiting and campaign.status == "finished":
        return [], None
    if engine.live_workers(store, campaign.id):
        return [SequenceEvent(step.sequence, name, "busy", "another process is sending it")], None
    events: list[SequenceEvent] = []
    provider: Provider | None = None
    try:
        rendered = render_step(config, step)
        preflight(config, rendered)
        if waiting:
            added = enqueue(store, begun, step, campaign, now, config.schedule.grace)
            if added.missed:
                events.append(SequenceEvent(
                    step.sequence, name, "missed",
                    f"{added.missed:,} reader{'s' if added.missed != 1 else ''} skipped: the step fell "
                    f"due more than {_grace(config)} before a tick ran (is the scheduler running?)"))
        campaign = _step_campaign(store, step, begun.list_name)
        if campaign.status in ("finished", "cancelled"):
            return events, None
        if rendered.content_hash != campaign.content_hash:
            engine.accept_content(store, campaign, rendered)  # an edited step: the rest get it
            campaign = _step_campaign(store, step, begun.list_name)
        provider = (provider_factory or get_provider)(config)
        before = engine.counts(store, campaign.id)
        result = engine.send_campaign(config, store, campaign, rendered, provider, **send_options)
    except NewsletterError as exc:
        return [*events, SequenceEvent(step.sequence, name, "failed", str(exc))], None
    finally:
        if provider is not None:
            provider.close()
    c = result.counts
    # What this run sent; failed and unknown as the journal moved while it ran (another
    # tick sending the same step at the same moment says what it sent itself).
    parts = [f"{result.sent_now:,} sent"] + [
        f"{c[s] - before[s]:,} {s}" for s in ("failed", "unknown") if c[s] - before[s] > 0]
    if c["unknown"]:
        parts.append(f"{c['unknown']:,} unknown in all: their email may have gone out, so they "
                     "are not mailed again (`newsletter sequences` lists the step)")
    if result.finished:
        events.append(SequenceEvent(step.sequence, name, "sent", ", ".join(parts)))
        return events, None
    interrupted = result.stopped_reason if result.stopped_reason in ("interrupted", "terminated") else None
    events.append(SequenceEvent(step.sequence, name, "stopped",
                                f"{', '.join(parts)}; stopped ({result.stopped_reason}); the next tick goes on"))
    return events, interrupted


def _grace(config: Config) -> str:
    return show_delay(config.schedule.grace)


# ---------------------------------------------------------------------------------------------
# What `newsletter sequences` shows


@dataclass
class StepReport:
    step: Step
    counts: Counter = field(default_factory=Counter)  # journal rows by status
    waiting: int = 0  # joined, not yet due (or due since the last tick)
    skipped_reasons: Counter = field(default_factory=Counter)


@dataclass
class SequenceReport:
    name: str
    sequence: Sequence | None
    error: str | None
    started: Started | None
    steps: list[StepReport] = field(default_factory=list)
    orphans: list[tuple[str, Counter]] = field(default_factory=list)  # journals of removed steps


def report(config: Config, store: Store, now: dt.datetime | None = None) -> list[SequenceReport]:
    """Each sequence, and for each step how many readers were sent it, wait for it, were
    skipped (and why), failed or are unknown. Starts the sequences not seen before, as a
    tick would (a sequence's start is the moment from which joining readers get it)."""
    from .campaign import stopped_mid_call

    now = now or utcnow()
    out: list[SequenceReport] = []
    for sequence in load_all(config):
        if isinstance(sequence, Broken):
            out.append(SequenceReport(sequence.name, None, sequence.error, started(store, sequence.name)))
            continue
        begun = start(config, store, sequence, now) if sequence.enabled else started(store, sequence.name)
        rep = SequenceReport(sequence.name, sequence, None, begun)
        journals = _journals(store, sequence.name)
        for step in sequence.steps:
            sr = StepReport(step)
            journal = journals.pop(step.key, None)
            if journal is not None:
                sr.counts, sr.skipped_reasons = journal[1], journal[2]
            if begun is not None and journal is not None:
                stale = stopped_mid_call(store, journal[0]) if sr.counts["sending"] else 0
                # Rows a sender that is gone left in flight: their outcome is unknown (the
                # next tick says so in the journal too), and nobody waits for them.
                sr.counts["unknown"] += stale
                sr.counts["sending"] -= stale
                sr.waiting = _waiting(store, begun, journal[0]) - stale
            rep.steps.append(sr)
        rep.orphans = [(key.partition("/")[2], counts) for key, (_id, counts, _r) in sorted(journals.items())]
        out.append(rep)
    return out


def _journals(store: Store, name: str) -> dict[str, tuple[int, Counter, Counter]]:
    """Each step journal of sequence ``name``: id, rows by status, skipped rows by reason."""
    with store.read() as conn:
        camps = {r.id: r.issue for r in conn.execute(
            select(campaigns.c.id, campaigns.c.issue).where(campaigns.c.sequence == name))}
        found: dict[str, tuple[int, Counter, Counter]] = {
            issue: (cid, Counter(), Counter()) for cid, issue in camps.items()}
        if not camps:
            return found
        for cid, status, reason, n in conn.execute(
            select(deliveries.c.campaign_id, deliveries.c.status,
                   deliveries.c.reason, func.count())
            .where(deliveries.c.campaign_id.in_(list(camps)))
            .group_by(deliveries.c.campaign_id, deliveries.c.status, deliveries.c.reason)
        ):
            entry = found[camps[cid]]
            entry[1][status] += n
            if status == "skipped":
                entry[2][ADDED_LATE if reason == ADDED_LATE else "late" if (reason or "").startswith("due ")
                         else "left"] += n
    return found


def _waiting(store: Store, begun: Started, campaign_id: int) -> int:
    """Readers in the sequence not in this step's journal yet, plus those queued in it."""
    with store.read() as conn:
        outside = conn.execute(
            select(func.count()).select_from(_members())
            .where(_joined(begun.list_id, begun.started_at), ~_in_journal(campaign_id))
        ).scalar_one()
        queued = conn.execute(
            select(func.count()).where(deliveries.c.campaign_id == campaign_id,
                                       deliveries.c.status.in_(("queued", "sending")))
        ).scalar_one()
    return outside + queued
