#!/usr/bin/env bash
# flowpack against what users would do instead, side by side, in one run.
#
#   bench/run.sh           the full benchmark (about 6½ minutes on 2 cores once built, 12 from a
#                          fresh clone); appends a dated section to docs/PERFORMANCE.md
#   bench/run.sh --quick   tiny corpora, one repetition (under a minute): a smoke run; the report
#                          goes to bench/out/run-quick/report.md only
#
# It installs its peers (nginx, wrk, zip, unzip, openssl, curl, GNU time) with apt-get when they
# are missing, builds the release binaries, generates the corpora from a fixed seed under
# bench/out/corpus/ (kept between runs: they are a pure function of their parameters), then
# times flowpack and the manual route alternately (A/B, B/A, …) and reports medians and ratios.
# Set FLOWPACK_BENCH_SKIP_BUILD=1 to use the release binaries as they are.
#
# The disk of the reference machine creates files slowly right after many were deleted, so
# nothing is deleted before a timed step that creates files: every repetition unpacks into a
# fresh directory, and the scratch space is removed only when all timing is done. Each timed
# step of the send and receive phases starts after a `sync`, so that no step pays for the
# writeback of the one before.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."
root=$PWD

mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac

MiB=1048576
if [ "$mode" = full ]; then
  L_BYTES=$((256 * MiB)) L_FILES=2000 L_MAPPINGS=16 L_CREDS=64
  S_FILES=20000 S_MAPPINGS=20
  REPS=5 WRK_SECS=10 WRK_REPS=3
  LOAD_CLIENTS=32 LOAD_PER=30 LOAD_REPS=3
  G_SMALL_BYTES=$((16 * MiB)) G_SMALL_FILES=125 G_SMALL_CREDS=4
  G_BIG_BYTES=$((1024 * MiB)) G_BIG_FILES=8000 G_BIG_CREDS=256 GROW_REPS=3
  MANY=100000 MANY_BUNDLES=4 FEW=100
else
  L_BYTES=$((4 * MiB)) L_FILES=40 L_MAPPINGS=4 L_CREDS=8
  S_FILES=400 S_MAPPINGS=4
  REPS=1 WRK_SECS=2 WRK_REPS=1
  LOAD_CLIENTS=32 LOAD_PER=2 LOAD_REPS=1
  G_SMALL_BYTES=$((1 * MiB)) G_SMALL_FILES=8 G_SMALL_CREDS=1
  G_BIG_BYTES=$((8 * MiB)) G_BIG_FILES=64 G_BIG_CREDS=4 GROW_REPS=1
  MANY=2000 MANY_BUNDLES=2 FEW=100
fi
SEED=20261122
S_SIZE=4096

out=$root/bench/out
corpus=$out/corpus/$mode
run=$out/run-$mode
scratch=$run/scratch
results=$run/results.tsv
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- peers
need=()
for pair in nginx:nginx-light wrk:wrk zip:zip unzip:unzip openssl:openssl curl:curl; do
  command -v "${pair%%:*}" > /dev/null || need+=("${pair#*:}")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" > /dev/null
fi
# Debian starts the packaged nginx where it can; this benchmark runs its own.
nginx -V 2>&1 | grep -q http_dav_module || die "this nginx lacks the dav module (PUT uploads)"

