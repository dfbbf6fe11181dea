"""How fast do the provider-side personalising adapters send? Runs the SendGrid and Mailgun
adapters against their local servers (each in its own process, as a real service would be)
with 100,000 recipients in batches of 1,000 on the provider's default number of workers, and
prints recipients per second, bytes sent per recipient next to the size of the issue, and the
peak memory of this process. Recipients are generated batch by batch, as the campaign engine
streams them from the database."""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from newsletter import build
from newsletter import config as cfg
from newsletter.message import MessageTemplate, Recipient
from newsletter.providers import Batch, Envelope, get_provider

REPO = Path(__file__).resolve().parent.parent
ISSUE = "2026-12-01-the-quota-is-not-the-goal"
SERVICES = {
    "sendgrid": ("tests.fakes.sendgrid", "SENDGRID_API_KEY", "", "SG.test-key.for-the-local-server"),
    "mailgun": ("tests.fakes.mailgun", "MAILGUN_API_KEY", 'domain = "mg.example.com"\n', "key-mailgun-test-0123456789"),
}


def start_fake(module: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    return process, url


def batches(template: MessageTemplate, total: int, size: int):
    for start in range(0, total, size):
        envelopes = [
            Envelope(i, Recipient(f"reader{i}@example.com", f"Reader {i}"),
                     f"https://letter.example.com/unsubscribe/{i:08d}.Zm9vYmFyYmF6cXV4cXV1eA", f"<c1.{i}@example.com>")
            for i in range(start, min(start + size, total))
        ]
        yield Batch(template, envelopes, idempotency_key=f"c1-b{start // size}", label="c1")


def run(name: str, root: Path, total: int) -> None:
    module, variable, extra, key = SERVICES[name]
    process, url = start_fake(module)
    try:
        (root / "newsletter.toml").write_text(
            (REPO / "newsletter.toml").read_text().split("[provider]")[0]
            + f'[provider]\nname = "{name}"\nbase_url = "{url}"\n{extra}'
        )
        config = cfg.load(root / "newsletter.toml", environ={variable: key})
        rendered = build.render(config, ISSUE)
        template = MessageTemplate(config, rendered, "main")
        provider = get_provider(config)
        sent_bytes = 0
        lock = threading.Lock()
        original = provider.client.request

        def counting(*args, **kwargs):
            nonlocal sent_bytes
            response = original(*args, **kwargs)
            with lock:
                sent_bytes += len(response.request.body or b"")
            return response

        provider.client.request = counting
        start = time.perf_counter()
        with ThreadPoolExecutor(provider.concurrency) as pool:
            # at most a few batches in flight: memory stays flat however long the list
            pending = []
            sent = 0
            for batch in batches(template, total, provider.batch_size):
                pending.append(pool.submit(provider.send_batch, batch))
                if len(pending) >= provider.concurrency * 2:
                    sent += sum(o.status == "sent" for o in pending.pop(0).result())
            sent += sum(o.status == "sent" for f in pending for o in f.result())
        seconds = time.perf_counter() - start
        provider.close()
        issue = len(rendered.html.encode()) + len(rendered.text.encode())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{name}: {sent:,} of {total:,} sent in {seconds:.2f} s = {sent / seconds:,.0f} recipients/s "
            f"({provider.concurrency} workers, batches of {provider.batch_size}); "
            f"{sent_bytes / total:,.0f} bytes sent per recipient vs {issue:,} bytes of issue "
            f"(HTML {len(rendered.html.encode()):,} + text {len(rendered.text.encode()):,}); "
            f"peak memory {peak:.0f} MB"
        )
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("providers", nargs="*", help=f"any of {', '.join(SERVICES)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.providers) - set(SERVICES)
    if unknown:
        parser.error(f"unknown provider {sorted(unknown)[0]!r}; choose from {', '.join(SERVICES)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "issues", root / "issues")
        for name in args.providers or list(SERVICES):
            run(name, root, args.recipients)
    print("resend and ses are bound by their services' limits, not by this code: resend at "
          "2 requests/s x 100 = about 180 recipients/s by default, ses at the account's MaxSendRate")


if __name__ == "__main__":
    main()
