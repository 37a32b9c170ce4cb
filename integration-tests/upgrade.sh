#!/usr/bin/env bash
# Rolling upgrade (and downgrade) between an older ref and this working tree, in a test
# world of its own: builds the old ref (exported into a temp directory, built in its own
# target dir, kept for the next run), starts the suite from this tree's binaries — gateway,
# ipam, policy-compiler on unix sockets in a temp directory, the agent in a node network
# namespace, maps pinned under /sys/fs/bpf/<prefix> — with two pods pinging each other
# through a policy, then replaces each service in turn with the old binary and back (and
# runs CNI ADD/DEL with the old kino-cni), while the pods keep pinging and a client keeps
# calling (`kino endpoint list`, `kino policy list`, `kino ipam pools`, a CNI ADD + DEL).
# Reports, per step, packets sent/lost and calls made/failed. Nothing machine-wide is used
# (not /run/kino, /var/lib/kino, nor ports 7401-7404/9401-9404); everything it creates is
# removed on exit. Root only; not part of CI (a second full build). Run by hand:
#
#   integration-tests/upgrade.sh main                 # old = main, new = this tree
#   integration-tests/upgrade.sh v0.1.0 --hold 10     # hold each step 10 s (default 5)
#   integration-tests/upgrade.sh main --strict        # exit 1 on any lost packet or failed call
#
# Options: --hold SECONDS (how long each step runs after the swap), --strict, --keep-logs
# (keep the world's logs directory, printed at the end), --old-target DIR (where the old ref
# is exported and built; default target/upgrade/<commit>, kept for the next run). Exit
# status: 1 if the world did not come up or the pods cannot reach each other after the last
# step (and with --strict on any loss or failure), 2 on bad arguments.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

old_ref=""
hold=5
strict=0
keep_logs=0
old_target=""
while (($#)); do
  case "$1" in
    --hold) hold="$2"; shift 2 ;;
    --strict) strict=1; shift ;;
    --keep-logs) keep_logs=1; shift ;;
    --old-target) old_target="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "upgrade.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$old_ref" ] || { echo "upgrade.sh: one old ref only" >&2; exit 2; }; old_ref="$1"; shift ;;
  esac
done
[ -n "$old_ref" ] || { echo "usage: integration-tests/upgrade.sh <old-ref> [--hold S] [--strict] [--keep-logs]" >&2; exit 2; }
[[ "$hold" =~ ^[0-9]+$ ]] && ((hold > 0)) || { echo "upgrade.sh: --hold takes whole seconds > 0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "upgrade.sh: needs root (network namespaces, eBPF)" >&2; exit 1; }
old_sha="$(git rev-parse --verify "$old_ref^{commit}" 2>/dev/null)" ||
  { echo "upgrade.sh: $old_ref is not a commit of this repository" >&2; exit 2; }

packages=(-p kino-datastore-gateway -p kino-ipam -p kino-policy-compiler -p kino-agent -p kino-cli -p kino-cni-shim)
binaries=(kino-datastore-gateway kino-ipam kino-policy-compiler kino-agent kino kino-cni)

prefix="kup$(($$ % 100000))"
work="$(mktemp -d "/tmp/kino-upgrade-$prefix.XXXXXX")"
world="$work/world"
mkdir -p "$world" "$work/new-bin" "$work/old-bin"
node="$prefix-node"
pin_root="/sys/fs/bpf/$prefix"
declare -A pid=()       # service → pid (only processes this script started)
helpers=()              # pings and call loops of the current step
pods=()                 # pod network namespaces created

cleanup() {
  set +e
  for p in "${helpers[@]}"; do kill "$p" 2>/dev/null; done
  for s in "${!pid[@]}"; do kill "${pid[$s]}" 2>/dev/null; done
  for s in "${!pid[@]}"; do wait "${pid[$s]}" 2>/dev/null; done
  for ns in "${pods[@]}"; do ip netns del "$ns" 2>/dev/null; done
  ip netns del "$node" 2>/dev/null
  rm -rf "$pin_root"
  if ((keep_logs)); then
    echo "logs kept in $world"
    rm -rf "$work/new-bin" "$work/old-bin"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# ---- binaries -------------------------------------------------------------------------
new_target="${CARGO_TARGET_DIR:-$repo/target}"
echo "==> building this tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ', with uncommitted changes'))"
cargo build --bins "${packages[@]}"
for b in "${binaries[@]}"; do cp "$new_target/debug/$b" "$work/new-bin/"; done
old_target="${old_target:-$repo/target/upgrade/${old_sha:0:12}}"
echo "==> building $old_ref (${old_sha:0:12}) in $old_target"
# The source sits beside its target dir, at the same path every run: build scripts remember
# where their crate was, so a source exported elsewhere would not rebuild incrementally.
old_src="$old_target/src"
if [ ! -f "$old_src/.kino-upgrade-$old_sha" ]; then
  rm -rf "$old_src"
  mkdir -p "$old_src"
  git archive "$old_sha" | tar -x -C "$old_src"
  touch "$old_src/.kino-upgrade-$old_sha"
fi
(cd "$old_src" && CARGO_TARGET_DIR="$old_target" cargo build --bins "${packages[@]}")
for b in "${binaries[@]}"; do cp "$old_target/debug/$b" "$work/old-bin/"; done

# ---- the world --------------------------------------------------------------------------
export KINO_DATASTORE_METRICS_ADDRESS=off KINO_IPAM_METRICS_ADDRESS=off \
  KINO_POLICY_METRICS_ADDRESS=off KINO_AGENT_METRICS_ADDRESS=off
ds="unix:$world/ds.sock"; ipam="unix:$world/ipam.sock"; policy="unix:$world/policy.sock"
agent_sock="$world/agent.sock"
ip netns add "$node"
ip netns exec "$node" ip link set lo up

socket_of() {
  case "$1" in
    gateway) echo "$world/ds.sock" ;; ipam) echo "$world/ipam.sock" ;;
    policy-compiler) echo "$world/policy.sock" ;; agent) echo "$agent_sock" ;;
  esac
}

