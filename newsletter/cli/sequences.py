"""The welcome sequences command: what each sequence's steps did."""

from __future__ import annotations

import click

from .common import pass_env, plural, show_path
from .schedule import NOW_HELP, _now


@click.command()
@click.option("--now", hidden=True, help=NOW_HELP)
@pass_env
def sequences(env, now: str | None) -> None:
    """Each welcome sequence (sequences/<name>/), its steps, and per step how many readers
    were sent it, are waiting for it and were skipped.

    A sequence starts the first time this command or `tick` sees it: readers who join its
    list from then on (confirming through the site, `subscribers add --confirmed`,
    `subscribers import --welcome`) get each step its `delay` after joining. `tick` sends
    the steps that are due. Exit code 1 when a sequence's files do not load.
    """
    from ..schedule import show_time
    from ..sequences import report, sequences_dir, show_delay
    from ..store import open_store

    config = env.config
    tz = config.newsletter.timezone
    moment = _now(env, now)
    with open_store(config) as store:
        found = report(config, store, moment)
    if not found:
        click.echo(f"no welcome sequences yet; make {show_path(sequences_dir(config))}/welcome/ "
                   "with a step such as 01-welcome.md (see the README, \"Welcome emails\")")
        return
    broken = False
    for n, seq in enumerate(found):
        if n:
            click.echo()
        if seq.error:
            broken = True
            click.echo(f"{seq.name}: does not load: {seq.error}", err=True)
            continue
        assert seq.sequence is not None
        list_name = seq.sequence.list_name or config.newsletter.default_list
        if not seq.sequence.enabled:
            state = "disabled (enabled: false in sequence.md); nothing is sent"
        elif seq.started is not None:
            state = f"readers who joined since {show_time(seq.started.started_at, tz)}"
        else:
            state = "not started"
        click.echo(f"{seq.name} → list {list_name}: {state}")
        width = max(len(s.step.name) for s in seq.steps)
        click.echo(f"  {'step':<{width}}  {'delay':>5}  {'sent':>7}  {'waiting':>7}  {'skipped':>7}"
                   f"  {'failed':>6}  {'unknown':>7}  subject")
        for s in seq.steps:
            c = s.counts
            click.echo(f"  {s.step.name:<{width}}  {show_delay(s.step.delay):>5}  {c['sent']:>7,}  "
                       f"{s.waiting:>7,}  {c['skipped']:>7,}  {c['failed']:>6,}  {c['unknown']:>7,}"
                       f"  {s.step.subject}")
        reasons = sum((s.skipped_reasons for s in seq.steps), start=type(seq.steps[0].skipped_reasons)())
        if reasons:
            said = {"left": "left the list before their step", "late": "fell due while no tick ran",
                    "the step was added after it fell due": "joined before the step was written"}
            parts = [f"{n:,} {said.get(why, why)}" for why, n in sorted(reasons.items())]
            click.echo(f"  skipped: {'; '.join(parts)}")
        unknown = sum(s.counts["unknown"] for s in seq.steps)
        if unknown:
            click.echo(f"  unknown: {plural(unknown, 'reader')} whose email may or may not have "
                       "gone out (the sending process stopped mid-call); they are not mailed "
                       "again", err=True)
        for name, counts in seq.orphans:
            click.echo(f"  {name}: its file is gone; sent to {counts['sent']:,} before, sends no more")
    if broken:
        raise SystemExit(1)


COMMANDS = [sequences]
