#!/usr/bin/env bash
# Coverage-guided fuzzing of one kino target with AFL++ (run by hand, not in CI):
#
#   fuzz/run.sh <target> <seconds>      # targets: cni_config cni_env policy labels records
#
# Needs cargo-afl (`cargo install cargo-afl`, which builds its bundled AFL++). Builds the
# harness in fuzz/afl (its own target dir, fuzz/afl/target), seeds AFL with
# fuzz/corpus/<target>/ and fuzzes for <seconds>; findings land in fuzz/out/<target>/
# (crashes/, hangs/, queue/). Turn a crash into a corpus file plus a fix:
#   cp fuzz/out/<target>/default/crashes/id:… fuzz/corpus/<target>/<what-it-is>
# and `cargo test -p kino-fuzz` replays it from then on.
set -euo pipefail

usage() { echo "usage: $0 <cni_config|cni_env|policy|labels|records> <seconds>" >&2; exit 2; }
[ $# -eq 2 ] || usage
target=$1 seconds=$2
case $target in cni_config|cni_env|policy|labels|records) ;; *) usage ;; esac
[[ $seconds =~ ^[0-9]+$ ]] || usage

here=$(cd "$(dirname "$0")" && pwd)
command -v cargo-afl >/dev/null || {
  echo "cargo-afl is not installed: cargo install cargo-afl" >&2; exit 1; }

export CARGO_TARGET_DIR=$here/afl/target
(cd "$here/afl" && cargo afl build --release --quiet)

out=$here/out/$target
mkdir -p "$out"
# No CPU binding (the machine is shared) and no core-pattern check (a container may not
# own /proc/sys/kernel/core_pattern); crashes are still caught as signals.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 KINO_FUZZ_TARGET=$target
cargo afl fuzz -V "$seconds" -t 5000 -i "$here/corpus/$target" -o "$out" \
  "$CARGO_TARGET_DIR/release/kino-fuzz-afl"

stats=$out/default/fuzzer_stats
if [ -f "$stats" ]; then
  grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|edges_found|total_edges) ' "$stats"
fi
crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "$target: $crashes crash(es) in $out/default/crashes"
