#!/usr/bin/env bash
# flowpack quick start: build both binaries, start a receiver on a fresh data directory, package
# the sample project sealed to that receiver, deploy it, show what the receiver holds, stop it.
set -euo pipefail
cd "$(dirname "$0")"

echo "== building"
cargo build --quiet --bins
bin=target/debug
work=$(mktemp -d)
receiver_pid=
cleanup() { [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== receiver: init"
"$bin/flowpack-receiver" init --data-dir "$work/data" > "$work/init.txt"
recipient=$(sed -n 's/^sealing_recipient: //p' "$work/init.txt")
sed -n 's/^admin_token: //p' "$work/init.txt" > "$work/token"
echo "sealing_recipient: $recipient"

echo "== packager: a signing key, trusted by the receiver for /public"
"$bin/flowpack" keygen -o "$work/signer.key"
"$bin/flowpack-receiver" trust add "$work/signer.key.pub" --data-dir "$work/data" --containers /public

echo "== receiver: serve"
"$bin/flowpack-receiver" serve --data-dir "$work/data" --listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.log" &
receiver_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out" | head -n1)
[ -n "$url" ] || { echo "the receiver did not start:"; cat "$work/serve.log"; exit 1; }
echo "receiver at $url"

echo "== packager: package fixtures/sample, sealed to the receiver"
"$bin/flowpack" package fixtures/sample -k "$work/signer.key" -c /public/orders --seal-to "$recipient" -o "$work/sample.fpk"
"$bin/flowpack" inspect "$work/sample.fpk" --trust "$work/signer.key.pub"

echo "== packager: deploy"
"$bin/flowpack" deploy "$work/sample.fpk" --server "$url" --token-file "$work/token"

printf 'Authorization: Bearer %s\n' "$(cat "$work/token")" > "$work/auth-header"
get() { echo "-- GET $1"; curl -fsS -H @"$work/auth-header" "$url$1" | python3 -m json.tool; }
echo "== what the receiver holds"
get /v1/mappings/public/orders/orders-to-erp
get /v1/credentials/public/orders/erp
get "/v1/deployments?container=/public/orders"
echo "== done; stopping the receiver"
