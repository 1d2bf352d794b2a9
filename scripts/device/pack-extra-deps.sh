#!/bin/bash
# Adds to .devdeps/ the Debian packages the engine needs beyond the shared pack-deps.sh set
# (spdlog for logging, Random123 for counter-based initialisation), for GPU hosts without a
# package archive. Run after ../shared/device/pack-deps.sh, from the project root.
set -euo pipefail
pkgs=(libspdlog-dev libspdlog1.10 librandom123-dev)
root=$(git rev-parse --show-toplevel)
cd "$root"
[[ -d .devdeps ]] || { echo "pack-extra-deps: .devdeps/ missing; run pack-deps.sh first" >&2; exit 1; }
tmp=$(mktemp -d)
chmod 777 "$tmp"
if ! (cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null)
fi
for f in "$tmp"/*.deb; do dpkg -x "$f" .devdeps; done
rm -rf "$tmp" .devdeps/usr/share/doc .devdeps/usr/share/man
echo "added ${#pkgs[@]} packages to .devdeps/ ($(du -sh .devdeps | cut -f1))"
