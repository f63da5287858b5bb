#!/usr/bin/env bash
# Prepares the demo's build inputs in DIR: DIR/manifest.json (a copy of
# manifest.json, whose `oci:layout:demo` is relative to it) and the OCI
# layout DIR/layout with the image `demo`:
# Debian's busybox-static (/bin/busybox, with a symlink per applet) plus the
# scripts under rootfs/. No binary is committed: busybox comes from the
# package at build time. Used by .ci/demo and by image-build/tests/demo.rs.
set -euo pipefail
dir=${1:?usage: prepare.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
[ -x /bin/busybox ] || { echo "busybox-static missing: apt-get install busybox-static" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci missing: apt-get install umoci" >&2; exit 1; }
root=$(mktemp -d)
chmod 755 "$root"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
# One relative symlink per applet (sh, httpd, cat, ...): `busybox --install`
# would point them at the host's own path of busybox (/usr/bin/busybox).
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cp -a "$here/rootfs/." "$root/"
mkdir -p "$dir"
layout=$dir/layout
rm -rf "$layout"
cp "$here/manifest.json" "$dir/manifest.json"
umoci init --layout "$layout"
umoci new --image "$layout:demo"
umoci insert --image "$layout:demo" "$root" /
umoci config --image "$layout:demo" --config.cmd /bin/sh
