#!/usr/bin/env bash
# Stops what ./deploy/local/up.sh started (SIGTERM, then SIGKILL after 10 s) and removes what
# it made in the kernel: pods left by an interrupted walkthrough (kino-wt-* namespaces), the
# endpoints' lxc devices, kino_host/kino_net (with the pod CIDR route), kino_vxlan, the
# agent's routes (proto 202) and nftables table (inet kino), the eBPF pins under
# /sys/fs/bpf/kino/<node>/, and IPv4 and IPv6 forwarding back as they were. Keeps the datastore file,
# the agent's checkpoints (/var/lib/kino: the next agent cleans up after the endpoints
# removed here), the certificates (/var/lib/kino/pki: the next up.sh reuses them) and the logs
# (/var/log/kino).
set -euo pipefail
run=/run/kino
shopt -s nullglob

# Pods an interrupted walkthrough left (deleting a namespace takes its lxc with it).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^kino-wt-' || true); do
  ip netns del "$ns" && echo "removed walkthrough pod namespace $ns"
done
rm -rf "$run/walkthrough"

for pidfile in "$run"/*.pid; do
  name=$(basename "$pidfile" .pid)
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done

# The agent keeps its datapath in the kernel when it exits (so a restart keeps pods
# talking); with the suite down, remove it. Its lxcs carry its tc filters
# (kino_from_container): delete those lxcs, which takes the filters. An agent from before
# tc pinned TCX links named <lxc>-<ifindex>-<program>: delete those lxcs too (only if the
# ifindex still matches).
node=""
if [ -f "$run/node" ]; then node=$(cat "$run/node"); fi
if [ -n "$node" ]; then
  for lxc in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^lxc'); do
    if tc filter show dev "$lxc" ingress 2>/dev/null | grep kino_from_container >/dev/null; then
      ip link del dev "$lxc" && echo "removed $lxc"
    fi
  done
  pins=/sys/fs/bpf/kino/$node
  for pin in "$pins"/links/lxc*; do
    IFS=- read -r lxc ifindex _ <<<"$(basename "$pin")"
    if ip -o link show dev "$lxc" 2>/dev/null | grep "^$ifindex: " >/dev/null; then
      ip link del dev "$lxc" && echo "removed $lxc"
    fi
  done
  if [ -d "$pins" ]; then
    rm -rf "$pins" && echo "removed the eBPF pins $pins"
  fi
  rmdir /sys/fs/bpf/kino 2>/dev/null || true
  rm -f "$run/node"
fi
if ip link show dev kino_host >/dev/null 2>&1; then
  ip link del dev kino_host && echo "removed kino_host and kino_net (and the pod CIDR route)"
fi
# Tunnel mode's device (with its overlay programs), the routes the agent owns (proto 202:
# other nodes' pod CIDRs) and its masquerading table.
if ip link show dev kino_vxlan >/dev/null 2>&1; then
  ip link del dev kino_vxlan && echo "removed kino_vxlan"
fi
for family in -4 -6; do
  ip "$family" route flush proto 202 2>/dev/null || true
done
# Native mode's host routing: kino_from_netdev on the underlay devices' ingress (the
# device stays; only our filter goes).
for dev in $(ls /sys/class/net); do
  tc filter show dev "$dev" ingress 2>/dev/null | grep -q kino_from_netdev || continue
  tc filter show dev "$dev" ingress | awk '/kino_from_netdev/ {
      for (i = 1; i <= NF; i++) { if ($i == "pref") p = $(i+1); if ($i == "handle") h = $(i+1) }
      print p, h }' | while read -r pref handle; do
    tc filter del dev "$dev" ingress pref "$pref" handle "$handle" bpf &&
      echo "removed kino_from_netdev from $dev"
  done
done
if nft list table inet kino >/dev/null 2>&1; then
  nft delete table inet kino && echo "removed the nftables table inet kino (masquerading)"
fi
if [ -f "$run/ip_forward.before" ]; then
  before=$(cat "$run/ip_forward.before")
  if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$before" ]; then
    echo "$before" >/proc/sys/net/ipv4/ip_forward && echo "net.ipv4.ip_forward back to $before"
  fi
  rm -f "$run/ip_forward.before"
fi
if [ -f "$run/ipv6_forwarding.before" ]; then
  before=$(cat "$run/ipv6_forwarding.before")
  if [ "$(cat /proc/sys/net/ipv6/conf/all/forwarding)" != "$before" ]; then
    echo "$before" >/proc/sys/net/ipv6/conf/all/forwarding &&
      echo "net.ipv6.conf.all.forwarding back to $before"
  fi
  rm -f "$run/ipv6_forwarding.before"
fi
