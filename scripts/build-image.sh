#!/usr/bin/env bash
# Build armcpu's image from the repo's Dockerfile with buildah, with no registry: the base is a Debian
# root filesystem made here by debootstrap and passed through the Dockerfile's PYTHON_IMAGE argument.
# Also builds the sandbox ("pause") image the real-node tier's containerd runs (armcpu_testing/images).
#
# Needs root (buildah stores images under /var/lib/containers); installs buildah, debootstrap and runc
# from Debian when they are missing. Cached in $ARMCPU_IMAGE_CACHE (default ~/.cache/armcpu/images),
# keyed by the content of everything the image is built from, so a warm machine pays nothing.
# Prints, on its last four lines:
#   ARMCPU_IMAGE=<name>  ARMCPU_IMAGE_ARCHIVE=<docker-archive tar>  ARMCPU_PAUSE_IMAGE=...  ARMCPU_PAUSE_ARCHIVE=...
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
cache=${ARMCPU_IMAGE_CACHE:-"${XDG_CACHE_HOME:-$HOME/.cache}/armcpu/images"}
mirror=${ARMCPU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

if [[ $(id -u) -ne 0 ]]; then
  echo "build-image: needs root (buildah's image store and debootstrap)" >&2
  exit 1
fi
missing=()
for tool in buildah debootstrap runc gcc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "build-image: missing ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
  echo "build-image: installing buildah, debootstrap, runc and gcc from Debian ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    buildah debootstrap runc gcc libc6-dev >/dev/null
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# crun (buildah's default on Debian) refuses this kind of machine's hybrid cgroup layout ("cgroups in
# hybrid mode not supported"); runc runs the RUN steps.
runtime=(--runtime "$(command -v runc)")

# The Python the Dockerfile's default base has (python:3.11.10-... -> 3.11); the wheels in
# requirements/image.lock are built for it, so the Debian base must have the same minor version.
want_python=$(sed -n 's|^ARG PYTHON_IMAGE=.*/python:\([0-9]*\.[0-9]*\)\..*|\1|p' Dockerfile)

# --- the base: Debian's python3 (with venv, and `python` as the Dockerfile calls it) -----------------
base_key=$( { sed -n '/^# --- the base/,/^# --- the base ends/p' "$0"; echo "$mirror $suite"; } | sha256sum | cut -c1-12)
base_image=localhost/armcpu-base:$base_key
base_tar=$cache/base-$base_key.tar
if ! buildah inspect --type image "$base_image" >/dev/null 2>&1; then
  if [[ ! -f $base_tar ]]; then
    start=$SECONDS
    echo "build-image: debootstrap $suite from $mirror ..." >&2
    root=$(mktemp -d "$cache/.root.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    got_python=$(chroot "$root" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ $got_python != "$want_python" ]]; then
      echo "build-image: Debian $suite has Python $got_python; the Dockerfile's wheels want $want_python" >&2
      exit 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
    tar --numeric-owner -C "$root" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$root"
    trap - EXIT
    echo "build-image: base root filesystem made in $((SECONDS - start))s" >&2
  fi
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$base_tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh "$container"
  buildah commit --quiet --rm "$container" "$base_image" >/dev/null
fi
# --- the base ends ---------------------------------------------------------------------------------

# --- armcpu's image: everything the Dockerfile copies, and the Dockerfile itself ---------------------
image_key=$( { echo "$base_key"; cat Dockerfile .dockerignore;
  find requirements pyproject.toml README.md LICENSES armcpu armcpu_cli armcpu_k8s node_agent operator \
    -type f ! -path '*/__pycache__/*' ! -name '*.egg-info' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-12)
image=localhost/armcpu:dev-$image_key
image_tar=$cache/armcpu-$image_key.tar
if [[ ! -f $image_tar ]]; then
  start=$SECONDS
  echo "build-image: building $image from the Dockerfile ..." >&2
  # The build reaches PyPI with this machine's pip configuration and trust store (a proxy's CA, say),
  # mounted into the RUN steps only: nothing of them is in a layer.
  mounts=()
  [[ -f /etc/pip.conf ]] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  [[ -d /etc/ssl/certs ]] && mounts+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
  buildah bud --quiet "${runtime[@]}" --network host --layers=false --pull=never "${mounts[@]}" \
    --build-arg "PYTHON_IMAGE=$base_image" -t "$image" . >"$cache/build.log" 2>&1 \
    || { tail -40 "$cache/build.log" >&2; exit 1; }
  buildah push --quiet "$image" "docker-archive:$image_tar.tmp:$image" >/dev/null
  mv "$image_tar.tmp" "$image_tar"
  find "$cache" -maxdepth 1 -name 'armcpu-*.tar' ! -name "armcpu-$image_key.tar" -delete
  echo "build-image: $image built in $((SECONDS - start))s" >&2
fi

# --- the sandbox image: armcpu_testing/images/pause.c, static, in a scratch image --------------------
pause_key=$(cat armcpu_testing/images/pause.c "$0" | sha256sum | cut -c1-12)
pause_image=localhost/armcpu-pause:$pause_key
pause_tar=$cache/pause-$pause_key.tar
if [[ ! -f $pause_tar ]]; then
  work=$(mktemp -d)
  gcc -static -Os -Wall -Wextra -Werror -o "$work/pause" armcpu_testing/images/pause.c
  container=$(buildah from scratch)
  buildah copy --quiet "$container" "$work/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$container"
  buildah commit --quiet --rm "$container" "$pause_image" >/dev/null
  buildah push --quiet "$pause_image" "docker-archive:$pause_tar.tmp:$pause_image" >/dev/null
  mv "$pause_tar.tmp" "$pause_tar"
  rm -rf "$work"
fi

echo "ARMCPU_IMAGE=$image"
echo "ARMCPU_IMAGE_ARCHIVE=$image_tar"
echo "ARMCPU_PAUSE_IMAGE=$pause_image"
echo "ARMCPU_PAUSE_ARCHIVE=$pause_tar"
