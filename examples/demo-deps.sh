#!/usr/bin/env bash
# make demo's first step: install the Debian packages the demo needs when
# they are missing (as root): the C libraries host-agent links (dqlite,
# with cgo) and Debian's FastAPI for the example.
set -euo pipefail
packages=(gcc libc6-dev pkg-config libdqlite-dev libraft-dev libuv1-dev libsqlite3-dev python3 python3-fastapi python3-uvloop)
missing=()
for p in "${packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "demo: missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "demo: installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
