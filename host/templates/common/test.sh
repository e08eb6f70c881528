#!/bin/sh
# The plugin's test: runs it over test/input.jsonl with `weir plugin test`
# and compares what it emits with test/expected.jsonl. Build first.
set -eu
cd "$(dirname "$0")"
WEIR=${WEIR:-weir}
"$WEIR" plugin test {{wasm}} --input test/input.jsonl --config-file test/config.toml {{window_args}}> test/actual.jsonl
if diff -u test/expected.jsonl test/actual.jsonl; then
    echo "ok: the output matches test/expected.jsonl"
else
    echo "FAILED: the output differs from test/expected.jsonl (see the diff above)" >&2
    exit 1
fi