# ---------------------------------------------------------------- build
if [ "${FLOWPACK_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bins"
  cargo build --release --bins --quiet
fi
cargo build --release --quiet --manifest-path bench/Cargo.toml --target-dir target/bench
fp=$root/target/release/flowpack
fr=$root/target/release/flowpack-receiver
tool=$root/target/bench/release/flowpack-bench

# ---------------------------------------------------------------- scratch, processes, cleanup
receiver_pid= nginx_pid= node_pids=()
stop_nodes() {
  local p
  for p in "${node_pids[@]}"; do kill "$p" 2> /dev/null && wait "$p" 2> /dev/null; done
  node_pids=()
  return 0
}
stop() {
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2> /dev/null && wait "$receiver_pid" 2> /dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2> /dev/null && wait "$nginx_pid" 2> /dev/null
  stop_nodes
  receiver_pid= nginx_pid=
  return 0
}
cleanup() { stop; rm -rf "$scratch"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# A previous run that was killed may have left scratch files: delete them now, long before
# anything is unpacked (building and generating come first).
rm -rf "$scratch" "$results"
mkdir -p "$scratch" "$run"
: > "$results"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$results"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 1e9 }'; }
# timed METRIC VARIANT REP CMD…: runs CMD and records its wall time in seconds.
timed() {
  local m=$1 v=$2 r=$3 s e; shift 3
  s=$(date +%s%N); "$@"; e=$(date +%s%N)
  record "$m" "$v" "$r" "$(secs "$s" "$e")"
}
# rss VARIANT REP: records the peak RSS (MiB) of the last command run under /usr/bin/time -v.
rss() {
  record rss_mib "$1" "$2" "$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$scratch/time.txt")"
}
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    (echo > "/dev/tcp/127.0.0.1/$p") 2> /dev/null || { echo "$p"; return; }
  done
  die "no free port from $1"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
# settle PID: waits until PID has used no CPU for half a second (its background work, such as
# the receiver's WAL checkpoint, is done), then prints when it last used CPU (ns since epoch).
settle() {
  local pid=$1 quiet=0 prev now t
  t=$(date +%s%N)
  prev=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  while [ "$quiet" -lt 5 ]; do
    sleep 0.1
    now=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    if [ "$now" = "$prev" ]; then quiet=$((quiet + 1)); else quiet=0 prev=$now t=$(date +%s%N); fi
  done
  echo "$t"
}

# ---------------------------------------------------------------- the machine
start_load=$(cat /proc/loadavg)
{
  echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
  echo "- disk: $(findmnt -no SOURCE,FSTYPE -T "$out" | tr -s ' ' | sed 's/ / (/; s/$/)/'), $(df -h --output=size,avail "$out" | tail -n1 | awk '{ print $1 " size, " $2 " free" }')"
  echo "- peers: $(zip -v | sed -n 2p | awk '{ print "zip " $4 }'), $(unzip -v | head -n1 | awk '{ print "unzip " $2 }'), $(openssl version | awk '{ print "OpenSSL " $2 }'), $(nginx -v 2>&1 | sed 's/.*version: //'), $(wrk -v 2>&1 | head -n1 | awk '{ print $1 " " $2 }'), $(curl -V | head -n1 | awk '{ print "curl " $2 }')"
  echo "- flowpack: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- shared packager receiver Cargo.lock 2> /dev/null || echo ' with local changes in shared/packager/receiver')$([ "${FLOWPACK_BENCH_SKIP_BUILD:-0}" = 1 ] && echo "; binaries not rebuilt by this run (built $(date -u -r "$fr" '+%H:%M UTC'))")"
} > "$run/machine.md"

# ---------------------------------------------------------------- corpora
L=$corpus/L S=$corpus/S GS=$corpus/G-small GB=$corpus/G-big MANYD=$corpus/creds-many FEWD=$corpus/creds-few DEPD=$corpus/creds-deploy
. "$root/bench/corpus.sh"
gen "$L" project --bytes "$L_BYTES" --files "$L_FILES" --mappings "$L_MAPPINGS" --credentials "$L_CREDS"
gen "$S" small --files "$S_FILES" --size "$S_SIZE" --mappings "$S_MAPPINGS"
gen "$GS" project --bytes "$G_SMALL_BYTES" --files "$G_SMALL_FILES" --mappings 16 --credentials "$G_SMALL_CREDS"
gen "$GB" project --bytes "$G_BIG_BYTES" --files "$G_BIG_FILES" --mappings 16 --credentials "$G_BIG_CREDS"
gen "$MANYD" creds --count "$MANY" --prefix x
gen "$FEWD" creds --count "$FEW" --prefix x
gen "$DEPD" creds --count $((LOAD_CLIENTS * LOAD_PER * LOAD_REPS)) --prefix d --secrets
# Warm the page cache: both sides read the corpora from memory.
cat "$L"/*/*.json "$S"/*/*.json > /dev/null
find "$L" "$S" "$GS" -type f -print0 | xargs -0 cat > /dev/null

# ---------------------------------------------------------------- receiver and nginx
log "starting the receiver and nginx"
data=$scratch/receiver
"$fr" init --data-dir "$data" > "$scratch/init.txt"
recipient=$(sed -n 's/^sealing_recipient: //p' "$scratch/init.txt")
sed -n 's/^admin_token: //p' "$scratch/init.txt" > "$scratch/token"
token=$(cat "$scratch/token")
key=$scratch/signer.key
"$fp" keygen -o "$key" > /dev/null
"$fr" trust add "$key.pub" --data-dir "$data" > /dev/null
FLOWPACK_LOG=info "$fr" serve --data-dir "$data" --listen 127.0.0.1:0 > "$scratch/serve.out" 2> "$run/receiver.log" &
receiver_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$scratch/serve.out" 2> /dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$scratch/serve.out" | head -n1)
[ -n "$url" ] || die "the receiver did not start: $(cat "$run/receiver.log")"

