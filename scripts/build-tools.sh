#!/usr/bin/env bash
# Build the real Kubernetes binaries armcpu's tests, demo and benchmarks run against:
# kube-apiserver, kube-scheduler and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm
# (helm.sh/helm/v3), each from the Go module proxy at the exact version pinned in tools/*/go.mod.
# `build-tools.sh node` also builds what a real node runs (kubelet, kube-controller-manager and
# kube-proxy, from the same k8s.io/kubernetes): only the real-node tier needs them.
#
# Binaries are cached in $ARMCPU_TOOLS_DIR (default ~/.cache/armcpu/tools/<pin hash>), so a warm
# machine pays nothing; Go's own module and build caches make a rebuild after a pin change cheap.
# Prints the tools directory on its last line.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_src="$repo_root/tools"

if ! command -v go >/dev/null 2>&1; then
  echo "build-tools: the Go toolchain is required (install Go >= 1.25: it builds kube-apiserver, etcd, kubectl, helm)" >&2
  exit 1
fi

# The cache key covers every pin, so changing a version builds into a new directory.
pin_hash=$(cat "$tools_src"/*/go.mod "$tools_src"/*/go.sum "$0" | sha256sum | cut -c1-12)
tools_dir=${ARMCPU_TOOLS_DIR:-"${XDG_CACHE_HOME:-$HOME/.cache}/armcpu/tools/$pin_hash"}
mkdir -p "$tools_dir"

module_version() {  # module_version DIR MODULE -> the pinned version of MODULE in DIR/go.mod
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

build() {  # build NAME MODULE_DIR PACKAGE [LDFLAGS]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
  if [[ -x "$tools_dir/$name" ]]; then
    return 0
  fi
  local start=$SECONDS tmp
  echo "build-tools: building $name from $pkg ..." >&2
  # a name of its own, renamed into place: a second build running beside this one never sees half a binary
  tmp=$(mktemp "$tools_dir/.$name.XXXXXX")
  if ! (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg"); then
    rm -f "$tmp"
    return 1
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$tools_dir/$name"
  echo "build-tools: $name built in $((SECONDS - start))s" >&2
}

# Two setups at once (two checkouts, CI beside a developer) wait for each other instead of building
# the same binaries twice; the second then finds them built.
exec 9>"$tools_dir/.lock"
flock 9

kube_version=$(module_version "$tools_src/kube" k8s.io/kubernetes)
kube_minor=$(echo "$kube_version" | cut -d. -f2)
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
build kube-apiserver "$tools_src/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kubectl "$tools_src/kube" k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
build kube-scheduler "$tools_src/kube" k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags"

etcd_version=$(module_version "$tools_src/etcd" go.etcd.io/etcd/server/v3)
build etcd "$tools_src/etcd" go.etcd.io/etcd/server/v3 \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}"

if [[ ${1:-} == node ]]; then
  build kubelet "$tools_src/kube" k8s.io/kubernetes/cmd/kubelet "$kube_ldflags"
  build kube-controller-manager "$tools_src/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
  build kube-proxy "$tools_src/kube" k8s.io/kubernetes/cmd/kube-proxy "$kube_ldflags"
fi

helm_version=$(module_version "$tools_src/helm" helm.sh/helm/v3)
build helm "$tools_src/helm" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=${helm_version} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

echo "$tools_dir"
