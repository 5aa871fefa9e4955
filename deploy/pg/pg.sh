#!/usr/bin/env bash
# deploy/pg/pg.sh — a throwaway PostgreSQL cluster on loopback for kcdsync's store tests (the
# same store test suite runs on SQLite and on this cluster). Run `pg.sh --help` for the commands.
#
# The cluster listens on 127.0.0.1 only (no other address, no IPv6) and keeps everything in its
# own directory: data, unix socket, log, passwords. Debian's own cluster (`pg_lsclusters`,
# /var/lib/postgresql) is never started, stopped or changed.
set -euo pipefail

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

PG_DIR=${KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg}
PG_DIR=${PG_DIR%/}
PG_PORT=${KCDSYNC_PG_PORT:-55432}
# Parallel `up`/`down` calls on the same directory serialize on this lock.
LOCK_FILE=${KCDSYNC_PG_LOCK:-$PG_DIR.lock}
LOCK_WAIT=${KCDSYNC_PG_LOCK_WAIT:-300}      # seconds a caller waits for another up/down
START_WAIT=${KCDSYNC_PG_START_WAIT:-30}     # seconds postgres gets to accept connections

APP_ROLE=kcdsync          # owns database kcdsync; what the controller (and the tests) log in as
ADMIN_ROLE=kcdsync_admin  # CREATEDB and member of kcdsync: creates/drops per-test databases
APP_DB=kcdsync

# iproute2 (ss) and procps (ps) are not in a minimal Debian; runuser, flock (util-linux), od
# (coreutils) and awk are.
PACKAGES=(postgresql iproute2 procps)
# Commands the script needs besides the server binaries (found by find_bindir).
NEEDED_COMMANDS=(runuser flock ss od ps awk)
PG_BINARIES=(initdb pg_ctl postgres psql)

# Paths inside the directory.
DATA=$PG_DIR/data                  # PGDATA, owned by the cluster user, mode 700
SOCK_DIR=$PG_DIR/run               # unix socket, mode 700: local connections are trusted
LOG_DIR=$PG_DIR/log
PG_LOG=$LOG_DIR/postgres.log
APP_PASS=$PG_DIR/$APP_ROLE.pass      # mode 600
ADMIN_PASS=$PG_DIR/$ADMIN_ROLE.pass  # mode 600
PG_ENV=$PG_DIR/pg.env              # mode 600 (the URLs hold the passwords); written last: its
                                   # presence marks a completed `up`
MARKER=$PG_DIR/.kcdsync-pg         # marks a directory pg.sh may wipe
# postgres runs with the data directory (symlinks resolved) as its working directory.
DATA_REAL=$(readlink -m "$DATA")

PROG=$(basename "$0")

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    cat <<EOF
Usage: $PROG COMMAND

A throwaway PostgreSQL cluster on 127.0.0.1 for kcdsync's store tests (controller/src/store/tests.rs
runs every store test on SQLite and on this cluster). Run as root: the server itself runs as
the 'postgres' system user the Debian package creates (postgres refuses to run as root).
As another user, the server runs as that user and the directory must be writable by it.

Directory: \${KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg} (now: $PG_DIR)
Port:      \${KCDSYNC_PG_PORT:-55432} (now: $PG_PORT), on 127.0.0.1 only; the unix socket is
           in $SOCK_DIR (mode 700).