# start SERVICE BIN_DIR: the service from that build, with this world's flags.
start() {
  local service="$1" bin="$2" socket
  socket="$(socket_of "$service")"
  rm -f "$socket"
  # exec: the pid recorded is the service's own (stop and cleanup signal it, not a shell).
  case "$service" in
    gateway) exec "$bin/kino-datastore-gateway" --listen "$ds" --data-file "$world/ds.redb" ;;
    ipam) exec "$bin/kino-ipam" --listen "$ipam" --datastore "$ds" ;;
    policy-compiler) exec "$bin/kino-policy-compiler" --listen "$policy" --datastore "$ds" ;;
    agent) exec nsenter --net="/run/netns/$node" "$bin/kino-agent" --node-name "$node" \
      --socket "$agent_sock" --flow-listen "unix:$world/flows.sock" --datastore "$ds" \
      --ipam "$ipam" --policy "$policy" --state-dir "$world/agent-state" --bpf-pin-root "$pin_root" ;;
  esac >>"$world/$service.log" 2>&1 &
  pid[$service]=$!
  for _ in $(seq 1 300); do
    [ -S "$socket" ] && return 0
    kill -0 "${pid[$service]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "upgrade.sh: $service ($bin) did not come up; its log:" >&2
  tail -30 "$world/$service.log" >&2
  exit 1
}

stop() {
  local service="$1"
  kill -TERM "${pid[$service]}" 2>/dev/null || true
  wait "${pid[$service]}" 2>/dev/null || true
  unset "pid[$service]"
}

kino() {
  "$work/new-bin/kino" --agent-socket "$agent_sock" --ipam "$ipam" --datastore "$ds" \
    --policy "$policy" --flows "unix:$world/flows.sock" "$@"
}

# cni BIN_DIR COMMAND POD: kino-cni of that build, as a runtime runs it.
cni() {
  local bin="$1" command="$2" pod="$3" app="${3#"$prefix"-}"
  printf '{"cniVersion":"1.0.0","name":"kino","type":"kino-cni","agentSocket":"%s","args":{"labels":{"app":"%s"}}}' \
    "$agent_sock" "$app" |
    CNI_COMMAND="$command" CNI_CONTAINERID="$pod" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 \
      CNI_PATH="$bin" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$app;K8S_POD_NAMESPACE=upgrade" \
      "$bin/kino-cni"
}

echo "==> starting the suite from this tree in $world (node namespace $node)"
start gateway "$work/new-bin"
start ipam "$work/new-bin"
start policy-compiler "$work/new-bin"
start agent "$work/new-bin"

declare -A ip_of=()
for app in a b; do
  ns="$prefix-$app"
  ip netns add "$ns"; pods+=("$ns")
  ip netns exec "$ns" ip link set lo up
  result="$(cni "$work/new-bin" ADD "$ns")" || { echo "upgrade.sh: ADD $app failed: $result" >&2; exit 1; }
  ip_of[$app]="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])' <<<"$result")"
done
ip netns add "$prefix-c"; pods+=("$prefix-c")
cat >"$world/policy.yaml" <<'END'
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: b-from-a, namespace: upgrade}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
END
kino policy import "$world/policy.yaml" >/dev/null
for _ in $(seq 1 50); do
  ip netns exec "$prefix-a" ping -c 1 -W 1 "${ip_of[b]}" >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec "$prefix-a" ping -c 1 -W 1 "${ip_of[b]}" >/dev/null ||
  { echo "upgrade.sh: pod a cannot reach pod b before any swap" >&2; exit 1; }
