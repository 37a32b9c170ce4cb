#!/usr/bin/env bash
# The cross-node walkthrough on the cluster ./deploy/local/cluster.sh up started, printed as a
# user sees it (every command echoed with "$ " before its real output) and checked (exit 1 on
# the first check that fails):
#
#   1. a pod on each node, attached by `kino-cni ADD` with that node's agentSocket, exactly as
#      a runtime on that node runs it
#   2. `kino --node <node> endpoint list` on each node: its pod, with its address
#   3. every pod pings every other pod (IPv4 and IPv6) and opens a TCP connection to it
#   4. `kino observe` through the flow relay: every node's flows, merged; --node narrows
#   5. `kino node list`: every node, live, with its routing mode and underlay address
#   6. a service (with 2+ nodes): a tiny HTTP server in the pods of nodes 1 and 2 (node 1
#      only on a 2-node cluster), `kino service create web --frontend 172.20.0.10:80/tcp
#      --backend …`, `kino service list`, `kino bpf lb list` on the client's node, curl from
#      the pod of the last node through the VIP (every backend answers), the translation in
#      `kino observe --type sock-lb`, `kino service delete`: the VIP answers no more
#   7. the pods are deleted (`kino-cni DEL`, then the namespace): their lxcs are gone
#
# Only the namespaces created here (kino-cwt-*) send or receive traffic. Whatever happens,
# the pods are deleted on exit; `cluster.sh down` also removes any a killed run left.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${KINO_BIN:-$repo/target/release}"
eval "$("$repo/deploy/local/cluster.sh" env)"
export PATH="$bin:$PATH"
nodes=$(cat /run/kino/cluster/nodes 2>/dev/null || echo 0)
[ "$nodes" -ge 1 ] || { echo "no cluster: run ./deploy/local/cluster.sh up first" >&2; exit 1; }
work=/run/kino/cluster/walkthrough
mkdir -p "$work"

heading() { printf '\n%s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
fail() {
  printf '\nCLUSTER WALKTHROUGH FAILED: %s\n' "$*" >&2
  exit 1
}
ok() { printf '  \342\234\223 %s\n' "$*"; }

cni() { # command node-index
  local command=$1 i=$2
  printf '{"cniVersion": "1.1.0", "name": "kino", "type": "kino-cni", "agentSocket": "/run/kino/kino-node-%s/agent.sock"}\n' \
    "$i" >"$work/kino-$i.json"
  CNI_COMMAND=$command CNI_CONTAINERID="cwt-pod-$i" CNI_NETNS="/run/netns/kino-cwt-$i" \
    CNI_IFNAME=eth0 CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-$i" CNI_PATH=$bin \
    kino-cni <"$work/kino-$i.json"
}

declare -a servers=()
service_created=""
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$service_created" ]; then kino service delete web >/dev/null 2>&1 || true; fi
  for i in $(seq 1 "$nodes"); do
    if ip netns list | grep -q "^kino-cwt-$i\b"; then
      cni DEL "$i" >/dev/null 2>&1 || true
      ip netns del "kino-cwt-$i" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT

declare -a ip4 ip6
heading "1. a pod on each node (kino-cni ADD with that node's agent socket)"
for i in $(seq 1 "$nodes"); do
  ip netns add "kino-cwt-$i"
  ip -n "kino-cwt-$i" link set lo up
  printf '$ CNI_COMMAND=ADD CNI_NETNS=/run/netns/kino-cwt-%s ... kino-cni < %s\n' "$i" "$work/kino-$i.json"
  result=$(cni ADD "$i") || fail "ADD of pod-$i on kino-node-$i: $result"
  ip4[i]=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print([a["address"].split("/")[0] for a in r["ips"] if ":" not in a["address"]][0])' <<<"$result")
  ip6[i]=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(next((a["address"].split("/")[0] for a in r["ips"] if ":" in a["address"]), ""))' <<<"$result")
  ok "pod-$i on kino-node-$i: ${ip4[i]} ${ip6[i]}"
done

heading "2. each node's endpoints"
for i in $(seq 1 "$nodes"); do
  out=$(show kino --node "kino-node-$i" endpoint list)
  printf '%s\n' "$out"
  grep -q "${ip4[i]}" <<<"$out" || fail "kino-node-$i does not list pod-$i (${ip4[i]})"
  ok "kino-node-$i lists pod-$i"
done

heading "3. every pod reaches every other pod across the nodes (ping, TCP)"
for i in $(seq 1 "$nodes"); do
  # A TCP listener in each pod that answers with its pod name.
  ip netns exec "kino-cwt-$i" python3 -c "
import socket, threading
def serve(family, addr):
    s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b'pod-$i'); c.close()
threads = [threading.Thread(target=serve, args=(socket.AF_INET, '0.0.0.0'), daemon=True)]
if '${ip6[i]}': threads.append(threading.Thread(target=serve, args=(socket.AF_INET6, '::'), daemon=True))
[t.start() for t in threads]
import time; time.sleep(300)
" >/dev/null 2>&1 &
  servers+=($!)
