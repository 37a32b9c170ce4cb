#!/usr/bin/env bash
# Runs every check and test of Kinocilium on this machine: installs what the tests need,
# starts a private etcd (removed on exit), builds the workspace once, then
#   1. lints: cargo fmt --check, cargo clippy -D warnings, buf lint, buf breaking vs HEAD~1
#      and vs the commits that released each v1 package (integration-tests/api-compat.sh);
#   2. cargo test --workspace (unit, conformance on embedded + etcd, end-to-end binaries).
# Environment: KINO_SKIP_LINT=1 skips step 1; extra arguments go to `cargo test`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

"$repo/deploy/local/install-deps.sh"
buf="$repo/.tools/node_modules/.bin/buf"
export PATH="$repo/.tools/node_modules/.bin:$PATH"

# A private etcd for the etcd backend's tests, on free ports (several runs may overlap).
etcd_dir="$(mktemp -d /tmp/kino-test-etcd.XXXXXX)"
etcd_pid=""
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$etcd_dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
client_url="http://127.0.0.1:$(free_port)"
peer_url="http://127.0.0.1:$(free_port)"
etcd --name kino-test --data-dir "$etcd_dir/data" \
  --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
  --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
  --initial-cluster "kino-test=$peer_url" >"$etcd_dir/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$client_url" endpoint health >/dev/null 2>&1; then break; fi
  sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$client_url" endpoint health >/dev/null 2>&1 || {
  echo "etcd did not start; its log:" >&2; cat "$etcd_dir/etcd.log" >&2; exit 1; }
export KINO_TEST_ETCD_ENDPOINTS="$client_url"
echo "==> etcd ready at $client_url"

echo "==> cargo build (workspace, bins and tests)"
cargo build --workspace --bins --tests

if [ "${KINO_SKIP_LINT:-0}" != "1" ]; then
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
  echo "==> cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  echo "==> buf lint"
  (cd proto && "$buf" lint)
  if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto/buf.yaml 2>/dev/null; then
    echo "==> buf breaking against HEAD~1"
    (cd proto && "$buf" breaking --against "$repo/.git#ref=HEAD~1,subdir=proto")
  else
    echo "==> buf breaking: no previous commit with proto/buf.yaml; nothing to compare"
  fi
  # HEAD~1 misses a break spread over commits or merged with later ones: also compare with
  # what was released (proto/released-v1.txt).
  "$repo/integration-tests/api-compat.sh" --buf "$buf"
fi

echo "==> cargo test --workspace"
cargo test --workspace "$@"
