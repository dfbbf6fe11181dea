"""Commands for sending: send, status, cancel."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter

import click

from .common import Env, pass_env, plural


def _n(value: int) -> str:
    return f"{value:,}"


class ProgressPrinter:
    """A progress line with rate and ETA on a terminal; a plain line per batch otherwise."""

    def __init__(self, total: int, tty: bool | None = None) -> None:
        self.total = total
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.last = 0.0

    def __call__(self, p) -> None:
        rate = p.rate
        left = max(0, p.total - p.done)
        eta = f"{left / rate:,.0f} s left" if rate > 0 and left else ""
        line = (f"{_n(p.done)}/{_n(p.total)} done · {_n(p.sent)} sent · {_n(p.failed)} failed"
                f" · {rate:,.0f}/s {eta}").rstrip()
        if self.tty:
            width = 30
            filled = int(width * p.done / p.total) if p.total else width
            click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\033[K", nl=False, err=True)
        else:
            now = time.monotonic()
            if now - self.last >= 1.0 or p.done >= p.total:
                self.last = now
                click.echo(line, err=True)

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


def _describe(c) -> str:
    parts = [f"{_n(c['sent'])} sent"]
    for status in ("failed", "skipped", "unknown", "queued", "sending", "cancelled"):
        if c[status]:
            parts.append(f"{_n(c[status])} {'in flight' if status == 'sending' else status}")
    return ", ".join(parts)


def _issue_slug(env: Env, store, issue: str) -> str:
    """The slug for ISSUE: its folder's name, or, for an issue whose folder was deleted,
    the name (or short name) of one of its campaigns. An unknown name is an error."""
    from .. import campaign as engine
    from ..content import ambiguous, resolve_issue, short_name
    from ..errors import AmbiguousIssue, IssueNotFound

    try:
        return resolve_issue(env.config.issues_dir, issue).name
    except IssueNotFound:
        name = issue.rstrip("/").rsplit("/", 1)[-1]
        sent = sorted({c.issue for c in engine.all_campaigns(store)})
        if name in sent:
            return name
        matches = [slug for slug in sent if short_name(slug) == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousIssue(ambiguous(issue, matches)) from None
        raise


def _dry_run(config, issue: str | None, list_name: str | None, test_to: tuple[str, ...]) -> None:
    from ..dryrun import dry_run

    plan = dry_run(config, issue, list_name, test_to)
    for finding in plan.findings:
        click.echo(f"  warning: {finding}", err=True)
    subject, would = plan.rendered.subject, plan.would
    if would is None:
        click.echo(f"Would send a proof of {subject!r} to {', '.join(plan.proofs)} via "
                   f"{plan.provider}. Nothing sent (dry run).")
        return
    if would.campaign_status:
        c = Counter(would.counts)
        click.echo(f"{plan.rendered.slug} → {plan.list_name}: campaign {would.campaign_status} "
                   f"({_describe(c)}); {_n(c['queued'])} still to send via "
                   f"{plan.provider}. Nothing sent.")
        return
    batches = math.ceil(would.total / plan.batch_size) if would.total else 0
    click.echo(f"Would send {subject!r} to {plural(would.total, 'subscriber')} of {plan.list_name} "
               f"via {plan.provider}, in {plural(batches, 'batch', 'batches')} of up to "
               f"{_n(plan.batch_size)}.")
    for address in would.sample:
        click.echo(f"  {address}")
    if would.total > len(would.sample):
        click.echo(f"  ... and {_n(would.total - len(would.sample))} more")
    click.echo("Nothing sent (dry run).")


@click.command()
@click.argument("issue", required=False)
@click.option("--list", "list_name", help="The list to send to (default: the issue's `list:`, else the default list).")
@click.option("--test-to", "test_to", multiple=True, metavar="EMAIL",
              help="Send a proof to this address only (repeatable); the list is untouched.")
@click.option("--dry-run", is_flag=True, help="Show who would get it, in how many batches, through which provider; send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--resume", is_flag=True, help="Continue an interrupted campaign.")
@click.option("--resend-unknown", is_flag=True,
              help="With --resume: send again to recipients whose outcome is unknown (they may get it twice).")
@click.option("--rerender", is_flag=True,
              help="With --resume: the issue files changed; send the new version to the recipients not yet sent.")
@pass_env
def send(env: Env, issue: str | None, list_name: str | None, test_to: tuple[str, ...], dry_run: bool,
         yes: bool, resume: bool, resend_unknown: bool, rerender: bool) -> None:
    """Send ISSUE (default: the newest) to a list, or proofs with --test-to."""
    config = env.config
    if dry_run:
        _dry_run(config, issue, list_name, test_to)
        return

    from ..ready import ready_to_send

    ready = ready_to_send(config, issue)
    rendered = ready.rendered
    for warning in ready.warnings:
        click.echo(f"  warning: {warning}", err=True)

    from .. import campaign as engine
    from ..providers import get_provider
    from ..store import open_store

    if test_to:
        outcomes = engine.send_test(config, rendered, list(test_to))
        failed = 0
        for address, outcome in zip(test_to, outcomes, strict=False):
            if outcome.status == "sent":
                click.echo(f"test sent to {address} via {config.provider.name}"
                           + (f" ({outcome.provider_id})" if outcome.provider_id else ""))
            else:
                failed += 1
                click.echo(f"test to {address} {outcome.status}: {outcome.reason}", err=True)
        if failed:
            raise engine.CampaignError(
                f"the test send failed for {failed} of {plural(len(test_to), 'address', 'addresses')}")
        return

    provider = get_provider(config)
    name = list_name or rendered.issue.list_name or config.newsletter.default_list
    with open_store(config) as store:
        existing = engine.find_campaign(store, rendered.slug, name)
        if existing and not resume:
            c = engine.counts(store, existing.id)
            state = f"{existing.status}: {_describe(c)}"
            senders = engine.live_workers(store, existing.id)
            if senders:
                hint = (f"{', '.join(w.name for w in senders)} is sending it; `newsletter send "
                        f"{rendered.slug} --resume` joins in")
            elif existing.status in ("sending", "paused"):
                hint = f"run `newsletter send {rendered.slug} --resume` to continue it"
            elif existing.status == "finished":
                hint = "it will not be sent again"
            else:
                hint = "it was cancelled and will not be sent"
            raise engine.CampaignExists(
                f"{rendered.slug} already has a campaign for list {name} ({state}); {hint}"
            )
        if resume and not existing:
            raise engine.CampaignError(
                f"{rendered.slug} has no campaign for list {name} to resume; run `newsletter send {rendered.slug}`"
            )

        if existing:
            campaign = existing
            if rendered.content_hash != campaign.content_hash:
                if not rerender:
                    engine.check_content(campaign, rendered)
                remaining = engine.counts(store, campaign.id)["queued"]
                if not yes:
                    click.confirm(f"Send the changed issue to the {plural(remaining, 'recipient')} not yet sent?",
                                  abort=True)
                engine.accept_content(store, campaign, rendered)
                campaign = engine.find_campaign(store, rendered.slug, name)
        else:
            total = engine.audience_size(store, name)
            if total == 0:
                raise engine.CampaignError(
                    f"list {name} has no active subscribers; add some with `newsletter subscribers add` or `import`"
                )
            if not yes:
                click.confirm(
                    f"Send {rendered.subject!r} to {plural(total, 'subscriber')} of {name} via {provider.name}?",
                    abort=True,
                )
            campaign = engine.start(store, rendered, name, provider.name)
            click.echo(f"campaign started: {plural(campaign.total, 'recipient')} frozen", err=True)

        printer = ProgressPrinter(campaign.total)
        try:
            result = engine.send_campaign(config, store, campaign, rendered, provider,
                                          resend_unknown=resend_unknown, on_progress=printer)
        finally:
            printer.close()
        c = result.counts
        summary = f"{rendered.subject!r} to {name} via {provider.name}: {_describe(c)}"
        if not result.finished:
            raise engine.Stopped(
                f"campaign stopped after {_n(c.done)} of {_n(c.total)} ({result.stopped_reason}); "
                f"run `newsletter send {rendered.slug} --resume`"
            )
        click.echo(f"done: {summary}")
        if c["unknown"]:
            click.echo(
                f"{plural(c['unknown'], 'recipient')} with an unknown outcome (a call died after it left): "
                f"`newsletter status {rendered.slug}` lists them, and `newsletter send {rendered.slug} "
                "--resume --resend-unknown` sends to them again (they may get it twice)."
            )


@click.command()
@click.argument("issue", required=False)
@pass_env
def status(env: Env, issue: str | None) -> None:
    """Campaigns with their counts: sent, failed (by reason), skipped, unknown, queued.

    A campaign being sent lists its senders (host, process, last seen); one whose senders
    all stopped without finishing says it was interrupted and how to resume it."""
    from .. import campaign as engine
    from ..store import open_store

    with open_store(env.config) as store:
        slug = _issue_slug(env, store, issue) if issue else None
        found = engine.all_campaigns(store, slug)
        if not found:
            click.echo(f"no campaigns{f' for {slug}' if slug else ''} yet")
            return
        for campaign in found:
            c = engine.counts(store, campaign.id)
            state = engine.state(store, campaign)
            if state == "interrupted":
                state = f"interrupted — run `newsletter send {campaign.issue} --resume`"
            click.echo(f"{campaign.issue} → {campaign.list_name} via {campaign.provider}: {state}"
                       f" (started {campaign.created_at:%Y-%m-%d %H:%M} UTC)")
            click.echo(f"  {_describe(c)} of {_n(c.total)}")
            for reason, n in c.failed_reasons.most_common(10):
                click.echo(f"  failed {_n(n)}: {reason}")
            if campaign.last_error and campaign.status != "finished":
                click.echo(f"  stopped: {campaign.last_error}")
            for worker in engine.live_workers(store, campaign.id):
                seen = max(0, round((engine.utcnow() - worker.last_seen).total_seconds()))
                click.echo(f"  sender {worker.name}: {_n(worker.sent)} sent since "
                           f"{worker.started_at:%H:%M:%S} UTC, last seen {seen} s ago")
            if slug and c["unknown"]:
                click.echo("  unknown outcome:")
                for address in engine.unknown_recipients(store, campaign.id):
                    click.echo(f"    {address}")
            for line in engine.event_summary(store, campaign.id):
                click.echo(f"  {line}")
            if c["sent"]:
                from ..report import issue_report

                click.echo(f"  how it did: {issue_report(store, campaign).headline()} "
                           f"(`newsletter report {campaign.issue}`)")


@click.command()
@click.argument("issue")
@click.option("--list", "list_name", help="The campaign's list, when the issue went to several.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def cancel(env: Env, issue: str, list_name: str | None, yes: bool) -> None:
    """Stop ISSUE's campaign for good; nothing more is sent."""
    from .. import campaign as engine
    from ..store import open_store

    with open_store(env.config) as store:
        slug = _issue_slug(env, store, issue)
        campaign = engine.find_campaign(store, slug, list_name)
        if campaign is None:
            raise engine.CampaignError(f"{slug} has no campaign to cancel")
        if campaign.status in ("finished", "cancelled"):
            raise engine.CampaignError(f"the campaign for {slug} is {campaign.status} already")
        c = engine.counts(store, campaign.id)
        if not yes:
            click.confirm(f"Cancel {slug} → {campaign.list_name}? {plural(c['queued'], 'recipient')} will not get it",
                          abort=True)
        if c["sending"]:
            click.echo(f"waiting for the answers to the {plural(c['sending'], 'message')} already handed to "
                       "the service...", err=True)
        done = engine.cancel(store, campaign)
        after = done.counts
        line = f"cancelled {slug} → {campaign.list_name}: {_n(after['sent'])} had it, {_n(done.cancelled)} will not"
        if after["unknown"]:
            line += f", {_n(after['unknown'])} unknown (may have it)"
        if after["failed"]:
            line += f", {_n(after['failed'])} failed"
        click.echo(line)
        if done.in_flight:
            click.echo(f"{_n(done.in_flight)} still in flight; their answers are recorded when they come: "
                       f"`newsletter status {slug}`")


COMMANDS = [send, status, cancel]
