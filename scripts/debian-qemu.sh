#!/usr/bin/env bash
# Make sure the build machine's qemu-system-aarch64 is QEMU >= 10 (root, Debian). The emulated-KVM
# tier boots hosts on neoverse-v1 and neoverse-n2, which Debian bookworm's QEMU 7.2 lacks; bookworm's
# backports carry QEMU 10 (the same QEMU trixie ships), so on bookworm this adds that suite (pinned
# low by apt: only packages asked for with -t come from it) and installs qemu-system-arm from it.
# Idempotent: a machine that already has QEMU >= 10 pays nothing. Used by scripts/setup.sh (the
# libvirt tests use the same QEMU) and scripts/build-arm64-guest.sh.
set -euo pipefail
want_major=10
have=$(qemu-system-aarch64 --version 2>/dev/null | grep -Eo 'version [0-9]+' | grep -Eo '[0-9]+' || echo 0)
if ((have >= want_major)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "debian-qemu: need QEMU >= $want_major (found ${have}); install it as root with apt-get" >&2
  exit 1
fi
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
target=()
if [[ $codename == bookworm ]]; then
  list=/etc/apt/sources.list.d/armcpu-bookworm-backports.list
  [[ -f $list ]] || echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
  target=(-t bookworm-backports)
fi
echo "debian-qemu: installing QEMU >= $want_major (qemu-system-arm ${target[*]}) from Debian ..." >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target[@]}" \
  qemu-system-arm qemu-system-data qemu-system-common >/dev/null
qemu-system-aarch64 --version | head -n 1 >&2
