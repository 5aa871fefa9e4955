#!/usr/bin/env bash
# Builds the kcdsync agent's MSI with Debian's wixl (apt-get install wixl msitools).
#   deploy/windows/msi/build.sh EXE VERSION OUT.msi
# EXE: the cross-built kcdsync-agent.exe; VERSION: x.y.z (an MSI ProductVersion:
# major.minor.build, each part at most 255.255.65535). See deploy/windows/README.md.
set -euo pipefail
if [[ $# -ne 3 ]]; then
    echo "usage: $0 EXE VERSION OUT.msi" >&2
    exit 2
fi
exe=$1 version=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
command -v wixl >/dev/null || { echo "wixl is missing: apt-get install wixl msitools" >&2; exit 1; }
[[ -f $exe ]] || { echo "$exe: no such file" >&2; exit 1; }
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "VERSION must be major.minor.build (digits), not $version" >&2
    exit 2
fi
out=$(realpath -m "$out")
# wixl looks a File's Source up relative to the current directory (an absolute path is
# refused): it is built from a staging directory holding the exe under its installed name.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/kcdsync-agent.exe"
(cd "$stage" && wixl -a x64 -D "Version=$version" -D "AgentExe=kcdsync-agent.exe" -o "$out" "$here/kcdsync-agent.wxs")
