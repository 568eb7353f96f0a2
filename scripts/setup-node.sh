#!/usr/bin/env bash
# Everything the real-node tier (armcpu_testing/node.py) needs, on a fresh machine or a warm one,
# as root: Debian's containerd, runc, CNI plugins, iptables and conntrack; kubelet,
# kube-controller-manager and kube-proxy (scripts/build-tools.sh node); armcpu's image and the sandbox
# image (scripts/build-image.sh). Idempotent; prints KEY=VALUE lines saying where everything is.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $(id -u) -ne 0 ]]; then
  echo "setup-node: needs root" >&2
  exit 1
fi
packages=(containerd runc containernetworking-plugins iptables conntrack)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup-node: installing ${missing[*]} from Debian ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's containerd package enables and starts its own daemon on /run/containerd; the node runs
# its own containerd on a socket of its own and leaves that one alone.
tools=$(bash "$repo_root/scripts/build-tools.sh" node | tail -n 1)
echo "ARMCPU_TOOLS_DIR=$tools"
bash "$repo_root/scripts/build-image.sh" | tail -n 4
