#!/usr/bin/env bash
# A Kinocilium cluster on this machine: N nodes, each a network namespace with its own
# kino-agent, on an underlay bridge; the cluster services in a namespace of their own on the
# same underlay; every connection between services and agents crosses the underlay over
# mTLS with per-service certificates and per-RPC authorization (docs/security.md).
#
#   ./deploy/local/cluster.sh up [--nodes N] [--routing tunnel|native] [--datastore embedded|etcd]
#   ./deploy/local/cluster.sh status     # exit 0 exactly when every component is up
#   ./deploy/local/cluster.sh env        # eval "$(./deploy/local/cluster.sh env)" for the host's kino
#   ./deploy/local/cluster.sh walkthrough
#   ./deploy/local/cluster.sh down
#
# Layout (names are what tools and tests rely on):
#   kino-underlay    the underlay bridge kino-br0 (198.18.0.0/24, 2001:db8:18::/64)
#   kino-services    datastore-gateway :7401, ipam :7402, policy-compiler :7403 and the flow
#                    relay :7405 on 198.18.0.2 (etcd on its loopback with --datastore etcd)
#   kino-node-<i>    node i (node name = namespace name): eth0 198.18.0.(10+i), 2001:db8:18::(10+i);
#                    its agent's socket /run/kino/kino-node-<i>/agent.sock, flow observer
#                    198.18.0.(10+i):7404, pins /sys/fs/bpf/kino/kino-node-<i>/
#   kino-external    a host outside the cluster (198.18.0.200, 2001:db8:18::200)
#   the host         kino-uplink (198.18.0.1) on the bridge, so the host's kino reaches the
#                    services; nothing is routed beyond these namespaces. The benchmark
#                    range, not the documentation one: a machine may use 192.0.2.0/24 itself
#                    (`up` refuses to start when the host already uses 198.18.0.0/24).
# State under /var/lib/kino/cluster (PKI in its pki/), logs under /var/log/kino/cluster, pids
# under /run/kino/cluster; all root-only.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${KINO_BIN:-$repo/target/release}"
state=/var/lib/kino/cluster logs=/var/log/kino/cluster run=/run/kino/cluster
pki=$state/pki
services_ip=198.18.0.2 services_ip6=2001:db8:18::2
host_ip=198.18.0.1
external_ip=198.18.0.200 external_ip6=2001:db8:18::200

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

node_ip() { echo "198.18.0.$((10 + $1))"; }
node_ip6() { echo "2001:db8:18::$((10 + $1))"; }
nodes() { cat "$run/nodes" 2>/dev/null || echo 0; }

# Plugs namespace $1 into the bridge through port $2, with addresses $3 (IPv4) and $4 (IPv6).
plug() {
  ip -n kino-underlay link add "$2" type veth peer name eth0 netns "$1"
  ip -n kino-underlay link set "$2" master kino-br0 up
  ip -n "$1" addr add "$3/24" dev eth0
  ip -n "$1" addr add "$4/64" dev eth0 nodad
  ip -n "$1" link set eth0 up
  ip -n "$1" link set lo up
}

start() { # name netns binary args...
  local name=$1 netns=$2 exe=$3
  shift 3
  if [ -x "$bin/$exe" ]; then exe=$bin/$exe; fi
  # nsenter keeps the host's mount namespace (ip netns exec would hide /sys/fs/bpf).
  KINO_PKI_DIR="$pki" nohup nsenter --net="/run/netns/$netns" "$exe" "$@" \
    >>"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  echo "    started $name in $netns (pid $!, log $logs/$name.log)"
}

env_lines() {
  cat <<EOF
export KINO_DATASTORE=$services_ip:7401
export KINO_IPAM=$services_ip:7402
export KINO_POLICY=$services_ip:7403
export KINO_FLOW=$services_ip:7405
export KINO_PKI_DIR=$pki
export PATH="$bin:\$PATH"
EOF
}

