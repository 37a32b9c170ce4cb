#!/usr/bin/env bash
# The seed walkthrough (../shared/seed/SEED-summary.md, "checking the NIC <-> Pod mapping") on
# the suite ./deploy/local/up.sh started, printed as a user sees it: every command is echoed
# with "$ " before its real output, and every step is checked (exit status 1 on the first
# check that fails).
#
#   1. create a pod: a network namespace created as a runtime creates it, attached by
#      `kino-cni ADD` exactly as a runtime runs it (the standalone `kubectl run testpod`)
#   2. `kino endpoint list`: an endpoint with the pod's IP
#   3. `kino endpoint get <id>`: its networking names the lxc interface
#   4. `ip link` on the node shows that lxc, with the same ifindex
#   5. a second pod; the two ping each other through the eBPF datapath
#   6. delete the pod (`kino-cni DEL`, then the namespace): the lxc is gone
#
# Only the namespaces created here (kino-wt-*) send or receive traffic: the pings go from one
# walkthrough pod to the other, whose address the node routes to its lxc (checked first).
# Whatever happens, the pods are deleted on exit; ./deploy/local/down.sh also removes any
# kino-wt-* namespace a killed run left. KINO_BIN selects the binaries (target/release).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${KINO_BIN:-$repo/target/release}"
export PATH="$bin:$PATH"
socket="${KINO_AGENT_SOCKET:-/run/kino/agent.sock}"
work=/run/kino/walkthrough
netns_prefix=kino-wt-
mkdir -p "$work"

# The network configuration a runtime hands kino-cni on stdin (one plugin of a conflist).
config="$work/kino.json"
printf '{"cniVersion": "1.1.0", "name": "kino", "type": "kino-cni", "agentSocket": "%s"}\n' \
  "$socket" >"$config"

if [ -t 1 ]; then
  heading() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
  heading() { printf '\n%s\n' "$*"; }
fi
# Echoes a command with "$ " and runs it, its output shown as is.
show() { printf '$ %s\n' "$*"; "$@"; }
fail() {
  printf '\nWALKTHROUGH FAILED: %s\n' "$*" >&2
  exit 1
}
ok() { printf '  \342\234\223 %s\n' "$*"; }

declare -A container_of=() # pod name -> container id, while the pod exists

# Runs kino-cni as a runtime does; stdout is the CNI result (or error JSON).
cni() { # command pod
  local command=$1 pod=$2
  CNI_COMMAND=$command CNI_CONTAINERID=${container_of[$pod]} CNI_NETNS=/run/netns/$netns_prefix$pod \
    CNI_IFNAME=eth0 CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" CNI_PATH=$bin \
    kino-cni <"$config"
}
show_cni() { # command pod
  printf '$ CNI_COMMAND=%s CNI_CONTAINERID=%s CNI_NETNS=/run/netns/%s CNI_IFNAME=eth0 \\\n' \
    "$1" "${container_of[$2]}" "$netns_prefix$2"
  printf "    CNI_ARGS='K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s' CNI_PATH=%s \\\\\n" "$2" "$bin"
  printf '    kino-cni < %s\n' "$config"
}

# Deletes a pod as a runtime does: CNI DEL first, then its namespace.
delete_pod() { # pod [quiet]
  local pod=$1 quiet=${2:-}
  if [ -z "$quiet" ]; then show_cni DEL "$pod"; fi
  local out
  if ! out=$(cni DEL "$pod"); then
    printf '%s\n' "$out"
    return 1
  fi
  if [ -z "$quiet" ]; then
    [ -z "$out" ] || printf '%s\n' "$out"
    show ip netns del "$netns_prefix$pod"
  else
    ip netns del "$netns_prefix$pod"
  fi
  unset "container_of[$pod]"
}