ng=$scratch/nginx
mkdir -p "$ng/upload" "$ng/static" "$ng/tmp" "$ng/logs"
ngport=$(free_port 18080)
user_line=; [ "$(id -u)" = 0 ] && user_line="user root;"
cat > "$ng/nginx.conf" << EOF
$user_line
worker_processes auto;
pid $ng/nginx.pid;
error_log $ng/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { application/json json; application/zip zip; }
  client_body_temp_path $ng/tmp;
  server {
    listen 127.0.0.1:$ngport;
    location /upload/ {
      root $ng;
      dav_methods PUT;
      client_max_body_size 2g;
      client_body_buffer_size 1m;
    }
    location / { root $ng/static; }
  }
}
EOF
nginx -p "$ng" -c "$ng/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$ngport") 2> /dev/null && break; sleep 0.1; done
ngurl=http://127.0.0.1:$ngport

# ---------------------------------------------------------------- send: package vs zip + sha256sum + openssl
# What a user would script: a checksum list of every file, signed, then everything zipped.
manual_send() { # CORPUS OUT.zip
  (cd "$1" && find . -type f ! -name 'MANIFEST.*' ! -name .params -print0 | sort -z | xargs -0 sha256sum > MANIFEST.sha256)
  openssl pkeyutl -sign -inkey "$key" -rawin -in "$1/MANIFEST.sha256" -out "$1/MANIFEST.sig"
  (cd "$1" && zip -q -r -6 "$2" . -x .params)
}
flowpack_send() { # CORPUS CONTAINER OUT.fpk (peak RSS: see rss)
  /usr/bin/time -v -o "$scratch/time.txt" "$fp" package "$1" -k "$key" -c "$2" --seal-to "$recipient" -o "$3" > /dev/null
}
mkdir -p "$scratch/send"
for set in L S; do
  dir=$L; [ "$set" = S ] && dir=$S
  log "send $set: $REPS repetitions"
  for rep in $(seq "$REPS"); do
    a() { sync; timed "send_$set" flowpack "$rep" flowpack_send "$dir" "/bench/$set" "$scratch/send/$set-$rep.fpk"; rss "packager_$set" "$rep"; }
    b() { sync; timed "send_$set" manual "$rep" manual_send "$dir" "$scratch/send/$set-$rep.zip"; }
    if [ $((rep % 2)) = 1 ]; then a; b; else b; a; fi
  done
  record size_mib "bundle_$set" 1 "$(stat -c %s "$scratch/send/$set-1.fpk" | awk '{ printf "%.2f", $1 / 1048576 }')"
  record size_mib "zip_$set" 1 "$(stat -c %s "$scratch/send/$set-1.zip" | awk '{ printf "%.2f", $1 / 1048576 }')"
done
rm -f "$L"/MANIFEST.* "$S"/MANIFEST.*