kino() { (eval "$(env_lines)" && "$bin/kino" "$@"); }

status() {
  local n failed=0
  n=$(nodes)
  if [ "$n" = 0 ]; then
    echo "no cluster (./deploy/local/cluster.sh up)" >&2
    return 1
  fi
  for pidfile in "$run"/*.pid; do
    [ -e "$pidfile" ] || continue
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$(basename "$pidfile" .pid) is not running (log $logs/$(basename "$pidfile" .pid).log)" >&2
      failed=1
    fi
  done
  for i in $(seq 1 "$n"); do
    if ! out=$(kino --node "kino-node-$i" --flows "$(node_ip "$i"):7404" status 2>&1); then
      echo "kino-node-$i:" >&2
      echo "$out" | sed 's/^/    /' >&2
      failed=1
    fi
  done
  if [ "$failed" = 0 ]; then
    kino node list
  fi
  return "$failed"
}

up() {
  local n=2 routing=tunnel datastore=embedded
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) n=$2; shift 2 ;;
      --routing) routing=$2; shift 2 ;;
      --datastore) datastore=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  case $routing in tunnel | native) ;; *) echo "--routing $routing: use tunnel or native" >&2; exit 2 ;; esac
  case $datastore in embedded | etcd) ;; *) echo "--datastore $datastore: use embedded or etcd" >&2; exit 2 ;; esac
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 50 ]; then
    echo "--nodes $n: give 1 to 50" >&2
    exit 2
  fi
  if [ -z "${KINO_BIN:-}" ]; then
    "$repo/deploy/local/install-deps.sh"
    echo "==> cargo build --release (all binaries)"
    (cd "$repo" && cargo build --release --workspace --bins)
  fi
  down >/dev/null 2>&1 || true
  if ip -o addr show | grep -q ' 198\.18\.0\.' || ip route show 198.18.0.0/24 | grep -q .; then
    echo "this host already uses 198.18.0.0/24 (the cluster's underlay); free it first" >&2
    exit 1
  fi
  umask 077
  mkdir -p "$state" "$logs" "$run"
  chmod 0700 "$state" "$logs"
  echo "$n" >"$run/nodes"

  echo "==> underlay: kino-underlay (bridge kino-br0), kino-services, $n nodes, kino-external"
  ip netns add kino-underlay
  ip -n kino-underlay link add kino-br0 type bridge
  ip -n kino-underlay link set kino-br0 up
  ip -n kino-underlay link set lo up
  ip netns add kino-services
  plug kino-services svc "$services_ip" "$services_ip6"
  ip netns add kino-external
  plug kino-external ext "$external_ip" "$external_ip6"
  for i in $(seq 1 "$n"); do
    ip netns add "kino-node-$i"
    plug "kino-node-$i" "n$i" "$(node_ip "$i")" "$(node_ip6 "$i")"
  done
  # The host's own port on the bridge: its kino reaches the services (198.18.0.0/24 only).
  ip link add kino-uplink type veth peer name host netns kino-underlay
  ip -n kino-underlay link set host master kino-br0 up
  ip addr add "$host_ip/24" dev kino-uplink
  ip link set kino-uplink up

  echo "==> certificates in $pki (services on $services_ip, one per node's agent)"
  "$bin/kino" pki init --pki-dir "$pki" --node kino-node-1 | sed 's/^/    /'
  # Issued every time: they must name the addresses the services are dialled on now.
  for role in datastore-gateway ipam policy-compiler flow-relay; do
    "$bin/kino" pki issue "$role" --pki-dir "$pki" --san "$services_ip,$services_ip6" | sed 's/^/    /'
  done
  for i in $(seq 1 "$n"); do
    "$bin/kino" pki issue agent --pki-dir "$pki" --node "kino-node-$i" --out "agent-kino-node-$i" \
      --san "$(node_ip "$i"),$(node_ip6 "$i")" | sed 's/^/    /'
  done

  echo "==> cluster services in kino-services ($datastore datastore)"
  local backend=(--data-file "$state/datastore.redb")
  if [ "$datastore" = etcd ]; then
    local etcd_url=http://127.0.0.1:2379 etcd_peer=http://127.0.0.1:2380
    start etcd kino-services etcd --name kino-cluster --data-dir "$state/etcd" \
      --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
      --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
      --initial-cluster "kino-cluster=$etcd_peer"
    for _ in $(seq 1 100); do
      if ETCDCTL_API=3 ip netns exec kino-services etcdctl --endpoints "$etcd_url" endpoint health >/dev/null 2>&1; then break; fi
      sleep 0.1
    done
    backend=(--backend etcd --etcd-endpoints "$etcd_url" --etcd-prefix /kino-cluster/)
  fi
  start datastore-gateway kino-services kino-datastore-gateway --listen "$services_ip:7401" "${backend[@]}"
  start ipam kino-services kino-ipam --listen "$services_ip:7402" --datastore "$services_ip:7401"
  start policy-compiler kino-services kino-policy-compiler --listen "$services_ip:7403" --datastore "$services_ip:7401"
  start flow-relay kino-services kino-flow-relay --listen "$services_ip:7405" --datastore "$services_ip:7401"
  echo "==> agents ($routing routing)"
  for i in $(seq 1 "$n"); do
    local node=kino-node-$i
    mkdir -p "/run/kino/$node" "$state/$node"
    start "agent-$node" "$node" kino-agent --node-name "$node" \
      --socket "/run/kino/$node/agent.sock" --state-dir "$state/$node" \
      --datastore "$services_ip:7401" --ipam "$services_ip:7402" --policy "$services_ip:7403" \
      --flow-listen "$(node_ip "$i"):7404" --metrics-address off \
      --routing-mode "$routing" --node-ip "$(node_ip "$i"),$(node_ip6 "$i")" \
      --upstream-tls-ca "$pki/ca.crt" --upstream-tls-cert "$pki/agent-$node.crt" \
      --upstream-tls-key "$pki/agent-$node.key" --tls-client-ca "$pki/ca.crt" \
      --tls-cert "$pki/agent-$node.crt" --tls-key "$pki/agent-$node.key"
  done

  echo "==> waiting for every component to be up"
  for _ in $(seq 1 120); do
    if status >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  if ! status; then
    echo "the cluster is not healthy; logs in $logs/" >&2
    exit 1
  fi
  echo
  echo "Cluster up. For the host's kino: eval \"\$(./deploy/local/cluster.sh env)\"; then e.g."
  echo "  kino node list; kino --node kino-node-1 endpoint list; kino observe"
}

down() {
  shopt -s nullglob
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^kino-cwt-' || true); do
    ip netns del "$ns" && echo "removed walkthrough pod namespace $ns"
  done
  for pidfile in "$run"/*.pid; do
    local name pid
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      echo "stopped $name"
    fi
    rm -f "$pidfile"
  done
  # Deleting a node's namespace takes its devices (lxcs, kino_host, kino_vxlan), routes
  # and nftables table with it; its pins are removed by hand.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^kino-(node-[0-9]+|services|underlay|external)$' || true); do
    ip netns del "$ns" && echo "removed $ns"
  done
  ip link del kino-uplink 2>/dev/null || true
  for pins in /sys/fs/bpf/kino/kino-node-*; do
    rm -rf "$pins" && echo "removed the eBPF pins $pins"
  done
  # The pin root too, unless a single-node suite (up.sh) still has its pins there.
  rmdir /sys/fs/bpf/kino 2>/dev/null || true
  rm -rf /run/kino/kino-node-* "$run"
  rm -rf "$state"/kino-node-* "$state/datastore.redb" "$state/etcd"
}

walkthrough() {
  KINO_BIN="$bin" "$repo/deploy/local/cluster-walkthrough.sh"
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  walkthrough) walkthrough ;;
  *) usage ;;
esac