Commands:
  install       Install Debian's postgresql package when initdb/pg_ctl are missing (they live
                in /usr/lib/postgresql/<version>/bin). Debian's default cluster is not started:
                a temporary /usr/sbin/policy-rc.d answering 101 stops the maintainer scripts
                from starting services. \`up\` does this first; CI calls it on its own.
  up            Start the cluster (idempotent). If it already runs and answers, prints
                "postgres already up". A stopped cluster from an earlier \`up\` (\`down\`, a
                reboot, a kill -9) is restarted with its data: orphaned server processes are
                killed and a stale postmaster.pid removed. Anything else found in the
                directory (a half-finished \`up\`) is stopped and wiped, and a fresh cluster
                made: role $APP_ROLE (random password in $APP_PASS) owning database
                $APP_DB, and role $ADMIN_ROLE (CREATEDB, member of $APP_ROLE; password in
                $ADMIN_PASS) for per-test databases. Writes $PG_ENV (mode 600):
                  export KCDSYNC_PG_URL='postgres://$APP_ROLE:<pw>@127.0.0.1:$PG_PORT/$APP_DB'
                  export KCDSYNC_PG_ADMIN_URL='postgres://$ADMIN_ROLE:<pw>@127.0.0.1:$PG_PORT/postgres'
                and prints those lines on stdout (progress goes to stderr), so either of
                  source $PG_ENV
                  eval "\$($PROG up)"
                sets them. The URLs hold the passwords: keep stdout out of shared logs.
                Concurrent calls serialize on $LOCK_FILE.
  down [--purge]
                Stop the server (pg_ctl stop -m fast; orphans are killed). --purge also removes
                the directory. Idempotent.
  status        Exit 0 and print one line when the server runs and $APP_ROLE can log in over
                TCP with its password; else exit 1 with the reason on stderr.
  env           Print the lines of $PG_ENV (exit 1 when \`up\` has not completed).
  help, --help  This text.

Tests: \`cargo test -p kcdsync-controller --lib store\` runs the PostgreSQL variant of every
store test against this cluster (each test in its own database kcdsync_test_*, dropped at its
end). It reads KCDSYNC_PG_URL/KCDSYNC_PG_ADMIN_URL from the environment, else from
$PG_ENV. Without either, the PostgreSQL variants print a skip note, or fail when
KCDSYNC_REQUIRE_PG=1 (CI sets it).

The cluster is for tests only: fsync and synchronous_commit are off.

Environment: KCDSYNC_PG_DIR, KCDSYNC_PG_PORT, KCDSYNC_PG_LOCK (lock file, default
\$KCDSYNC_PG_DIR.lock), KCDSYNC_PG_LOCK_WAIT (default 300 s), KCDSYNC_PG_START_WAIT (default 30 s).
Exit codes: 0 ok, 1 "no" (status: down), 2 error.
EOF
}

# The server runs as the 'postgres' system user when we are root, else as ourselves.
if ((EUID == 0)); then
    PG_USER=postgres
else
    PG_USER=$(id -un)
fi

# as_pg CMD...: run CMD as the cluster user. Never hands on the lock fd 9 (a postmaster that
# inherited it would hold the lock for as long as it runs).
as_pg() {
    if ((EUID == 0)); then
        runuser -u "$PG_USER" -- "$@" 9>&-
    else
        "$@" 9>&-
    fi
}

# Take the lock on fd 9.
take_lock() {
    exec 9>>"$LOCK_FILE"
    if ! flock -w "$LOCK_WAIT" 9; then
        die "another $PROG holds $LOCK_FILE for more than ${LOCK_WAIT}s"
    fi
}

# A random password: 48 hex digits (no character that needs quoting in a URL, SQL or shell).
gen_password() {
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

# write_secret FILE: a fresh random password, mode 600, no trailing newline.
write_secret() {
    (umask 077; gen_password >"$1")
}

# --------------------------------------------------------------------------------------------
# Packages and binaries
# --------------------------------------------------------------------------------------------

# find_bindir: sets BINDIR to the directory holding initdb/pg_ctl/postgres/psql. Debian keeps
# them in /usr/lib/postgresql/<version>/bin (not on PATH; /usr/bin/psql is a wrapper script):
# an initdb on PATH wins (resolved through symlinks), else the newest Debian version.
find_bindir() {
    local d c
    BINDIR=
    if c=$(command -v initdb 2>/dev/null); then
        d=$(dirname "$(readlink -f "$c")")
        [[ -x $d/pg_ctl && -x $d/postgres && -x $d/psql ]] && BINDIR=$d
    fi
    if [[ -z $BINDIR ]]; then
        d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
        [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres && -x $d/psql ]] && BINDIR=$d
    fi
    [[ -n $BINDIR ]]
}

missing_commands() {
    local c
    find_bindir || echo "initdb/pg_ctl/postgres/psql"
    for c in "${NEEDED_COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || echo "$c"
    done
    if ((EUID == 0)) && ! id -u "$PG_USER" >/dev/null 2>&1; then
        echo "user $PG_USER"
    fi
    return 0
}

# Install the packages when something is missing (fresh CI machines).
ensure_packages() {
    local missing
    mapfile -t missing < <(missing_commands)
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "missing: ${missing[*]}; run as root to install ${PACKAGES[*]}"
    log "missing: ${missing[*]}; installing ${PACKAGES[*]}"
    # Installing postgresql on a machine with an init system would start Debian's default
    # cluster (port 5432). A policy-rc.d that answers 101 stops the maintainer scripts from
    # starting it; an existing policy-rc.d is left as it is.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from kcdsync deploy/pg/pg.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade \
            "${PACKAGES[@]}"
    } 9>&- || rc=$?
    ((added_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get failed (rc $rc)"
    mapfile -t missing < <(missing_commands)
    ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
}

# --------------------------------------------------------------------------------------------
# Process handling
# --------------------------------------------------------------------------------------------

# pid_comm PID: the command name of a live process; fails for no process or a zombie.
pid_comm() {
    local stat
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # /proc/PID/stat is "PID (COMM) STATE ...": COMM may contain spaces, so cut at the last ')'.
    [[ ${stat##*) } != [ZX]* ]] || return 1
    cat "/proc/$1/comm" 2>/dev/null
}

# pid_is_ours PID: a live postgres process of this cluster. Every postgres process (postmaster
# and backends) runs with the data directory as its working directory, which also identifies
# backends orphaned by a kill -9 of the postmaster and guards against a recycled PID.
pid_is_ours() {
    local cwd
    [[ $(pid_comm "$1") == postgres ]] || return 1
    cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
    [[ $cwd == "$DATA_REAL" ]]
}

# All PIDs of this cluster's processes.
cluster_pids() {
    local f pid
    [[ -d $DATA ]] || return 0
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        pid_is_ours "$pid" && echo "$pid"
    done
    return 0
}

# postmaster_pid: the PID in postmaster.pid, if it is a live postgres of this cluster.
postmaster_pid() {
    local pid
    [[ -f $DATA/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9') || return 1
    pid_is_ours "$pid" || return 1
    echo "$pid"
}

# stop_cluster: pg_ctl stop -m fast when a postmaster runs; then TERM/KILL whatever processes of
# this cluster are left (backends orphaned by a kill -9), and remove a stale postmaster.pid so
# the next start does not trip over it.
stop_cluster() {
    local pids pid i
    if postmaster_pid >/dev/null; then
        as_pg "$BINDIR/pg_ctl" stop -D "$DATA" -m fast -w -t 30 >&2 ||
            log "pg_ctl stop failed; killing the cluster's processes"
    fi
    mapfile -t pids < <(cluster_pids)
    if ((${#pids[@]} > 0)); then
        log "stopping leftover postgres processes (pids ${pids[*]})"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            mapfile -t pids < <(for pid in "${pids[@]}"; do pid_is_ours "$pid" && echo "$pid"; done)
            ((${#pids[@]} == 0)) && break
            sleep 0.1
        done
        if ((${#pids[@]} > 0)); then
            log "postgres did not stop in 5 s; KILL ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    # No process of ours runs now: a postmaster.pid or socket lock file left is stale. postgres
    # refuses to start while the PID in either is alive, and that PID may be a zombie (a killed
    # postmaster its parent has not reaped yet) or recycled by an unrelated process.
    local f
    for f in "$DATA/postmaster.pid" "$SOCK_DIR"/.s.PGSQL.*.lock; do
        [[ -f $f ]] || continue
        log "removing stale $f"
        rm -f "$f"
    done
}

# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------

# psql_local ARGS...: psql as the bootstrap superuser over the cluster's own unix socket.
psql_local() {
    as_pg env PGCONNECT_TIMEOUT=5 "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$SOCK_DIR" -p "$PG_PORT" -U postgres "$@"
}

# tcp_login_ok: the app role logs in over TCP on 127.0.0.1 with the stored password (what the
# tests and the controller do).
tcp_login_ok() {
    [[ -f $APP_PASS ]] || return 1
    PGPASSWORD=$(cat "$APP_PASS") PGCONNECT_TIMEOUT=5 \
        "$BINDIR/psql" -X -At -h 127.0.0.1 -p "$PG_PORT" -U "$APP_ROLE" -d "$APP_DB" \
        -c 'SELECT 1' 2>/dev/null 9>&- | grep -qx 1
}

# healthy: our postmaster runs, `up` completed (pg.env is current) and the app role logs in.
healthy() {
    postmaster_pid >/dev/null && [[ -f $PG_ENV ]] && grep -qF "@127.0.0.1:$PG_PORT/" "$PG_ENV" &&
        tcp_login_ok
}

# wait_ready: pg_ctl -w has returned; still wait (bounded) until the TCP login works.
wait_ready() {
    local i
    for ((i = 0; i < START_WAIT * 10; i++)); do
        tcp_login_ok && return 0
        postmaster_pid >/dev/null || break
        sleep 0.1
    done
    return 1
}

# --------------------------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------------------------

# wipe_dir: rm -rf the directory, but only one pg.sh created (it holds the marker) or an empty
# one: KCDSYNC_PG_DIR pointed at $HOME by mistake must not be deleted.
wipe_dir() {
    [[ -e $PG_DIR ]] || return 0
    if [[ ! -e $MARKER && -n $(ls -A "$PG_DIR") ]]; then
        die "$PG_DIR is not a pg.sh directory (no $MARKER); refusing to delete it"
    fi
    rm -rf "$PG_DIR"
}

check_port_free() {
    local busy
    busy=$(ss -Htln 2>/dev/null | awk -v p=":$PG_PORT" 'substr($4, length($4) - length(p) + 1) == p' || true)
    [[ -z $busy ]] || die "port $PG_PORT is in use (another cluster under a different \
KCDSYNC_PG_DIR? set KCDSYNC_PG_PORT):
$busy"
}

# The settings pg.sh owns, rewritten on every start (so a changed KCDSYNC_PG_PORT applies).
write_conf() {
    cat >"$DATA/kcdsync.conf" <<EOF
# Written by deploy/pg/pg.sh on every start; changes here are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK_DIR'
unix_socket_permissions = 0700
# A throwaway test cluster: durability buys nothing here.
fsync = off
synchronous_commit = off
full_page_writes = off
# Test databases live for seconds. An autovacuum worker in one (a superuser process) would make
# the test's DROP DATABASE ... WITH (FORCE), run by $ADMIN_ROLE, fail.
autovacuum = off
max_connections = 200
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    chown "$PG_USER:" "$DATA/kcdsync.conf"
    chmod 600 "$DATA/kcdsync.conf"
}

start_cluster() {
    write_conf
    as_pg "$BINDIR/pg_ctl" start -D "$DATA" -l "$PG_LOG" -w -t "$START_WAIT" >&2 ||
        die "postgres did not start; see $PG_LOG"
}

init_cluster() {
    mkdir -p "$PG_DIR"
    chmod 755 "$PG_DIR"
    echo "kcdsync test PostgreSQL directory, created by deploy/pg/pg.sh; 'pg.sh down --purge' removes it" \
        >"$MARKER"
    mkdir -p "$DATA" "$SOCK_DIR" "$LOG_DIR"
    chmod 700 "$DATA" "$SOCK_DIR" "$LOG_DIR"
    chown "$PG_USER:" "$DATA" "$SOCK_DIR" "$LOG_DIR"
    if ((EUID == 0)) && ! runuser -u "$PG_USER" -- test -w "$DATA"; then
        die "user $PG_USER cannot reach $DATA: every directory above $PG_DIR must be searchable (x) by it"
    fi
    write_secret "$APP_PASS"
    write_secret "$ADMIN_PASS"
    # Local (unix socket) connections are trusted: the socket directory is mode 700, so only the
    # cluster user and root reach it. TCP (127.0.0.1 only) needs a password.
    as_pg "$BINDIR/initdb" -D "$DATA" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$LOG_DIR/initdb.log" 2>&1 ||
        die "initdb failed; see $LOG_DIR/initdb.log"
    cat >"$DATA/pg_hba.conf" <<EOF
# Written by deploy/pg/pg.sh.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
EOF
    printf "\ninclude = 'kcdsync.conf'\n" >>"$DATA/postgresql.conf"
}

create_roles() {
    # Passwords go through stdin, not the command line (ps shows that); they are hex digits, so
    # they need no escaping. The server stores only their SCRAM verifiers.
    psql_local -d postgres <<EOF
CREATE ROLE $APP_ROLE LOGIN PASSWORD '$(cat "$APP_PASS")';
CREATE ROLE $ADMIN_ROLE LOGIN CREATEDB PASSWORD '$(cat "$ADMIN_PASS")';
GRANT $APP_ROLE TO $ADMIN_ROLE;
CREATE DATABASE $APP_DB OWNER $APP_ROLE;
EOF
}

write_env() {
    (
        umask 077
        cat >"$PG_ENV.tmp" <<EOF
# Written by deploy/pg/pg.sh up. Holds passwords: mode 600.
export KCDSYNC_PG_URL='postgres://$APP_ROLE:$(cat "$APP_PASS")@127.0.0.1:$PG_PORT/$APP_DB'
export KCDSYNC_PG_ADMIN_URL='postgres://$ADMIN_ROLE:$(cat "$ADMIN_PASS")@127.0.0.1:$PG_PORT/postgres'
EOF
    )
    mv "$PG_ENV.tmp" "$PG_ENV"
}

print_env() {
    grep '^export ' "$PG_ENV"
}

STARTED=0
up_failed_hint() {
    local rc=$?
    if ((rc != 0 && STARTED)); then
        log "up failed (rc $rc); postgres may still run for debugging (log: $PG_LOG);" \
            "'$PROG down' stops it, '$PROG up' starts over"
    fi
}

# restart_existing: a cluster a completed `up` made, not running now (down, reboot, kill -9):
# start it again with its data. Fails (and leaves it stopped) when it does not come back.
restart_existing() {
    [[ -f $PG_ENV && -f $MARKER && -f $DATA/PG_VERSION && -f $APP_PASS && -f $ADMIN_PASS ]] ||
        return 1
    local major
    major=$("$BINDIR/postgres" --version | awk '{ split($NF, v, "."); print v[1] }')
    if [[ $(cat "$DATA/PG_VERSION") != "$major" ]]; then
        log "cluster in $DATA is PostgreSQL $(cat "$DATA/PG_VERSION"), the binaries are $major"
        return 1
    fi
    log "cluster in $PG_DIR is not running (or not answering): restarting it"
    stop_cluster
    check_port_free
    STARTED=1
    write_conf
    if ! as_pg "$BINDIR/pg_ctl" start -D "$DATA" -l "$PG_LOG" -w -t "$START_WAIT" >&2 ||
        ! wait_ready; then
        log "the existing cluster did not come back (see $PG_LOG)"
        stop_cluster
        return 1
    fi
    write_env
}

cmd_up() {
    local t0
    t0=$(now)
    take_lock
    ensure_packages
    find_bindir
    trap up_failed_hint EXIT
    if healthy; then
        log "postgres already up ($PG_DIR, pid $(postmaster_pid), 127.0.0.1:$PG_PORT)"
        print_env
        return 0
    fi
    if restart_existing; then
        log "postgres up in $(elapsed "$t0") s (restarted): pid $(postmaster_pid), 127.0.0.1:$PG_PORT"
        print_env
        return 0
    fi
    # Anything else is a leftover (half-finished up, unusable cluster): stop it and start over.
    if [[ -e $PG_DIR ]]; then
        log "leftover cluster in $PG_DIR: stopping it and wiping the directory"
        stop_cluster
        wipe_dir
    fi
    case $PG_DIR in
        *"'"* | *'\'* | *' '*) die "KCDSYNC_PG_DIR must not contain quotes, backslashes or spaces" ;;
    esac
    # A unix socket path is limited to 107 bytes.
    ((${#SOCK_DIR} + 20 < 108)) || die "KCDSYNC_PG_DIR is too long for a unix socket path"
    check_port_free
    init_cluster
    STARTED=1
    start_cluster
    create_roles
    write_env
    wait_ready || die "postgres runs but $APP_ROLE cannot log in over TCP; see $PG_LOG"
    log "postgres up in $(elapsed "$t0") s: pid $(postmaster_pid), 127.0.0.1:$PG_PORT, PostgreSQL $(cat "$DATA/PG_VERSION")"
    log "use: source $PG_ENV"
    print_env
}

# --------------------------------------------------------------------------------------------
# down / status / env
# --------------------------------------------------------------------------------------------

cmd_down() {
    local purge=0 t0
    t0=$(now)
    case ${1:-} in
        --purge) purge=1 ;;
        '') ;;
        *) die "down: unknown argument $1" ;;
    esac
    take_lock
    if [[ -d $DATA ]]; then
        find_bindir || die "postgres binaries not found (initdb/pg_ctl); cannot stop $DATA"
        stop_cluster
    fi
    if ((purge)); then
        wipe_dir
        echo "postgres down and removed ($(elapsed "$t0") s)"
    else
        echo "postgres down ($(elapsed "$t0") s); state kept in $PG_DIR (down --purge removes it)"
    fi
}

cmd_status() {
    local pid
    find_bindir || { echo "postgres down: no postgres binaries (run: $PROG install)" >&2; return 1; }
    if ! pid=$(postmaster_pid); then
        echo "postgres down: no running postmaster for $DATA" >&2
        return 1
    fi
    if [[ ! -f $PG_ENV ]]; then
        echo "postgres not ready: pid $pid runs but 'up' did not finish (no $PG_ENV)" >&2
        return 1
    fi
    if ! tcp_login_ok; then
        echo "postgres unhealthy: pid $pid runs but $APP_ROLE cannot log in on 127.0.0.1:$PG_PORT" >&2
        return 1
    fi
    local started
    started=$(ps -o etimes= -p "$pid" | tr -d ' ')
    echo "postgres up: pid $pid, up ${started}s, 127.0.0.1:$PG_PORT, PostgreSQL $(cat "$DATA/PG_VERSION"), dir $PG_DIR"
}

cmd_env() {
    [[ -f $PG_ENV ]] || { echo "no $PG_ENV: run $PROG up" >&2; return 1; }
    print_env
}

# --------------------------------------------------------------------------------------------
main() {
    local cmd=${1:-help}
    case $PG_DIR in
        /*/*) ;;
        *) die "KCDSYNC_PG_DIR must be an absolute path below a top-level directory (got '$PG_DIR')" ;;
    esac
    [[ $PG_PORT =~ ^[0-9]+$ ]] && ((PG_PORT > 0 && PG_PORT < 65536)) ||
        die "KCDSYNC_PG_PORT must be a TCP port number (got '$PG_PORT')"
    (($# > 0)) && shift
    case $cmd in
        up) (($# == 0)) || die "up takes no arguments"; cmd_up ;;
        install) (($# == 0)) || die "install takes no arguments"; ensure_packages ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        env) cmd_env ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

# Run main unless sourced (sourcing lets a test harness call single functions).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
