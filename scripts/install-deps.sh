#!/usr/bin/env bash
# Installs the Debian packages weft's lab, demo and tests use, when they are missing, and
# cargo-fuzz for the fuzz targets. Needs root (apt-get); does nothing when all are present.
set -euo pipefail

packages=(iproute2 nftables iptables iputils-ping netcat-openbsd iperf3 tcpdump procps
          containernetworking-plugins chromium jq curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ "${1:-}" == "--fuzz" ]] && ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
