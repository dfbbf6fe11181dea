#!/usr/bin/env bash
# The main job end to end on this repository's own newsletter, in a fresh scratch folder
# (.demo/) so it can run again and again: build the newest sample issue, load the sample
# list into SQLite, send the issue through the outbox provider, draft the next issue from
# the blog's feed, welcome a new reader with the sample sequence, and say where to look.
# Called by `make demo` with the virtual environment's bin folder.
set -euo pipefail
BIN=$(cd "${1:-.venv/bin}" && pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEMO="$REPO/.demo"

rm -rf "$DEMO"
mkdir -p "$DEMO"
cp newsletter.toml "$DEMO/"
cp -R issues templates sequences "$DEMO/"
"$BIN/python" -c 'import secrets; print("NEWSLETTER_SECRET=" + secrets.token_urlsafe(32))' > "$DEMO/.env"
cd "$DEMO"
unset NEWSLETTER_CONFIG NEWSLETTER_DATABASE_URL

echo "== 1. Build the newest sample issue"
"$BIN/newsletter" build
echo
echo "== 2. Load the sample list into SQLite (.demo/newsletter.db)"
"$BIN/newsletter" subscribers import "$REPO/samples/readers.csv"
echo
echo "== 3. Send it through the outbox provider"
"$BIN/newsletter" send --yes
echo
"$BIN/newsletter" status
echo
echo "== 4. Draft the next issue from the blog's feed (samples/blog-feed.xml, served on 127.0.0.1)"
"$BIN/python" - "$REPO/samples" > feed-server.port <<'PY' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *args: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_port, flush=True)
server.serve_forever()
PY
feed_server=$!
trap 'kill $feed_server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s feed-server.port ] && break; sleep 0.1; done
feed_url="http://127.0.0.1:$(cat feed-server.port)/blog-feed.xml"
"$BIN/newsletter" new --from-feed "$feed_url" --since 2026-11-01
echo "-- running it again drafts nothing: every post is in an issue now"
"$BIN/newsletter" new --from-feed "$feed_url" --since 2026-11-01
kill $feed_server 2>/dev/null || true
rm -f feed-server.port
drafted=$(ls -d issues/*/ | sort | tail -1)
echo
echo "== 5. Welcome a new reader with the two-step sequence in sequences/welcome/"
echo "-- the sequence starts now; the readers imported above joined before it, so they get none of it"
"$BIN/newsletter" sequences
"$BIN/newsletter" subscribers add ada.quist@example.net --name "Ada Quist" --confirmed
echo "-- the next tick (cron or \`newsletter scheduler\` runs it every minute) sends the first step"
"$BIN/newsletter" tick
later=$("$BIN/python" -c 'import datetime as d; print((d.datetime.now(d.UTC) + d.timedelta(days=3, hours=1)).isoformat(timespec="seconds"))')
echo "-- three days later (tick --now $later) the second step goes out, once"
"$BIN/newsletter" tick --now "$later"
"$BIN/newsletter" tick --now "$later"
"$BIN/newsletter" sequences --now "$later"
echo
issue=$(ls -d dist/*/ | sort | tail -1)
slug=$(basename "$issue")
echo "Where to look:"
echo "  .demo/${issue}preview.html     the email as a reader sees it (open it in a browser)"
echo "  .demo/${issue}email.txt        the plain-text part"
echo "  .demo/outbox/                  one .eml file per reader; open any in a mail client"
ls "$DEMO"/outbox/*/ | head -3 | sed 's/^/    /'
echo "  .demo/${drafted}          the issue drafted from the feed, ready to edit"
echo "  .demo/outbox/*-welcome_*/      the welcome emails Ada got, one folder per step"
echo
echo "What to run next, in a fresh shell:"
echo "  cd $REPO"
echo "  .venv/bin/newsletter preview                  the live preview of this repository's issues"
echo "  (cd .demo && ../.venv/bin/newsletter status)  the demo campaign's figures"
echo "  (cd .demo && ../.venv/bin/newsletter report $slug --html report.html)  how it did, as a page"
echo "  (cd .demo && ../.venv/bin/newsletter preview)  the drafted issue in your browser"
echo "  .venv/bin/newsletter preview --sequence welcome  the welcome emails, as a new reader gets them"
echo "  .venv/bin/newsletter --help                   every command"
echo "  pipx install .                                the command for everyday use (see the README)"
