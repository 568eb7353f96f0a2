#!/usr/bin/env bash
# Install everything armcpu's tests and demo need, on a fresh machine or a warm one:
# a virtualenv in .venv with armcpu and its test dependencies, and the Kubernetes binaries
# (scripts/build-tools.sh, cached). Idempotent and quiet when there is nothing to do.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python >= 3.11 is required (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.armcpu-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[k8s,kubectl,plot,test]'
  echo "$want" > "$stamp"
fi
# Debian packages the domain hook's tests use, as root: libvirt's schema checker (libvirt-clients,
# and the xmllint it runs, libxml2-utils, which it only recommends) and libvirt itself
# (libvirt-daemon-system; the tests start and stop its daemon). The emulated-KVM tier installs its
# own: scripts/build-arm64-guest.sh.
if { ! command -v virt-xml-validate || ! command -v xmllint || ! command -v libvirtd; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  echo "setup: installing libvirt-clients, libxml2-utils and libvirt-daemon-system from Debian ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libvirt-clients libxml2-utils libvirt-daemon-system >/dev/null
fi
# One QEMU for the libvirt tests and the emulated tier: >= 10 (bookworm's backports on bookworm).
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  bash scripts/debian-qemu.sh
fi
tools=$(bash scripts/build-tools.sh | tail -n 1)
echo "ARMCPU_TOOLS_DIR=$tools"