# ---------------------------------------------------------------- receive: deploy vs nginx + openssl + sha256sum + unzip
flowpack_recv() { # BUNDLE
  "$fp" deploy "$1" --server "$url" --token-file "$scratch/token" > /dev/null
}
manual_recv() { # ZIP REP
  local up=$ng/upload/L-$2.zip d=$scratch/recv/L-$2
  curl -fsS -X PUT --data-binary @"$1" -H 'Content-Type: application/zip' "$ngurl/upload/L-$2.zip"
  mkdir -p "$d"
  unzip -p "$up" MANIFEST.sha256 > "$d.sha256"
  unzip -p "$up" MANIFEST.sig > "$d.sig"
  openssl pkeyutl -verify -pubin -inkey "$key.pub" -rawin -in "$d.sha256" -sigfile "$d.sig" > /dev/null
  unzip -q "$up" -d "$d"
  (cd "$d" && sha256sum -c --quiet "$d.sha256")
}
mkdir -p "$scratch/recv"
log "receive L: $REPS repetitions"
for rep in $(seq "$REPS"); do
  a() {
    local s e
    sync; s=$(date +%s%N); flowpack_recv "$scratch/send/L-$rep.fpk"; e=$(date +%s%N)
    record recv_L flowpack "$rep" "$(secs "$s" "$e")"
    # The answer comes once the deploy is durable; the receiver then checkpoints its WAL in the
    # background. Wait for that, so it does not slow the next measurement, and record it.
    e=$(settle "$receiver_pid")
    record recv_L flowpack_settled "$rep" "$(secs "$s" "$e")"
  }
  b() {
    local s e
    sync; s=$(date +%s%N); manual_recv "$scratch/send/L-$rep.zip" "$rep"; e=$(date +%s%N)
    record recv_L manual "$rep" "$(secs "$s" "$e")"
    # The same, made durable as the receiver's answer is: flush the unpacked tree.
    sync -f "$scratch/recv"; e=$(date +%s%N)
    record recv_L manual_sync "$rep" "$(secs "$s" "$e")"
  }
  if [ $((rep % 2)) = 1 ]; then a; b; else b; a; fi
done
record rss_mib receiver 1 "$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$receiver_pid/status")"

# ---------------------------------------------------------------- GET: receiver vs nginx static
auth="Authorization: Bearer $token"
cred=/v1/credentials/bench/L/c0000
curl -fsS -H "$auth" "$url$cred" > "$scratch/cred.json" || die "GET $cred failed"
record size_bytes get_body 1 "$(stat -c %s "$scratch/cred.json")"
# nginx serves the same document, padded with blanks to the 300 bytes the issue names.
pad=$((300 - $(stat -c %s "$scratch/cred.json"))); [ "$pad" -gt 0 ] || pad=0
{ cat "$scratch/cred.json"; printf '%*s' "$pad" ''; } > "$ng/static/cred.json"
wrk_run() { # METRIC-PREFIX VARIANT REP wrk-args…
  local p=$1 v=$2 r=$3 line; shift 3
  wrk -t2 -c64 -d"${WRK_SECS}s" --latency "$@" > "$scratch/wrk.txt"
  cp "$scratch/wrk.txt" "$run/wrk-$p-$v-$r.txt"
  line=$("$tool" wrk-parse "$scratch/wrk.txt")
  for kv in $line; do
    case "${kv%%=*}" in
      rps) record "${p}_rps" "$v" "$r" "${kv#*=}" ;;
      p50_ms) record "${p}_p50_ms" "$v" "$r" "${kv#*=}" ;;
      p99_ms) record "${p}_p99_ms" "$v" "$r" "${kv#*=}" ;;
      non2xx) [ "${kv#*=}" = 0 ] || record "${p}_non2xx" "$v" "$r" "${kv#*=}" ;;
    esac
  done
}
log "GET: $WRK_REPS × ${WRK_SECS}s each"
for rep in $(seq "$WRK_REPS"); do
  a() { wrk_run get flowpack "$rep" -H "$auth" "$url$cred"; }
  b() { wrk_run get nginx "$rep" "$ngurl/cred.json"; }
  if [ $((rep % 2)) = 1 ]; then a; b; else b; a; fi
done

