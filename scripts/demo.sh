#!/usr/bin/env bash
# The main job end to end on this repository's own newsletter: build the newest sample issue
# and say where to look. Called by `make demo` with the virtual environment's bin folder.
set -euo pipefail
BIN=${1:-.venv/bin}
cd "$(dirname "$0")/.."

echo "== Building the newest sample issue"
"$BIN/newsletter" build
echo
echo "Open dist/<issue>/preview.html in a browser to read it as a subscriber would;"
echo "email.html is the HTML part, email.txt the plain-text part, message.eml the whole message."
