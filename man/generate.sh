#!/bin/sh
# Regenerates the manual pages in this directory from the command-line definitions of both
# binaries (clap_mangen): flowpack.1, flowpack-receiver.1 and one page per subcommand.
# tests/tests/man_pages.rs fails when they differ from what the binaries generate.
set -eu
cd "$(dirname "$0")/.."
# The whole workspace's binaries, as the test suite builds them (no second set of artifacts).
cargo build -q --locked --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/debug"
rm -f man/*.1
"$bin/flowpack" man --dir man
"$bin/flowpack-receiver" man --dir man
echo "$(ls man/*.1 | wc -l) manual pages written in man/"
