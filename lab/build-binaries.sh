#!/usr/bin/env bash
# Build kube-apiserver, kubectl, etcd and etcdctl from the official Go modules
# at the versions pinned in lab/versions.env, into a cache outside the repo.
#
# k8s.io/kubernetes cannot be `go install`ed as published: its go.mod replaces
# the k8s.io/* staging modules with local directories.  A throwaway module in
# the cache requires k8s.io/kubernetes and replaces each staging module with
# the published v0.Y.Z of the same release.
#
# Usage: build-binaries.sh            build what is missing, print the bin dir
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache_root="${KUBECRYPT_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubecrypt-lab}"
bin_dir="$cache_root/bin"
mkdir -p "$bin_dir"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[lab-build] %s\n' "$*" >&2; }

build_one() {
  # build_one <workdir> <package> <output>
  local work="$1" pkg="$2" out="$3"
  if [[ -x "$out" ]]; then
    return 0
  fi
  log "building $(basename "$out") from $pkg (this takes several minutes the first time)"
  local start=$SECONDS
  (cd "$work" && go build -trimpath -ldflags "-s -w ${4:-}" -o "$out.partial" "$pkg")
  mv -f "$out.partial" "$out"
  log "built $(basename "$out") in $((SECONDS - start))s"
}

kube_work() {
  local work="$cache_root/src/kubernetes-$KUBERNETES_VERSION"
  if [[ ! -f "$work/go.mod" ]]; then
    mkdir -p "$work"
    local minor="${KUBERNETES_VERSION#v1.}"
    local staging_version="v0.${minor}"
    local mod="$work/go.mod.partial"
    {
      echo "module kubecrypt.invalid/labbuild"
      echo
      echo "go 1.26"
      echo
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      echo
      echo "replace ("
    } >"$mod"
    # Every staging module that k8s.io/kubernetes replaces with a local path.
    (cd "$work" && GOFLAGS='' go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null)
    local kmod
    kmod="$(GOFLAGS='' go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod"
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9./-]*\) => \./staging/.*#\1#p' "$kmod" | while read -r staging; do
      echo "	$staging => $staging $staging_version"
    done >>"$mod"
    echo ")" >>"$mod"
    mv -f "$mod" "$work/go.mod"
  fi
  echo "$work"
}

etcd_work() {
  local work="$cache_root/src/etcd-$ETCD_VERSION"
  if [[ ! -f "$work/go.mod" ]]; then
    mkdir -p "$work/etcd"
    cat >"$work/etcd/main.go" <<'GO'
// Package main runs etcd's own entry point; the lab builds etcd from its Go
// module instead of downloading a release.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
GO
    printf 'module kubecrypt.invalid/etcdbuild\n\ngo 1.26\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 %s\n\tgo.etcd.io/etcd/etcdctl/v3 %s\n)\n' \
      "$ETCD_VERSION" "$ETCD_VERSION" >"$work/go.mod.partial"
    mv -f "$work/go.mod.partial" "$work/go.mod"
  fi
  echo "$work"
}

main() {
  local kv="$KUBERNETES_VERSION" ev="$ETCD_VERSION"
  local ework kwork
  ework="$(etcd_work)"
  build_one "$ework" ./etcd "$bin_dir/etcd-$ev"
  build_one "$ework" go.etcd.io/etcd/etcdctl/v3 "$bin_dir/etcdctl-$ev"
  kwork="$(kube_work)"
  local minor="${kv#v1.}"
  minor="${minor%%.*}"
  # What `kube-apiserver --version` and /version report; release builds stamp
  # the same variables.
  local ldk="-X k8s.io/component-base/version.gitVersion=$kv -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$kv -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  build_one "$kwork" k8s.io/kubernetes/cmd/kube-apiserver "$bin_dir/kube-apiserver-$kv" "$ldk"
  build_one "$kwork" k8s.io/kubernetes/cmd/kubectl "$bin_dir/kubectl-$kv" "$ldk"
  echo "$bin_dir"
}

main "$@"
