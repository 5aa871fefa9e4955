#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end tests against a real Samba
# AD DC + KDC brought up on loopback by deploy/lab/lab.sh (which installs its
# Debian packages when they are missing). The lab is stopped again at the end
# if this script started it; KCDSYNC_KEEP_LAB=1 leaves it running. The two-DC
# lab (lab.sh up --dcs 2) is started by the tests that need it; it is stopped
# at the end too when it was not up before the run (KCDSYNC_KEEP_LAB=1 keeps it).
# The store tests also run on PostgreSQL: deploy/pg/pg.sh brings up a throwaway
# cluster on 127.0.0.1 (installing postgresql when missing), stopped again at
# the end if this script started it; KCDSYNC_KEEP_PG=1 leaves it running.
# RBCD is proven against Samba 4.22's KDC (Debian bookworm-backports, which honours it; 4.17's
# ignores it): deploy/lab/samba422.sh runs it from an isolated root, built here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

lab=deploy/lab/lab.sh
started_lab=0
if ! bash "$lab" status >/dev/null 2>&1; then
    started_lab=1
fi
# Not started here (tests/tests/two_dcs.rs, replication.rs and failover*.rs start it), but
# stopped at the end if a test of this run started it.
started_lab2=0
if ! bash "$lab" status --dcs 2 >/dev/null 2>&1; then
    started_lab2=1
fi
# The Samba 4.22 lab (deploy/lab/samba422.sh), started by tests/tests/samba422.rs: its root is
# built here when missing (downloads Debian packages, ~1 min), and the lab stopped at the end
# when this run started it.
lab422=deploy/lab/samba422.sh
if [[ ! -x ${KCDSYNC_SAMBA422_ROOT:-/var/tmp/samba422-root}/usr/sbin/samba ]]; then
    bash "$lab422" root
fi
started_lab422=0
if ! bash "$lab422" status >/dev/null 2>&1; then
    started_lab422=1
fi
pg=deploy/pg/pg.sh
started_pg=0
if ! bash "$pg" status >/dev/null 2>&1; then
    started_pg=1
fi
log=$(mktemp)
trap 'rm -f "$log"
      [[ $started_lab == 1 && ${KCDSYNC_KEEP_LAB:-0} != 1 ]] && { bash "$lab" down >/dev/null 2>&1 || true; }
      [[ $started_lab2 == 1 && ${KCDSYNC_KEEP_LAB:-0} != 1 ]] && { bash "$lab" down --dcs 2 >/dev/null 2>&1 || true; }
      [[ $started_lab422 == 1 && ${KCDSYNC_KEEP_LAB:-0} != 1 ]] && { bash "$lab422" down --purge >/dev/null 2>&1 || true; }
      [[ $started_pg == 1 && ${KCDSYNC_KEEP_PG:-0} != 1 ]] && { bash "$pg" down >/dev/null 2>&1 || true; }
      true' EXIT
bash "$lab" up
# pg.sh prints the export lines of KCDSYNC_PG_URL / KCDSYNC_PG_ADMIN_URL (they
# hold passwords: kept out of the log). With KCDSYNC_REQUIRE_PG=1 the
# PostgreSQL variants of the store tests fail instead of skipping when the
# cluster cannot be reached.
pg_env=$(bash "$pg" up)
eval "$pg_env"
export KCDSYNC_REQUIRE_PG=1

cargo fmt --all -- --check
# The CLI tests run the real binaries, so build them first.
cargo build --workspace --bins --locked
# The agent runs as a Windows service on Hyper-V hosts: it must cross-build
# (it cannot run here). Skipped with a notice where the target is missing.
if rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu &&
    command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
    cargo build --locked -p kcdsync-agent --target x86_64-pc-windows-gnu
else
    echo "notice: x86_64-pc-windows-gnu target or mingw missing: Windows agent build skipped (.ci/run installs both)" >&2
fi
# Which Samba proves what, said in the log: the suite runs on the system's, RBCD on 4.22's.
echo "Samba: the suite's lab runs $(/usr/sbin/samba --version) (the system's); tests/tests/samba422.rs runs \
$(chroot "${KCDSYNC_SAMBA422_ROOT:-/var/tmp/samba422-root}" samba --version) (bookworm-backports), whose KDC honours RBCD"
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
