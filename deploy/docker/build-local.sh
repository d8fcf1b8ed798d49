#!/usr/bin/env bash
# Build the molt container image without a registry or a daemon: FROM
# scratch, from a molt binary built on this machine and the shared
# libraries `ldd` lists for it, with buildah (vfs storage, chroot
# isolation). The registry build is deploy/docker/Dockerfile.
#
#   deploy/docker/build-local.sh [MOLT_BINARY [IMAGE]]
#
# MOLT_BINARY defaults to $CARGO_TARGET_DIR/release/molt (or target/...);
# CI passes the debug build it already has. IMAGE defaults to
# localhost/molt:local. The image lands in the storage deploy/containers.sh
# sets up; run it with podman after sourcing that file (see deploy/README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
molt="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/molt}"
image="${2:-localhost/molt:local}"
[[ -x "$molt" ]] || { echo "build-local.sh: no molt binary at $molt (cargo build -p molt)" >&2; exit 1; }

# shellcheck source=deploy/containers.sh
source "$repo/deploy/containers.sh"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/etc/molt" "$context/state"
install -d -m 1777 "$rootfs/tmp"

# The binary without its debug sections: the image then holds what runs,
# not a 500 MB debug build (symbols stay, so backtraces keep their names).
objcopy --strip-debug "$molt" "$rootfs/usr/local/bin/molt"
chmod 0755 "$rootfs/usr/local/bin/molt"

# Every shared library the binary loads, at the path the loader looks for
# it, plus the loader itself (the line without "=>").
ldd "$molt" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        cp -L --parents "$lib" "$rootfs/"
    done

# Outbound HTTPS (providers, Fly, Stripe) trusts the platform's roots.
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nmolt:x:65532:65532:molt:/var/lib/molt:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nmolt:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

version="$("$molt" --version | awk '{ print $2 }')"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
buildah bud --quiet --isolation chroot --layers=false \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f "$here/Containerfile.local" -t "$image" "$context" >/dev/null
echo "$image"
