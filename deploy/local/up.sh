#!/usr/bin/env bash
# Brings the whole Kinocilium suite up on this machine (standalone mode, embedded datastore)
# and runs the main job: every service up and healthy, shown by `kino status`, then the seed
# walkthrough (deploy/local/walkthrough.sh): a pod, its endpoint, its lxc NIC, traffic, delete.
#   installs packages (apt, npm) → cargo build --release → `kino pki init` (a CA and one
#   certificate per service, the agent and the admin in /var/lib/kino/pki, root-only) →
#   starts the services in the background with mTLS and authorization on every TCP port
#   (logs in /var/log/kino/, state in /var/lib/kino/, pids in /run/kino/, all root-only; the
#   agent in this host's network namespace, pins under /sys/fs/bpf/kino/<node>/)
#   → waits until all are SERVING → prints `kino status` → checks that a local user without
#   the admin key is refused → runs the walkthrough.
# With OTEL_EXPORTER_OTLP_ENDPOINT set (e.g. http://127.0.0.1:4317, a Jaeger or any OTLP
# collector), every service — and the walkthrough's kino-cni and kino — exports its spans
# there. Each service serves Prometheus metrics on 127.0.0.1:9401 (gateway), :9402 (ipam),
# :9403 (policy-compiler) and :9404 (agent).
# Exits non-zero if a component is unhealthy or a walkthrough check fails.
# Stop everything (and remove what the agent made in the kernel) with ./deploy/local/down.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

"$repo/deploy/local/install-deps.sh"

echo "==> cargo build --release (all binaries)"
cargo build --release --workspace --bins
bin="$repo/target/release"

# Everything written from here on (logs, state, keys) is root's alone.
umask 077

# A previous run is stopped first, so up.sh can be run again at any time.
"$repo/deploy/local/down.sh" >/dev/null 2>&1 || true

state=/var/lib/kino logs=/var/log/kino run=/run/kino pki=/var/lib/kino/pki
mkdir -p "$state" "$logs" "$run"
# Also when an older run made them world-readable.
chmod 0700 "$state" "$logs"
chmod 0600 "$logs"/*.log 2>/dev/null || true

# What down.sh needs to undo the agent's kernel changes: the node name (its pins live under
# /sys/fs/bpf/kino/<node>/) and IPv4 and IPv6 forwarding as they were (the agent turns them
# on; IPv6 only with a dual-stack pool, and where the kernel has IPv6).
node=$(tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname)
echo "$node" >"$run/node"
cat /proc/sys/net/ipv4/ip_forward >"$run/ip_forward.before"
if [ -f /proc/sys/net/ipv6/conf/all/forwarding ]; then
  cat /proc/sys/net/ipv6/conf/all/forwarding >"$run/ipv6_forwarding.before"
fi

start() { # name binary args...
  local name=$1; shift
  local exe=$1; shift
  nohup "$bin/$exe" "$@" >>"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  echo "    started $name (pid $!, log $logs/$name.log)"
}

# Passed on to every process started below (services, kino-cni, kino).
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  export OTEL_EXPORTER_OTLP_ENDPOINT
  echo "==> traces: every service exports OTLP spans to $OTEL_EXPORTER_OTLP_ENDPOINT"
fi

# Certificates: kept when valid, so a rerun changes nothing the running services use.
echo "==> kino pki init (certificates in $pki)"
"$bin/kino" pki init --pki-dir "$pki" --node "$node" | sed 's/^/    /'

# No TLS flags: every service serves mTLS with its certificate from $pki (the default)
# and authorizes each call by the caller's certificate; kino finds admin.crt there.
echo "==> starting the suite"
start datastore-gateway kino-datastore-gateway --data-file "$state/datastore.redb"
start ipam kino-ipam
start policy-compiler kino-policy-compiler
start agent kino-agent --socket /run/kino/agent.sock --node-name "$node"

echo "==> waiting for every component to be SERVING"
for _ in $(seq 1 60); do
  if "$bin/kino" status >/dev/null 2>&1; then break; fi
  sleep 0.5
done

echo
echo "\$ kino status"
if ! "$bin/kino" status; then
  echo >&2
  echo "some components are not healthy; their logs are in $logs/" >&2
  exit 1
fi

echo
echo "==> trust: a local user without the admin key changes nothing"
# `nobody` cannot read $pki; without a client certificate every call is refused.
if out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups "$bin/kino" ipam pools 2>&1) ||
  ! grep "they are root's" <<<"$out" >/dev/null; then
  echo "an unprivileged user was not refused for the right reason: $out" >&2
  exit 1
fi
echo "\$ setpriv --reuid=nobody ... kino ipam pools"
echo "$out" | sed 's/^/    /'
buf="$repo/.tools/node_modules/.bin/buf"
if ! "$buf" --version >/dev/null 2>&1; then
  echo "buf is not installed (install-deps.sh puts it in .tools/)" >&2
  exit 1
fi
# Without a certificate reflection is refused too, hence the schema from proto/.
anonymous=$("$buf" curl --protocol grpc --schema "$repo/proto" --cacert "$pki/ca.crt" \
  https://127.0.0.1:7402/kino.ipam.v1.IpamService/CreatePool -d '{"pool":{"name":"x"}}' 2>&1 || true)
echo "\$ buf curl --schema proto --cacert $pki/ca.crt https://127.0.0.1:7402/kino.ipam.v1.IpamService/CreatePool ..."
echo "$anonymous" | sed 's/^/    /'
if ! grep 'unauthenticated' <<<"$anonymous" >/dev/null; then
  echo "a call without a client certificate was not refused as unauthenticated" >&2
  exit 1
fi
# The README's inspection command, with the admin credentials.
if ! "$buf" curl --protocol grpc --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
  --key "$pki/admin.key" --list-services https://127.0.0.1:7401 | grep '^kino.datastore.v1' >/dev/null; then
  echo "buf curl with the admin certificate cannot list the gateway's services" >&2
  exit 1
fi

for port in 9401 9402 9403 9404; do
  if ! curl -sf "http://127.0.0.1:$port/metrics" | grep '^kino_build_info' >/dev/null; then
    echo "no Prometheus metrics on 127.0.0.1:$port; the logs are in $logs/" >&2
    exit 1
  fi
done

if ! KINO_BIN="$bin" "$repo/deploy/local/walkthrough.sh"; then
  echo >&2
  echo "the walkthrough failed; the suite is still running (logs in $logs/)," >&2
  echo "stop it with ./deploy/local/down.sh" >&2
  exit 1
fi
echo
echo "Kinocilium is up. The CLI is $bin/kino; stop the suite with ./deploy/local/down.sh"
echo "Metrics: curl http://127.0.0.1:9401/metrics (gateway), :9402 (ipam), :9403 (policy-compiler), :9404 (agent)"
