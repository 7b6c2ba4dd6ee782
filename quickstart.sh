#!/usr/bin/env bash
# flowpack quick start: build both binaries, start a receiver on a fresh data directory, package
# the sample project sealed to that receiver, show the plan, deploy it, create a credential on
# the server, show a plan with drift, roll back, show what the receiver holds, stop it.
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

server=(--server "$url" --token-file "$work/token")
# `diff` exits 6 when the plan has changes, 0 when it has none.
plan() { "$bin/flowpack" diff "$1" "${server[@]}" || [ $? -eq 6 ]; }

echo "== packager: the plan (nothing is changed by it)"
plan "$work/sample.fpk"

echo "== packager: deploy"
"$bin/flowpack" deploy "$work/sample.fpk" "${server[@]}"

printf 'Authorization: Bearer %s\n' "$(cat "$work/token")" > "$work/auth-header"
get() { echo "-- GET $1"; curl -fsS -H @"$work/auth-header" "$url$1" | python3 -m json.tool; }
send() { echo "-- $1 $2"; curl -fsS -X "$1" -H @"$work/auth-header" -H 'Content-Type: application/json' --data "$3" "$url$2" | python3 -m json.tool; }

echo "== an admin creates the mail relay login on the server (the mapping's external parameter)"
# Secrets in clear go only over TLS or, as here, from a loopback client.
send PUT /v1/credentials/public/orders/smtp \
  '{"type": "password", "username": "relay", "password": "quickstart-smtp-password", "allow_usage_for": ["job_execution"]}'

echo "== an admin edits the ERP login on the server; the next plan shows the drift"
send PATCH /v1/credentials/public/orders/erp '{"description": "edited on the server"}'
"$bin/flowpack" package fixtures/sample -k "$work/signer.key" -c /public/orders --seal-to "$recipient" -o "$work/again.fpk"
plan "$work/again.fpk"

echo "== deploy again (the bundle is the source of truth), then roll back to the first deployment"
"$bin/flowpack" deploy "$work/again.fpk" "${server[@]}"
"$bin/flowpack" rollback 1 "${server[@]}"
"$bin/flowpack" history "${server[@]}"

echo "== what the receiver holds"
get /v1/mappings/public/orders/orders-to-erp
get /v1/credentials/public/orders/erp
get /v1/credentials/public/orders/smtp
echo "== done; stopping the receiver"
