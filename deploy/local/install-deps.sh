#!/usr/bin/env bash
# Installs what building, running and testing Kinocilium needs on a Debian machine:
# Debian packages (apt), buf (npm, into .tools/) and rotel-agent (PyPI, into .tools/). Safe to
# run again: it installs only what is missing. The Rust toolchain (cargo, stable 1.95) must already be there.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# protobuf-compiler: protoc for the API code generation (and etcd-client's build).
# etcd-server/etcd-client: the etcd backend and its tests. jq, curl: scripts and checks.
# clang-19, libbpf-dev: the agent's eBPF programs (build.rs); bpftool: inspecting them;
# iputils-ping: the datapath's kernel tests ping between pod namespaces.
# podman, runc, busybox-static: the real-runtime test runs busybox containers with kino-cni;
# containernetworking-plugins: the reference bridge/host-local/portmap plugins (benchmark
# baseline, chain partner). python3-pip: installs rotel-agent below.
# iptables (iptables-nft and iptables-legacy), nftables, util-linux (taskset): bench-policy's
# baselines and CPU pinning.
packages=(protobuf-compiler etcd-server etcd-client jq curl pkg-config build-essential iproute2 procps
  clang-19 libbpf-dev bpftool iputils-ping podman runc busybox-static containernetworking-plugins
  python3-pip iptables nftables util-linux)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (stable 1.95) with rustup first" >&2
  exit 1
fi

# buf: lint/breaking checks of proto/ and `buf curl` against the running services.
if [ ! -x "$repo/.tools/node_modules/.bin/buf" ]; then
  echo "==> npm install @bufbuild/buf (into .tools/)"
  mkdir -p "$repo/.tools"
  (cd "$repo/.tools" && npm install --silent --no-audit --no-fund @bufbuild/buf >/dev/null)
fi

# rotel-agent: a small OTLP receiver that prints every span it gets; the trace test
# (integration-tests/tests/tracing.rs) checks a CNI ADD's trace with it. The PyPI wheel carries
# the binary; pip --target keeps it out of every Python environment. Pinned: the test parses
# its printout.
rotel_version=0.0.1a15
if [ ! -x "$repo/.tools/bin/rotel-agent" ] || [ ! -f "$repo/.tools/rotel/.kino-rotel-$rotel_version" ]; then
  echo "==> pip install rotel==$rotel_version (into .tools/)"
  rm -rf "$repo/.tools/rotel"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$repo/.tools/rotel" "rotel==$rotel_version"
  touch "$repo/.tools/rotel/.kino-rotel-$rotel_version"
  mkdir -p "$repo/.tools/bin"
  ln -sfn ../rotel/rotel/rotel-agent "$repo/.tools/bin/rotel-agent"
fi

# grpcio (+ health checking): a stock gRPC client, the one most operators' scripts use, for the
# test that it works on the agent's unix socket (integration-tests/tests/stock_grpc_clients.rs;
# C-core sends the socket path as :authority). Into .tools/python, like rotel; pinned with the
# protobuf runtime it was built against.
grpcio_version=1.85.1
if [ ! -f "$repo/.tools/python/.kino-grpcio-$grpcio_version" ]; then
  echo "==> pip install grpcio==$grpcio_version grpcio-health-checking (into .tools/python)"
  rm -rf "$repo/.tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$repo/.tools/python" "grpcio==$grpcio_version" "grpcio-health-checking==$grpcio_version"
  touch "$repo/.tools/python/.kino-grpcio-$grpcio_version"
fi