echo "==> pods a (${ip_of[a]}) and b (${ip_of[b]}) ping each other; b admits a by policy"

# ---- steps ------------------------------------------------------------------------------
# The client's calls: each line of $world/calls-<step> is "ok NAME" or "FAIL NAME: why".
call_loop() {
  local step="$1" cni_bin="$2" out="$world/calls-$1"
  : >"$out"
  while [ ! -e "$world/stop-$step" ]; do
    for call in "endpoint list" "policy list" "ipam pools"; do
      # shellcheck disable=SC2086
      if msg="$(kino $call 2>&1 >/dev/null)"; then echo "ok kino $call"; else echo "FAIL kino $call: ${msg%%$'\n'*}"; fi
    done >>"$out"
    if msg="$(cni "$cni_bin" ADD "$prefix-c" 2>&1)"; then echo "ok cni ADD"; else echo "FAIL cni ADD: ${msg:0:200}"; fi >>"$out"
    if msg="$(cni "$cni_bin" DEL "$prefix-c" 2>&1)"; then echo "ok cni DEL"; else echo "FAIL cni DEL: ${msg:0:200}"; fi >>"$out"
    sleep 0.2
  done
}

results=()
total_lost=0
total_failed=0
# step NAME CNI_BIN ACTION...: traffic and calls around ACTION, then $hold seconds more.
step() {
  local name="$1" cni_bin="$2"; shift 2
  helpers=()
  ip netns exec "$prefix-a" ping -i 0.05 -W 1 "${ip_of[b]}" >"$world/ping-ab-$name" 2>&1 &
  helpers+=($!)
  ip netns exec "$prefix-b" ping -i 0.05 -W 1 "${ip_of[a]}" >"$world/ping-ba-$name" 2>&1 &
  helpers+=($!)
  call_loop "$name" "$cni_bin" &
  local loop=$!
  sleep 1
  "$@"
  sleep "$hold"
  touch "$world/stop-$name"
  wait "$loop" || true
  kill -INT "${helpers[@]}" 2>/dev/null || true
  wait "${helpers[@]}" 2>/dev/null || true
  helpers=()
  local sent=0 received=0 line
  for f in "$world/ping-ab-$name" "$world/ping-ba-$name"; do
    line="$(grep 'packets transmitted' "$f" || echo '0 packets transmitted, 0 received')"
    sent=$((sent + $(awk '{print $1}' <<<"$line")))
    received=$((received + $(awk '{print $4}' <<<"$line")))
  done
  local calls failed
  calls=$(wc -l <"$world/calls-$name")
  failed=$(grep -c '^FAIL' "$world/calls-$name" || true)
  total_lost=$((total_lost + sent - received))
  total_failed=$((total_failed + failed))
  results+=("$(printf '%-34s %6d %6d %6d %6d' "$name" "$sent" "$((sent - received))" "$calls" "$failed")")
  echo "    $name: $((sent - received)) of $sent packets lost, $failed of $calls calls failed"
  grep '^FAIL' "$world/calls-$name" | sort | uniq -c | sed 's/^/      /' || true
}

swap() { stop "$1"; start "$1" "$2"; }

for service in gateway ipam policy-compiler agent; do
  echo "==> $service: this tree -> $old_ref"
  step "$service -> old" "$work/new-bin" swap "$service" "$work/old-bin"
  echo "==> $service: $old_ref -> this tree"
  step "$service -> new" "$work/new-bin" swap "$service" "$work/new-bin"
done
echo "==> kino-cni of $old_ref against this tree's agent"
step "kino-cni old" "$work/old-bin" true

# ---- verdict ---------------------------------------------------------------------------
echo
echo "Rolling upgrade $old_ref (${old_sha:0:12}) <-> this tree ($(git rev-parse --short HEAD)), each step held ${hold}s:"
printf '%-34s %6s %6s %6s %6s\n' STEP SENT LOST CALLS FAILED
printf '%s\n' "${results[@]}"
echo "Total: $total_lost packet(s) lost, $total_failed call(s) failed."
ok=1
ip netns exec "$prefix-a" ping -c 2 -i 0.2 -W 1 "${ip_of[b]}" >/dev/null || { echo "pod a no longer reaches pod b" >&2; ok=0; }
ip netns exec "$prefix-b" ping -c 2 -i 0.2 -W 1 "${ip_of[a]}" >/dev/null || { echo "pod b no longer reaches pod a" >&2; ok=0; }
for app in a b; do cni "$work/new-bin" DEL "$prefix-$app" >/dev/null || { echo "DEL $app failed" >&2; ok=0; }; done
((ok)) || exit 1
if ((strict)) && ((total_lost + total_failed > 0)); then exit 1; fi
