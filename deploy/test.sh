#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end tests against a real Samba
# AD DC + KDC brought up on loopback by deploy/lab/lab.sh (which installs its
# Debian packages when they are missing). The lab is stopped again at the end
# if this script started it; KCDSYNC_KEEP_LAB=1 leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."

lab=deploy/lab/lab.sh
started_lab=0
if ! bash "$lab" status >/dev/null 2>&1; then
    started_lab=1
fi
bash "$lab" up
if [[ $started_lab == 1 && ${KCDSYNC_KEEP_LAB:-0} != 1 ]]; then
    trap 'bash "$lab" down >/dev/null 2>&1 || true' EXIT
fi

cargo fmt --all -- --check
# The CLI tests run the real binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
