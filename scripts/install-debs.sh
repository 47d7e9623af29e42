#!/usr/bin/env bash
# Installs the Debian packages the tests (or, with `bench`, the benchmarks)
# drive, only when one is missing, so a developer's second `make test` costs
# nothing. Needs root or passwordless sudo for the first run.
set -euo pipefail

# prometheus: for promtool, which checks /v1/agent/metrics?format=prometheus.
# chromium: the browser the web UI's tests drive (tests/ui).
packages=(openssl bind9-dnsutils iproute2 procps nftables prometheus chromium)
if [[ "${1:-}" == "bench" ]]; then
    packages+=(serf dnsperf dnsmasq stunnel4 iperf3)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-debs: need root to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "install-debs: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
