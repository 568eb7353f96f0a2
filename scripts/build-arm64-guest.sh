#!/usr/bin/env bash
# Build the emulated arm64 host the KVM tier boots (tests/emulated/, docs/development.md):
# two Debian arm64 kernels with their initramfs (the suite's own, and the newest from its backports:
# KVM's writable ID registers grew a lot between them), and a minimal Debian root filesystem with
# Python 3 and the agent's two third-party modules (PyYAML, prometheus-client), all Debian packages.
#
# debootstrap runs its first stage on the build machine and its second stage (the maintainer
# scripts, update-initramfs among them) under qemu-user through binfmt_misc, which this script
# registers when the machine lacks it. Everything comes from Debian's package mirror; nothing else
# is downloaded. armcpu itself is not baked in: the test tier installs the current wheel into a
# copy of the tree at every run, so a code change never rebuilds the image.
#
# The result is cached in $ARMCPU_GUEST_DIR (default ~/.cache/armcpu/guest/<hash of this script>);
# a warm machine pays nothing. Needs root (debootstrap, binfmt_misc). Prints the directory last.
set -euo pipefail

suite=${ARMCPU_GUEST_SUITE:-trixie}
backports=${ARMCPU_GUEST_BACKPORTS:-$suite-backports}
mirror=${ARMCPU_GUEST_MIRROR:-http://deb.debian.org/debian}
# python3-yaml and python3-prometheus-client: the agent's only imports outside the stdlib.
# kmod: the initramfs loads virtio drivers; e2fsprogs is in minbase already.
packages=linux-image-arm64,initramfs-tools,kmod,python3,python3-yaml,python3-prometheus-client,tar
# Stock QEMU inside the emulated host (`-accel kvm -cpu host`), for the guest-move measurements:
# what a cluster without a SYSREG-capable QEMU does when it migrates (docs/guest-moves.md).
guest_qemu=qemu-system-arm

key=$( (cat "$0"; echo "$suite $backports $mirror $packages $guest_qemu") | sha256sum | cut -c1-12)
guest_dir=${ARMCPU_GUEST_DIR:-"${XDG_CACHE_HOME:-$HOME/.cache}/armcpu/guest/$key"}

if [[ -f "$guest_dir/done" ]]; then
  echo "$guest_dir"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "build-arm64-guest: needs root (debootstrap and binfmt_misc)" >&2
  exit 1
fi

# QEMU >= 10 on the build machine: the hosts include neoverse-v1 and neoverse-n2.
bash "$(dirname "${BASH_SOURCE[0]}")/debian-qemu.sh"
need=()
[[ -x /usr/bin/qemu-aarch64-static ]] || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  echo "build-arm64-guest: installing ${need[*]} from Debian ..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu-user for the second stage: mount binfmt_misc and register aarch64 ELF with the static
# emulator ('F' opens it at registration, so it works inside the chroot).
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/register ]]; then
  mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [[ ! -e $binfmt/qemu-aarch64 ]]; then
  magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  echo ":qemu-aarch64:M::$magic:$mask:/usr/bin/qemu-aarch64-static:OCF" > "$binfmt/register"
fi

start=$SECONDS
work="$guest_dir.tmp"
rm -rf "$work"
mkdir -p "$work"
echo "build-arm64-guest: debootstrap $suite arm64 into $work/rootfs ..." >&2
debootstrap --arch=arm64 --variant=minbase --include="$packages" \
  "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

rootfs="$work/rootfs"
if [[ -n $backports ]]; then
  echo "build-arm64-guest: adding the $backports kernel ..." >&2
  echo "deb $mirror $backports main" > "$rootfs/etc/apt/sources.list.d/backports.list"
  chroot "$rootfs" apt-get update -qq >>"$work/debootstrap.log" 2>&1
  chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t "$backports" linux-image-arm64 >>"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
fi
echo "build-arm64-guest: adding $guest_qemu ..." >&2
chroot "$rootfs" apt-get update -qq >>"$work/debootstrap.log" 2>&1
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  $guest_qemu >>"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}
guest_qemu_version=$(chroot "$rootfs" dpkg-query -W -f '${Version}' qemu-system-arm)
releases=()
for kernel in "$rootfs"/boot/vmlinuz-*; do
  release=${kernel##*/vmlinuz-}
  releases+=("$release")
  cp "$rootfs/boot/vmlinuz-$release" "$work/vmlinuz-$release"
  cp "$rootfs/boot/initrd.img-$release" "$work/initrd.img-$release"
done
# Leave only what the tier needs: no package caches, no docs.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc "$rootfs"/usr/share/man \
  "$rootfs"/usr/share/locale "$rootfs/boot"
# The guest's init: mount the kernel filesystems and the per-run disk, run its run.sh, power off.
# The root filesystem stays read-only; /tmp is a tmpfs.
cat > "$rootfs/sbin/armcpu-tier-init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -o ro /dev/vdb /opt/armcpu || echo "armcpu-tier-init: no payload disk" > /dev/console
if [ -x /opt/armcpu/run.sh ]; then
  /opt/armcpu/run.sh > /dev/console 2>&1
fi
sync
echo o > /proc/sysrq-trigger
sleep 10
INIT
chmod 755 "$rootfs/sbin/armcpu-tier-init"
mkdir -p "$rootfs/opt/armcpu"
python_version=$(ls "$rootfs"/usr/bin/python3.* | grep -Eo 'python3\.[0-9]+$' | sort -V | tail -n 1)
qemu_version=$(qemu-system-aarch64 --version | head -n 1)
kernels=$(printf '"%s",' "${releases[@]}")
cat > "$work/guest.json" <<EOF
{"suite": "$suite", "kernels": [${kernels%,}], "python": "$python_version", "qemu": "$qemu_version", "guest_qemu": "$guest_qemu_version"}
EOF
size_mb=$(( $(du -sm "$rootfs" | cut -f1) * 3 / 2 + 64 ))
mke2fs -q -F -t ext4 -L armcpu-guest -d "$rootfs" "$work/rootfs.ext4" "${size_mb}M"
rm -rf "$rootfs"
echo "build-arm64-guest: built in $((SECONDS - start))s (kernels ${releases[*]}, $python_version)" >&2
rm -rf "$guest_dir"
mv "$work" "$guest_dir"
touch "$guest_dir/done"
echo "$guest_dir"