done
sleep 0.5
for i in $(seq 1 "$nodes"); do
  for j in $(seq 1 "$nodes"); do
    [ "$i" = "$j" ] && continue
    for dst in "${ip4[j]}" "${ip6[j]}"; do
      [ -n "$dst" ] || continue
      ip netns exec "kino-cwt-$i" ping -c 1 -W 5 "$dst" >/dev/null ||
        fail "pod-$i (kino-node-$i) cannot ping pod-$j ($dst, kino-node-$j)"
      got=$(ip netns exec "kino-cwt-$i" python3 -c "
import socket; c = socket.create_connection(('$dst', 8080), timeout=5); print(c.recv(64).decode())") ||
        fail "pod-$i cannot open TCP to pod-$j ($dst:8080)"
      [ "$got" = "pod-$j" ] || fail "TCP to $dst:8080 answered '$got', not pod-$j"
      ok "pod-$i → pod-$j ($dst): ping and TCP"
    done
  done
done

heading "4. the cluster's flows, through the relay (KINO_FLOW=$KINO_FLOW)"
show kino observe --last 6
out=$(kino observe --last 1000 -o json)
for i in $(seq 1 "$nodes"); do
  seen=$(grep -c "\"nodeName\":\"kino-node-$i\"" <<<"$out" || true)
  [ "$seen" -gt 0 ] || fail "the relay shows no flow of kino-node-$i"
  ok "$seen of the last 1000 flows come from kino-node-$i"
done
out=$(kino --node kino-node-1 observe --last 1000 -o json)
echo "\$ kino --node kino-node-1 observe --last 1000 -o json   # observed by kino-node-1 only?"
if [ "$nodes" -gt 1 ] && grep -q "\"nodeName\":\"kino-node-2\",\"policyMatchType" <<<"$out"; then
  fail "--node kino-node-1 still shows flows kino-node-2 observed"
fi
ok "--node kino-node-1 shows only the flows kino-node-1 observed"

heading "5. the nodes"
out=$(show kino node list)
printf '%s\n' "$out"
for i in $(seq 1 "$nodes"); do
  grep -E "^kino-node-$i +live" <<<"$out" >/dev/null || fail "kino-node-$i is not live in kino node list"
done
ok "every node is live"

heading "6. a service: load-balanced in eBPF at the client's socket, backends on other nodes"
if [ "$nodes" -lt 2 ]; then
  ok "skipped: a service across nodes needs 2 nodes or more (cluster.sh up --nodes 3)"
else
  vip=172.20.0.10
  client=$nodes
  backends=(1 2)
  [ "$nodes" -ge 3 ] || backends=(1)
  backend_flags=()
  for i in "${backends[@]}"; do
    # A tiny HTTP server answering every GET with its pod's name.
    ip netns exec "kino-cwt-$i" python3 -c "
import http.server
class Name(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'pod-$i\\n'
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8081), Name).serve_forever()
" >/dev/null 2>&1 &
    servers+=($!)
    backend_flags+=(--backend "${ip4[i]}:8081")
  done
  # A backend that is not listening yet answers a connect with a reset: wait for both.
  for i in "${backends[@]}"; do
    for _ in $(seq 1 100); do
      ip netns exec "kino-cwt-$i" ss -Hltn 'sport = :8081' | grep -q . && break
      sleep 0.1
    done
    ip netns exec "kino-cwt-$i" ss -Hltn 'sport = :8081' | grep -q . ||
      fail "the HTTP server in pod-$i does not listen on :8081"
  done
  show kino service create web --frontend "$vip:80/tcp" "${backend_flags[@]}" ||
    fail "kino service create web"
  service_created=1
  show kino service list
  # Every agent follows the Service record; wait until the client's node has it in its maps.
  for _ in $(seq 1 100); do
    out=$(kino --node "kino-node-$client" bpf lb list) && grep -q "^$vip:80/TCP" <<<"$out" && break
    sleep 0.1
  done
  show kino --node "kino-node-$client" bpf lb list
  declare -A answered=()
  echo "\$ ip netns exec kino-cwt-$client curl -s http://$vip/   # 20 times"
  for _ in $(seq 1 20); do
    got=$(ip netns exec "kino-cwt-$client" curl -sS --max-time 5 "http://$vip/") ||
      fail "pod-$client (kino-node-$client) cannot reach the service at http://$vip/"
    printf '%s\n' "$got"
    answered[$got]=1
  done
  for i in "${backends[@]}"; do
    [ -n "${answered[pod-$i]:-}" ] || fail "20 requests to $vip never reached pod-$i (kino-node-$i)"
    ok "pod-$i on kino-node-$i answered through $vip"
  done
  show kino --node "kino-node-$client" observe --type sock-lb --last 3
  out=$(kino --node "kino-node-$client" observe --type sock-lb --last 20) || fail "kino observe --type sock-lb"
  grep -q "(svc default/web) =>" <<<"$out" ||
    fail "kino-node-$client's flows do not show the translations to default/web"
  ok "kino-node-$client's flows show each connect translated: (svc default/web) => backend"
  show kino service delete web || fail "kino service delete web"
  service_created=""
  gone=""
  for _ in $(seq 1 100); do
    if ! ip netns exec "kino-cwt-$client" curl -s --max-time 1 "http://$vip/" >/dev/null 2>&1; then
      gone=1
      break
    fi
    sleep 0.1
  done
  [ -n "$gone" ] || fail "$vip still answers after kino service delete web"
  ok "deleted: $vip answers no more (the node routes the service CIDR as unreachable)"
fi

heading "7. delete the pods"
for i in $(seq 1 "$nodes"); do
  out=$(cni DEL "$i") || fail "DEL of pod-$i: $out"
  ip netns del "kino-cwt-$i"
  if ip -n "kino-node-$i" -o link show | grep -q ': lxc'; then
    fail "kino-node-$i still has an lxc after its pod was deleted"
  fi
  ok "pod-$i deleted; kino-node-$i has no lxc left"
done
echo
echo "Cluster walkthrough passed."