cleanup() {
  local pod
  for pod in "${!container_of[@]}"; do
    delete_pod "$pod" quiet >/dev/null 2>&1 || true
  done
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$netns_prefix" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Creates a pod: a fresh network namespace with lo up (what a runtime's sandbox is), then
# CNI ADD. Sets pod_ip.
create_pod() { # pod
  local pod=$1 ns=$netns_prefix$1
  container_of[$pod]=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  show ip netns add "$ns"
  show ip -n "$ns" link set lo up
  show_cni ADD "$pod"
  local result
  if ! result=$(cni ADD "$pod"); then
    printf '%s\n' "$result"
    fail "kino-cni ADD of $pod failed (agent log: /var/log/kino/agent.log)"
  fi
  printf '%s\n' "$result" | jq -c .
  pod_ip=$(printf '%s' "$result" | jq -r '.ips[0].address // empty' | cut -d/ -f1)
  [ -n "$pod_ip" ] || fail "the ADD result of $pod has no address"
  show ip -n "$ns" -4 addr show dev eth0
  ip -n "$ns" -4 -o addr show dev eth0 | grep "inet $pod_ip/32" >/dev/null ||
    fail "$pod's eth0 does not hold $pod_ip/32"
  ok "pod default/$pod has IP $pod_ip"
}

echo
echo "==> The seed walkthrough: a pod, its endpoint, and the lxc NIC that connects them"

heading "[1/6] Create a pod (a network namespace as a runtime creates it, then kino-cni ADD)"
create_pod testpod
ip1=$pod_ip

heading "[2/6] The agent lists an endpoint with the pod's IP"
show kino endpoint list
id=$(kino -o json endpoint list |
  jq -r --arg ip "$ip1" '.endpoints[] | select(.networking.addressing.ipv4 == $ip) | .id')
[ -n "$id" ] || fail "kino endpoint list shows no endpoint with $ip1"
ok "endpoint $id has $ip1"

heading "[3/6] Its networking names the lxc interface bound to the pod"
show kino endpoint get "$id"
endpoint=$(kino -o json endpoint get "$id")
lxc=$(printf '%s' "$endpoint" | jq -r '.networking.interfaceName')
ifindex=$(printf '%s' "$endpoint" | jq -r '.networking.interfaceIndex')
[[ $lxc == lxc* ]] || fail "endpoint $id names no lxc interface: $lxc"
ok "endpoint $id is bound to $lxc (ifindex $ifindex)"

heading "[4/6] On the node, ip link shows that lxc: the pod <-> NIC mapping is confirmed"
show ip link show dev "$lxc"
ip -o link show dev "$lxc" | grep "^$ifindex: $lxc@" >/dev/null ||
  fail "ip link has no $lxc with ifindex $ifindex"
peer=$(ip netns exec "${netns_prefix}testpod" cat /sys/class/net/eth0/iflink)
[ "$peer" = "$ifindex" ] || fail "testpod's eth0 is paired with ifindex $peer, not $lxc ($ifindex)"
ok "$lxc is ifindex $ifindex, and testpod's eth0 is its peer"
show ip route get "$ip1"
ip route get "$ip1" | grep " dev $lxc " >/dev/null || fail "the node does not route $ip1 to $lxc"
ok "the node routes $ip1 to $lxc (never to an uplink)"

heading "[5/6] A second pod; the two ping each other through the eBPF datapath"
create_pod testpod-2
ip2=$pod_ip
lxc2=$(kino -o json endpoint get "$ip2" | jq -r '.networking.interfaceName')
ip route get "$ip2" | grep " dev $lxc2 " >/dev/null || fail "the node does not route $ip2 to its lxc"
show ip netns exec "${netns_prefix}testpod-2" ping -c 3 -i 0.2 -W 1 "$ip1" ||
  fail "testpod-2 cannot ping testpod"
show ip netns exec "${netns_prefix}testpod" ping -c 3 -i 0.2 -W 1 "$ip2" ||
  fail "testpod cannot ping testpod-2"
printf '$ kino -o json endpoint get %s | jq .counters\n' "$id"
counters=$(kino -o json endpoint get "$id" | jq .counters)
printf '%s\n' "$counters"
sent=$(printf '%s' "$counters" | jq -r '.egressPackets // "0"')
[ "$sent" -gt 0 ] || fail "the datapath counted no packet from testpod"
ok "pings both ways; the eBPF program on $lxc counted $sent packets from testpod"

heading "[6/6] Delete the pod: the lxc interface is gone"
delete_pod testpod || fail "kino-cni DEL of testpod failed"
printf '$ ip link show dev %s\n' "$lxc"
if ip link show dev "$lxc" 2>&1; then fail "$lxc still exists after the pod was deleted"; fi
ok "$lxc is gone"
show kino endpoint list
if kino -o json endpoint list | jq -e --arg ip "$ip1" \
  '.endpoints[] | select(.networking.addressing.ipv4 == $ip)' >/dev/null; then
  fail "kino endpoint list still shows $ip1"
fi
ok "endpoint $id is gone; testpod-2 remains"

echo
echo "Cleaning up: deleting testpod-2 the same way"
delete_pod testpod-2 || fail "kino-cni DEL of testpod-2 failed"
show kino endpoint list
if kino -o json endpoint list | jq -e --arg a "$ip1" --arg b "$ip2" \
  '.endpoints[] | select(.networking.addressing.ipv4 == $a or .networking.addressing.ipv4 == $b)' \
  >/dev/null; then
  fail "endpoints of the walkthrough pods are left"
fi
for l in "$lxc" "$lxc2"; do
  if ip link show dev "$l" >/dev/null 2>&1; then fail "$l is left"; fi
done
ok "no endpoint and no lxc of the walkthrough left"
echo
echo "Walkthrough passed."
