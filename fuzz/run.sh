#!/usr/bin/env bash
# Runs one fuzz target with its seeds: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags…]
#
#   bundle_reader   seeds: every bundle in fixtures/malicious/ and fixtures/vectors/
#   model_parsers   seeds: the sample and environment records, and every mapping.json and
#                   credentials/*.json inside the corpus's valid bundles
#
# New inputs go to fuzz/corpus/TARGET (kept between runs, not committed); crashes to
# fuzz/artifacts/TARGET. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). See docs/TESTING.md.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh bundle_reader|model_parsers [SECONDS] [libFuzzer flags…]}
secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
fixtures=../fixtures
seeds=corpus/$target-seeds
rm -rf "$seeds"
mkdir -p "corpus/$target" "$seeds"
case $target in
  bundle_reader)
    cp "$fixtures"/malicious/*.fpk "$fixtures"/vectors/*.fpk "$seeds"/
    ;;
  model_parsers)
    cp "$fixtures"/sample/*.json "$fixtures"/envs/*.json "$seeds"/
    for b in "$fixtures"/malicious/valid*.fpk "$fixtures"/vectors/bundle.fpk; do
      base=$(basename "$b" .fpk)
      for e in $(unzip -Z1 "$b" | grep -E '(mapping\.json|^credentials/.*\.json)$'); do
        unzip -p "$b" "$e" > "$seeds/$base-$(echo "$e" | tr / _)"
      done
    done
    ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
# Regression inputs (fuzz/regressions/TARGET/*) always run first.
if [ -d "regressions/$target" ]; then cp "regressions/$target"/* "$seeds"/ 2>/dev/null || true; fi
exec cargo +nightly fuzz run "$target" "corpus/$target" "$seeds" -- \
  -max_total_time="$secs" -print_final_stats=1 "$@"
