#!/usr/bin/env bash
# Soak of the IPAM zero-duplicate stress test (integration-tests/tests/ipam_replicas.rs) under
# CPU contention: builds the test once, starts competing CPU hogs (busy loops at the same
# priority as the test, so the 3 kino-ipam replicas, the gateway and the clients are
# descheduled at random points, as on a busy machine), then runs the test again and again and
# counts passes and failures. Each failed run's output is kept. Run by hand, not in CI:
#
#   ./integration-tests/soak.sh                     # 20 runs of the embedded-store variant, 2 hogs
#   ./integration-tests/soak.sh --runs 100 --hogs 4
#   ./integration-tests/soak.sh --minutes 60        # as many runs as fit in an hour
#   KINO_TEST_ETCD_ENDPOINTS=http://127.0.0.1:2379 ./integration-tests/soak.sh --test three_replicas_never_duplicate_etcd
#
# Options: --runs N (default 20), --minutes M (stop starting runs after M minutes; overrides
# --runs), --hogs H (default: the number of CPUs), --test NAME (test function, default
# three_replicas_never_duplicate_embedded), --keep DIR (where logs go; default a temp dir,
# printed), --test-binary PATH (run this already built test binary instead of building one:
# an A/B comparison keeps a copy of the old one in target/debug/deps/, where it finds the
# service binaries). Exit status 1 if any run failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

runs=20
minutes=""
hogs="$(nproc)"
test_name=three_replicas_never_duplicate_embedded
logs=""
test_bin=""
while (($#)); do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --hogs) hogs="$2"; shift 2 ;;
    --test) test_name="$2"; shift 2 ;;
    --keep) logs="$2"; shift 2 ;;
    --test-binary) test_bin="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$runs" "$hogs" ${minutes:+"$minutes"}; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "soak.sh: $n is not a number" >&2; exit 2; }
done
if [ -z "$logs" ]; then logs="$(mktemp -d /tmp/kino-soak.XXXXXX)"; fi
mkdir -p "$logs"

if [ -z "$test_bin" ]; then
  echo "==> building the stress test and the binaries it starts"
  cargo build -p kino-datastore-gateway -p kino-ipam -p kino-cli --bins
  test_bin="$(cargo test -p kino-integration-tests --test ipam_replicas --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ipam_replicas":
        print(m["executable"])')"
fi
[ -x "$test_bin" ] || { echo "soak.sh: could not find the built ipam_replicas test" >&2; exit 1; }

# The hogs: plain busy loops, each its own process (killed by pid on exit, never by name).
hog_pids=()
cleanup() {
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq 1 "$hogs"); do
  bash -c 'while :; do :; done' &
  hog_pids+=($!)
done
echo "==> $hogs CPU hog(s) running (pids ${hog_pids[*]:-none}); logs in $logs"

deadline=""
if [ -n "$minutes" ]; then deadline=$(($(date +%s) + minutes * 60)); runs=1000000; fi
passed=0
failed=0
started=$(date +%s)
for i in $(seq 1 "$runs"); do
  if [ -n "$deadline" ] && [ "$(date +%s)" -ge "$deadline" ]; then break; fi
  log="$logs/run-$i.log"
  t0=$(date +%s)
  if "$test_bin" --exact "$test_name" --nocapture >"$log" 2>&1; then
    passed=$((passed + 1))
    rm -f "$log"
    verdict=pass
  else
    failed=$((failed + 1))
    verdict="FAIL (log: $log)"
  fi
  echo "run $i: $verdict in $(($(date +%s) - t0)) s; so far $passed passed, $failed failed"
done
total=$((passed + failed))
echo "==> $test_name: $total run(s) under $hogs CPU hog(s) in $(($(date +%s) - started)) s: $passed passed, $failed failed"
if ((failed)); then
  grep -h -A12 "panicked at" "$logs"/run-*.log | head -60 || true
  exit 1
fi
