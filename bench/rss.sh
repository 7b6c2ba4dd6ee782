#!/usr/bin/env bash
# The receiver's peak memory while it applies one large bundle.
#
#   bench/rss.sh                 25,000 credentials, and 100,000 entries; 3 repetitions each
#   bench/rss.sh --quick         2,000 of each, one repetition: a smoke run
#   bench/rss.sh --results TSV   also appends `rss_mib VARIANT REP MiB` lines to TSV (run.sh)
#
# Each measurement starts a fresh receiver (its own data directory), deploys one bundle to it
# with curl and reads the receiver's VmHWM (peak resident set) from /proc once the answer has
# come: so each figure is the peak of one start plus one apply, and nothing else.
#
# The bundles:
# - `receiver_apply_25k`: one standalone credential bundle of 25,000 credential records of the
#   four types in turn (as each of the growth section's four bundles in run.sh), none stored
#   before: every one is created.
# - `receiver_apply_100k_entries`: a mapping bundle at the archive's entry limit (100,000 ZIP
#   entries: manifest.json, manifest.sig, 4 mapping definitions and 99,994 mapping files of 256
#   bytes). Four mappings, because one definition listing 99,994 files would be over the 1 MiB
#   a record may take.
#
# Uses the release binaries (built unless FLOWPACK_BENCH_SKIP_BUILD=1) and the corpus generator
# of bench/src; corpora are kept under bench/out/corpus/ between runs.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
root=$PWD

mode=full results=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --results) results=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bench/rss.sh [--quick] [--results TSV]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$mode" = full ]; then
  CREDS=25000 FILES=99994 MAPPINGS=4 REPS=3
else
  CREDS=2000 FILES=1996 MAPPINGS=4 REPS=1
fi
SEED=20261122
FILE_SIZE=256

out=$root/bench/out
corpus=$out/corpus/rss-$mode
scratch=$out/rss-$mode
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "${FLOWPACK_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release -p flowpack-receiver -p flowpack"
  cargo build --release --quiet -p flowpack-receiver -p flowpack
fi
cargo build --release --quiet --manifest-path bench/Cargo.toml --target-dir target/bench
fp=$root/target/release/flowpack
fr=$root/target/release/flowpack-receiver
tool=$root/target/bench/release/flowpack-bench

receiver_pid=
stop() {
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2> /dev/null && wait "$receiver_pid" 2> /dev/null
  receiver_pid=
  return 0
}
trap 'stop; rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM
rm -rf "$scratch"
mkdir -p "$scratch"

. "$root/bench/corpus.sh"
gen "$corpus/creds" creds --count "$CREDS" --prefix x
gen "$corpus/entries" small --files "$FILES" --size "$FILE_SIZE" --mappings "$MAPPINGS"

# One receiver's keys serve every fresh data directory: each is made with `init`, then given
# the same sealing identity and trusted signer, so one bundle of each kind is packaged once.
key=$scratch/signer.key
"$fp" keygen -o "$key" > /dev/null
fresh() { # DIR: a new data directory; prints its admin token
  local d=$1
  "$fr" init --data-dir "$d" > "$d.init"
  "$fr" trust add "$key.pub" --data-dir "$d" > /dev/null
  sed -n 's/^admin_token: //p' "$d.init"
}
token=$(fresh "$scratch/proto")
recipient=$(sed -n 's/^sealing_recipient: //p' "$scratch/proto.init")
[ -n "$recipient" ] || die "init printed no sealing recipient"

log "packaging $CREDS credentials and $((FILES + MAPPINGS + 2)) entries"
mapfile -t files < "$corpus/creds/list.txt"
(cd "$corpus/creds" && "$fp" package-credentials "${files[@]}" -k "$key" -c /bench/rss --seal-to "$recipient" -o "$scratch/creds.fpk" > /dev/null)
"$fp" package "$corpus/entries" -k "$key" -c /bench/rss --seal-to "$recipient" -o "$scratch/entries.fpk" > /dev/null

# measure VARIANT BUNDLE REP: a fresh receiver with the prototype's keys, one deploy, its VmHWM.
measure() {
  local variant=$1 bundle=$2 rep=$3 d=$scratch/r-$1-$3 url hwm start status
  mkdir -p "$d"
  cp -a "$scratch/proto/." "$d/"
  rm -f "$d/serve.lock"
  "$fr" serve --data-dir "$d" --listen 127.0.0.1:0 > "$d.out" 2> "$d.log" &
  receiver_pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$d.out" 2> /dev/null && break; sleep 0.1; done
  url=$(sed -n 's/^listening on //p' "$d.out" | head -n1)
  [ -n "$url" ] || die "the receiver did not start: $(cat "$d.log")"
  start=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$receiver_pid/status")
  status=$(curl -sS -o "$d.answer" -w '%{http_code} %{time_total}' -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/zip' --data-binary @"$bundle" "$url/v1/deployments")
  [ "${status% *}" = 201 ] || die "$variant: deploy answered ${status% *}: $(head -c 500 "$d.answer")"
  hwm=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$receiver_pid/status")
  stop
  rm -rf "$d"
  printf '%s\t%s MiB\t(at start %s MiB; deploy %s s)\n' "$variant" "$hwm" "$start" "${status#* }"
  [ -z "$results" ] || printf 'rss_mib\t%s\t%s\t%s\n' "$variant" "$rep" "$hwm" >> "$results"
}
for rep in $(seq "$REPS"); do
  measure receiver_apply_25k "$scratch/creds.fpk" "$rep"
  measure receiver_apply_100k_entries "$scratch/entries.fpk" "$rep"
done