# ---------------------------------------------------------------- standalone credential deploys, 32 clients
log "building $((LOAD_CLIENTS * LOAD_PER * LOAD_REPS)) standalone credential bundles"
build_client() { # CLIENT: its bundles, oldest first, for every repetition, sealed to $seal_to in $deploys
  local c=$1 rep k i
  for rep in $(seq "$LOAD_REPS"); do
    mkdir -p "$deploys/r$rep/c$c"
    for k in $(seq 0 $((LOAD_PER - 1))); do
      i=$(( ((rep - 1) * LOAD_CLIENTS + 10#$c) * LOAD_PER + k ))
      "$fp" package-credentials "$DEPD/$(printf 'd%06d' "$i").credential.json" -k "$key" \
        -c "/bench/deploys/c$c" --seal-to "$seal_to" -o "$deploys/r$rep/c$c/$(printf '%04d' "$k").fpk" > /dev/null
    done
  done
}
build_all() { # DEPLOYS-DIR RECIPIENT
  deploys=$1 seal_to=$2
  export deploys seal_to
  seq -w 0 $((LOAD_CLIENTS - 1)) | xargs -P "$(nproc)" -I{} bash -c 'build_client {}'
}
export -f build_client
export fp key DEPD LOAD_REPS LOAD_CLIENTS LOAD_PER
s=$(date +%s%N)
build_all "$scratch/deploys" "$recipient"
e=$(date +%s%N)
record build_cred_bundles_per_s packager 1 "$(awk -v n=$((LOAD_CLIENTS * LOAD_PER * LOAD_REPS)) -v s="$(secs "$s" "$e")" 'BEGIN { printf "%.1f", n / s }')"
log "deploys: $LOAD_REPS × $((LOAD_CLIENTS * LOAD_PER)) from $LOAD_CLIENTS clients"
load_run() { # VARIANT REP TOKEN-FILE DEPLOYS-DIR URL[,URL…]
  local v=$1 rep=$2 line total=0
  line=$("$tool" load --url "$5" --token-file "$3" --dir "$4/r$rep")
  echo "$line" > "$run/load-$v-$rep.txt"
  for kv in $line; do
    case "${kv%%=*}" in
      rate) record deploy_rate "$v" "$rep" "${kv#*=}" ;;
      p50_ms) record deploy_p50_ms "$v" "$rep" "${kv#*=}" ;;
      p99_ms) record deploy_p99_ms "$v" "$rep" "${kv#*=}" ;;
      total) total=${kv#*=} ;;
      ok) [ "${kv#*=}" = "$total" ] || record deploy_not_2xx "$v" "$rep" $((total - ${kv#*=})) ;;
    esac
  done
}
for rep in $(seq "$LOAD_REPS"); do
  load_run flowpack "$rep" "$scratch/token" "$scratch/deploys" "$url"
done

# ---------------------------------------------------------------- the same on PostgreSQL: two nodes, one database
# FLOWPACK_BENCH_POSTGRES names the server (its database is not used: the run makes and drops
# flowpack_bench). Durable as the embedded store: synchronous_commit at its default, on.
pg=${FLOWPACK_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
if psql "$pg" -qAt -c 'SELECT 1' > /dev/null 2>&1; then
  log "PostgreSQL: two receivers on one database"
  psql "$pg" -q -c 'DROP DATABASE IF EXISTS flowpack_bench WITH (FORCE)' -c 'CREATE DATABASE flowpack_bench' > /dev/null
  pgurl=${pg%/*}/flowpack_bench
  "$fr" init --data-dir "$scratch/pg-a" --store "$pgurl" > "$scratch/pg-init.txt"
  "$fr" init --data-dir "$scratch/pg-b" --join "$scratch/pg-a" > /dev/null
  "$fr" trust add "$key.pub" --data-dir "$scratch/pg-a" > /dev/null
  sed -n 's/^admin_token: //p' "$scratch/pg-init.txt" > "$scratch/pg-token"
  pg_recipient=$(sed -n 's/^sealing_recipient: //p' "$scratch/pg-init.txt")
  pg_urls=()
  for node in a b; do
    FLOWPACK_LOG=info "$fr" serve --data-dir "$scratch/pg-$node" --listen 127.0.0.1:0 > "$scratch/pg-$node.out" 2> "$run/receiver-pg-$node.log" &
    node_pids+=($!)
    for _ in $(seq 100); do grep -q '^listening on ' "$scratch/pg-$node.out" 2> /dev/null && break; sleep 0.1; done
    pg_urls+=("$(sed -n 's/^listening on //p' "$scratch/pg-$node.out" | head -n1)")
    [ -n "${pg_urls[-1]}" ] || die "node $node did not start: $(cat "$run/receiver-pg-$node.log")"
  done
  log "building $((LOAD_CLIENTS * LOAD_PER * LOAD_REPS)) bundles sealed to the PostgreSQL nodes"
  build_all "$scratch/pg-deploys" "$pg_recipient"
  log "deploys: $LOAD_REPS × $((LOAD_CLIENTS * LOAD_PER)) from $LOAD_CLIENTS clients over two nodes"
  for rep in $(seq "$LOAD_REPS"); do
    load_run postgres "$rep" "$scratch/pg-token" "$scratch/pg-deploys" "${pg_urls[0]},${pg_urls[1]}"
  done
  pg_cred=/v1/credentials/bench/deploys/c00/d000000
  pg_auth="Authorization: Bearer $(cat "$scratch/pg-token")"
  curl -fsS -H "$pg_auth" "${pg_urls[0]}$pg_cred" > "$scratch/pg-cred.json" || die "GET $pg_cred failed"
  record size_bytes get_body_postgres 1 "$(stat -c %s "$scratch/pg-cred.json")"
  log "GET on PostgreSQL: $WRK_REPS × ${WRK_SECS}s"
  for rep in $(seq "$WRK_REPS"); do
    wrk_run get postgres "$rep" -H "$pg_auth" "${pg_urls[0]}$pg_cred"
  done
  stop_nodes
  psql "$pg" -q -c 'DROP DATABASE IF EXISTS flowpack_bench WITH (FORCE)' > /dev/null
else
  log "no PostgreSQL at $pg: its rows are not measured (set FLOWPACK_BENCH_POSTGRES)"
fi

# ---------------------------------------------------------------- growth: package time per MiB
log "growth: package $((G_SMALL_BYTES / MiB)) MiB and $((G_BIG_BYTES / MiB)) MiB, $GROW_REPS × each"
find "$GS" "$GB" -type f -print0 | xargs -0 cat > /dev/null
for rep in $(seq "$GROW_REPS"); do
  a() {
    local s e; s=$(date +%s%N)
    flowpack_send "$GS" /bench/gs "$scratch/send/gs.fpk"; e=$(date +%s%N)
    record grow_pkg_s_per_mib small "$rep" "$(awk -v t="$(secs "$s" "$e")" -v b="$G_SMALL_BYTES" 'BEGIN { printf "%.5f", t / (b / 1048576) }')"
  }
  b() {
    local s e; s=$(date +%s%N)
    flowpack_send "$GB" /bench/gb "$scratch/send/gb.fpk"; e=$(date +%s%N)
    rss packager_G-big "$rep"
    record grow_pkg_s_per_mib big "$rep" "$(awk -v t="$(secs "$s" "$e")" -v b="$G_BIG_BYTES" 'BEGIN { printf "%.5f", t / (b / 1048576) }')"
  }
  if [ $((rep % 2)) = 1 ]; then a; b; else b; a; fi
done
rm -f "$scratch/send/gb.fpk"

# ---------------------------------------------------------------- growth: GET with many credentials in one container
log "growth: $MANY credentials in one container vs $FEW"
per=$(( (MANY + MANY_BUNDLES - 1) / MANY_BUNDLES ))
s=$(date +%s%N)
for b in $(seq 0 $((MANY_BUNDLES - 1))); do
  mapfile -t files < <(sed -n "$((b * per + 1)),$(((b + 1) * per))p" "$MANYD/list.txt")
  (cd "$MANYD" && "$fp" package-credentials "${files[@]}" -k "$key" -c /bench/many --seal-to "$recipient" -o "$scratch/many-$b.fpk" > /dev/null)
done
e=$(date +%s%N)
record grow_build_many_s packager 1 "$(secs "$s" "$e")"
s=$(date +%s%N)
# curl, not `flowpack deploy`: the deployment record of 25,000 credentials (every path created
# and needing secrets) is larger than the 1 MiB answer that `flowpack deploy` accepts.
for b in $(seq 0 $((MANY_BUNDLES - 1))); do
  curl -fsS -o /dev/null -X POST -H "$auth" -H 'Content-Type: application/zip' --data-binary @"$scratch/many-$b.fpk" "$url/v1/deployments"
done
e=$(date +%s%N)
record grow_deploy_many_s receiver 1 "$(secs "$s" "$e")"
mapfile -t files < "$FEWD/list.txt"
(cd "$FEWD" && "$fp" package-credentials "${files[@]}" -k "$key" -c /bench/few --seal-to "$recipient" -o "$scratch/few.fpk" > /dev/null)
flowpack_recv "$scratch/few.fpk"
cat > "$scratch/random.lua" << 'EOF'
-- GET a random credential of the container: FP_PREFIX followed by six digits below FP_N.
local n = tonumber(os.getenv("FP_N"))
local prefix = os.getenv("FP_PREFIX")
math.randomseed(7)
request = function()
  return wrk.format(nil, string.format("%s%06d", prefix, math.random(0, n - 1)))
end
EOF
grow_get() { # VARIANT-SUFFIX
  local rep
  for rep in $(seq "$WRK_REPS"); do
    a() { FP_N=$MANY FP_PREFIX=/v1/credentials/bench/many/x wrk_run grow_get "many$1" "$rep" -H "$auth" -s "$scratch/random.lua" "$url"; }
    b() { FP_N=$FEW FP_PREFIX=/v1/credentials/bench/few/x wrk_run grow_get "few$1" "$rep" -H "$auth" -s "$scratch/random.lua" "$url"; }
    if [ $((rep % 2)) = 1 ]; then a "$1"; b "$1"; else b "$1"; a "$1"; fi
  done
}
grow_get ""
# The same through the store's own path: the answer cache turned off by a reload.
reloads_ok() { curl -fsS "$url/metrics" | sed -n 's/^flowpack_reloads_total{outcome="ok"} //p'; }
before=$(reloads_ok)
sed -i 's/"answer_cache_mib": *[0-9]*/"answer_cache_mib": 0/' "$data/config.json"
grep -q '"answer_cache_mib": 0' "$data/config.json" || die "config.json has no answer_cache_mib to turn off"
kill -HUP "$receiver_pid"
for _ in $(seq 50); do [ "$(reloads_ok)" != "$before" ] && break; sleep 0.1; done
[ "$(reloads_ok)" != "$before" ] || die "the receiver did not reload its configuration"
grow_get _uncached
record rss_mib receiver_end 1 "$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$receiver_pid/status")"
record size_mib receiver_store 1 "$(du -sm "$data" | cut -f1)"

# ---------------------------------------------------------------- receiver memory applying one large bundle
stop
log "receiver memory: one large bundle per fresh receiver (bench/rss.sh)"
rss_args=(--results "$results"); [ "$mode" = full ] || rss_args+=(--quick)
FLOWPACK_BENCH_SKIP_BUILD=1 bench/rss.sh "${rss_args[@]}" > "$run/rss.txt"

# ---------------------------------------------------------------- report
stop
end_load=$(cat /proc/loadavg)
{
  echo "- load average (1, 5, 15 min) at the start: $(echo "$start_load" | cut -d' ' -f1-3); at the end: $(echo "$end_load" | cut -d' ' -f1-3)$(awk -v l="${start_load%% *}" 'BEGIN { if (l > 1.5) print " — **the machine was not quiet when the run started**" }')"
  echo "- corpora (seed $SEED): L = $L_FILES XML-like files, $((L_BYTES / MiB)) MiB, in $L_MAPPINGS mappings, + $L_CREDS credentials; S = $S_FILES files × $S_SIZE bytes in $S_MAPPINGS mappings; growth $((G_SMALL_BYTES / MiB)) MiB / $((G_BIG_BYTES / MiB)) MiB; $MANY vs $FEW credentials in one container"
  echo "- repetitions: $REPS (send, receive), $WRK_REPS × ${WRK_SECS}s (wrk), $LOAD_REPS × $((LOAD_CLIENTS * LOAD_PER)) deploys, $GROW_REPS (growth)"
  [ "$mode" = full ] || echo "- **smoke run**: tiny corpora and one short repetition; fixed costs dominate, so these figures say nothing about the targets"
} >> "$run/machine.md"
title="$(date -u '+%Y-%m-%d %H:%M UTC') — bench/run.sh${1:+ $1}"
"$tool" report --results "$results" --machine "$run/machine.md" --title "$title" > "$run/report.md"
if [ "$mode" = full ]; then
  doc=$root/docs/PERFORMANCE.md
  [ -f "$doc" ] || printf '# Performance\n\nMeasured by `bench/run.sh` (see its header); each run appends a dated section below.\n' > "$doc"
  cat "$run/report.md" >> "$doc"
  log "appended to docs/PERFORMANCE.md"
fi
cat "$run/report.md"
log "done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
