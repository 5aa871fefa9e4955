#!/usr/bin/env bash
# deploy/lab/samba422.sh — a throwaway one-DC lab running Samba 4.22 (Debian bookworm-backports)
# from an isolated root, beside the shared Samba 4.17 lab and without touching the system's samba.
#
#   samba422.sh root                 build $KCDSYNC_SAMBA422_ROOT (debootstrap bookworm, then samba
#                                    & co from bookworm-backports inside it); downloads Debian
#                                    packages only, never installs anything on the system
#   samba422.sh up | down [--purge] | status | seed [--ou NAME] | kvno SRC USER SPN | exec -- CMD
#                                    lab.sh's one-DC commands, run against the 4.22 DC
#   samba422.sh hostexec -- CMD      CMD with the SYSTEM's tools (MIT kinit/kvno 1.20.1, ldapsearch:
#                                    what the tests run) in the lab's namespace and fence
#
# Tests in the host namespace reach the DC through a forwarder `up` starts (nsfwd.py, as for
# lab.sh's two-DC lab): LDAPS on 127.0.0.1:17636, LDAP 17389, the KDC 17088 and kpasswd 17464
# (TCP). $KCDSYNC_LAB422_DIR/host.env is lab.env with those URLs and a krb5.conf for them.
#
# Environment: KCDSYNC_SAMBA422_ROOT (default /var/tmp/samba422-root; "/" runs the system's samba,
# e.g. a private 4.17 lab for comparisons), KCDSYNC_LAB422_DIR (/var/tmp/kcdsync-lab422),
# KCDSYNC_LAB422_NETNS (/var/tmp/kcdsync-lab422.netns), KCDSYNC_LAB422_LOCK
# (/var/tmp/kcdsync-lab422.lock), KCDSYNC_LAB422_PORT_BASE (17000: host port = base + DC port),
# KCDSYNC_DEBIAN_MIRROR / KCDSYNC_DEBIAN_SECURITY_MIRROR.
#
# How: this script sources lab.sh (which only defines functions when sourced) and reuses its
# one-DC code as is: the provision options, certificate with SANs, krb5.conf, accounts, privilege,
# seed, kvno. Two things differ, both set here, none in lab.sh:
#  - Everything runs inside a network namespace this script creates, holding only `lo`
#    (bind-mounted nsfs file $KCDSYNC_LAB422_NETNS, no holder process): the DC can use
#    127.0.0.1:88/389/636 there while the shared lab holds them on the host, and nothing inside
#    can reach anything but that loopback.
#  - The fence program (lab.sh's FENCE_PROG: private mount namespace, resolv.conf `nameserver
#    127.0.0.1`, hosts, nsswitch) additionally bind-mounts the fence files over the ROOT's /etc,
#    the lab directory and /tmp at the same paths inside the root, mounts /proc there, and
#    `chroot`s: samba, samba-tool, ldbadd, kinit, kvno in the fence are the root's (4.22).
#    Clients lab.sh runs outside the fence (ldapsearch/ldapadd/ldapmodify, klist -k, openssl)
#    are the system's, in the same namespace.
# Why not a mode of lab.sh itself: see deploy/lab/README.md, "Samba 4.22 (bookworm-backports)".
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

S422_HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
S422_ROOT=${KCDSYNC_SAMBA422_ROOT:-/var/tmp/samba422-root}
[[ $S422_ROOT == / ]] || S422_ROOT=${S422_ROOT%/}   # "/" = the system itself (a 4.17 lab
                                                     # in its own namespace, for comparisons)
S422_MIRROR=${KCDSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
S422_SECURITY_MIRROR=${KCDSYNC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
S422_NETNS=${KCDSYNC_LAB422_NETNS:-/var/tmp/kcdsync-lab422.netns}
# Set unconditionally from our own variables: a shell that sourced the shared lab's lab.env has
# KCDSYNC_LAB_DIR pointing at the shared lab, which this script must never touch.
export KCDSYNC_LAB_DIR=${KCDSYNC_LAB422_DIR:-/var/tmp/kcdsync-lab422}
export KCDSYNC_LAB_LOCK=${KCDSYNC_LAB422_LOCK:-/var/tmp/kcdsync-lab422.lock}
# Packages installed in the root (from bookworm-backports where it has them).
S422_PACKAGES=(samba samba-ad-dc samba-ad-provision krb5-user winbind ldb-tools ldap-utils
               smbclient python3-ldap openssl iproute2 procps)

# shellcheck source=deploy/lab/lab.sh
source "$S422_HERE/lab.sh"
PROG=samba422.sh

s422_die() { printf 'samba422.sh: error: %s\n' "$*" >&2; exit 2; }

# --------------------------------------------------------------------------------------------
# The root
# --------------------------------------------------------------------------------------------
s422_build_root() {
    require_root
    local t0 t
    t0=$(now)
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap (the only package this installs on the system)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade debootstrap >/dev/null ||
            s422_die "cannot install debootstrap (apt-get install debootstrap)"
    fi
    if [[ ! -x $S422_ROOT/usr/bin/apt-get ]]; then
        t=$(now)
        debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
            bookworm "$S422_ROOT" "$S422_MIRROR" >"$S422_ROOT.debootstrap.log" 2>&1 ||
            s422_die "debootstrap failed; see $S422_ROOT.debootstrap.log"
        log "debootstrap bookworm: $(elapsed "$t") s"
    fi
    cat >"$S422_ROOT/etc/apt/sources.list" <<EOF
deb $S422_MIRROR bookworm main
deb $S422_MIRROR bookworm-updates main
deb $S422_SECURITY_MIRROR bookworm-security main
deb $S422_MIRROR bookworm-backports main
EOF
    # No init runs in the root, but maintainer scripts must not even try to start a DC.
    printf '#!/bin/sh\n# kcdsync samba422 root: never start services\nexit 101\n' \
        >"$S422_ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$S422_ROOT/usr/sbin/policy-rc.d"
    t=$(now)
    # Host network namespace here (downloads from the mirror), private mount namespace for /proc.
    # shellcheck disable=SC2016
    unshare --mount --propagation private -- bash -c '
        set -e; r=$1; shift
        mount -t proc proc "$r/proc"
        export DEBIAN_FRONTEND=noninteractive
        chroot "$r" apt-get update -q
        chroot "$r" apt-get install -y -q --no-install-recommends -t bookworm-backports "$@"
        chroot "$r" apt-get clean' s422-apt "$S422_ROOT" "${S422_PACKAGES[@]}" \
        >"$S422_ROOT.apt.log" 2>&1 || s422_die "apt-get in $S422_ROOT failed; see $S422_ROOT.apt.log"
    log "apt-get install from bookworm-backports: $(elapsed "$t") s"
    echo "root ready in $(elapsed "$t0") s: $S422_ROOT ($(du -sh "$S422_ROOT" | cut -f1)), $(chroot "$S422_ROOT" samba --version)"
}

# --------------------------------------------------------------------------------------------
# The namespace
# --------------------------------------------------------------------------------------------
s422_netns_up() { [[ -e $S422_NETNS ]] && findmnt -rn "$S422_NETNS" >/dev/null 2>&1; }

s422_make_netns() {
    s422_netns_up && return 0
    touch "$S422_NETNS"
    unshare --net="$S422_NETNS" true || s422_die "unshare --net=$S422_NETNS failed"
    nsenter --net="$S422_NETNS" ip link set lo up
    local ifaces
    ifaces=$(nsenter --net="$S422_NETNS" ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
    [[ $ifaces == 'lo ' ]] || s422_die "namespace $S422_NETNS has interfaces other than lo: $ifaces"
}

s422_remove_netns() {
    if s422_netns_up; then umount "$S422_NETNS" || s422_die "cannot unmount $S422_NETNS"; fi
    rm -f "$S422_NETNS"
}

# --------------------------------------------------------------------------------------------
# Overrides of lab.sh (only in this process; lab.sh is unchanged)
# --------------------------------------------------------------------------------------------
# The system's fence, for `hostexec` (the tests' own kinit/kvno/ldapsearch).
FENCE_PROG_HOST=$FENCE_PROG

# lab.sh's fence plus the chroot. The lab directory and /tmp are bind-mounted at the same paths in
# the root, so every path lab.sh passes (smb.conf, keytabs, krb5.conf, mktemp'd ccaches) is valid
# on both sides. /dev is the root's static one (debootstrap made null, zero, random, urandom...).
# shellcheck disable=SC2016
FENCE_PROG='
set -e
f=$1; shift
r='"$(printf %q "$S422_ROOT")"'
l='"$(printf %q "$LAB_DIR")"'
for n in resolv.conf hosts nsswitch.conf; do
    if [ -e "/etc/$n" ]; then mount --bind "$f/$n" "/etc/$n"; fi
    mount --bind "$f/$n" "$r/etc/$n"
done
for d in /run/nscd /var/run/nscd; do
    if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind "$f/empty" "$d"; fi
done
mkdir -p "$r$l"
mount --bind "$l" "$r$l"
mount --bind /tmp "$r/tmp"
mount -t proc proc "$r/proc"
exec chroot "$r" "$@"'

# Commands the wrapped lab.sh runs: samba's side in the root, the LDAP/TLS clients on the system.
ensure_packages() {
    local c missing=()
    [[ -x $S422_ROOT/usr/sbin/samba ]] || s422_die "no samba in $S422_ROOT (run: $PROG root)"
    for c in samba samba-tool samba_spnupdate ldbadd kinit kvno klist bash setsid; do
        chroot "$S422_ROOT" sh -c "command -v $c" >/dev/null 2>&1 || missing+=("root:$c")
    done
    [[ -d $S422_ROOT$PROVISION_SETUP_DIR ]] || missing+=("root:$PROVISION_SETUP_DIR")
    for c in ldapsearch ldapadd ldapmodify ldapdelete klist openssl unshare flock ss iconv base64 od timeout; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    ((${#missing[@]} == 0)) || s422_die "missing: ${missing[*]} (root: $PROG root; system: lab.sh install)"
}

cmd_hostexec() {
    [[ ${1:-} == -- ]] && shift
    (($# > 0)) || die "hostexec: no command"
    load_env
    exec unshare --mount --propagation private -- bash -c "$FENCE_PROG_HOST" lab-fence "$FENCE_DIR" "$@"
}

# --------------------------------------------------------------------------------------------
# The host side: tests, the controller they start and `kvno` live in the host namespace and reach
# the DC through nsfwd.py (lab.sh's two-DC forwarder): listening on host 127.0.0.1:BASE+PORT,
# connecting to 127.0.0.1:PORT inside the namespace. The DC keeps its address, so its
# certificate (SANs dc1.lab.test, 127.0.0.1) verifies. $LAB_DIR/host.env is lab.env with the
# URLs and krb5.conf of that side; the tests read it (tests/src/lib.rs, Lab::samba422).
# --------------------------------------------------------------------------------------------
S422_PORT_BASE=${KCDSYNC_LAB422_PORT_BASE:-17000}
S422_PORTS=(88 389 464 636)
FWD_PID=$LAB_DIR/nsfwd.pid
FWD_LOG=$LAB_DIR/nsfwd.log
FWD_PY=$LAB_DIR/bin/nsfwd.py
S422_HOST_ENV=$LAB_DIR/host.env

s422_forwarder_up() {
    local specs=() port busy=''
    if ! [[ $S422_PORT_BASE =~ ^[0-9]+$ ]] || ((S422_PORT_BASE < 1024 || S422_PORT_BASE > 60000)); then
        s422_die "KCDSYNC_LAB422_PORT_BASE must be a number in 1024..60000 (got '$S422_PORT_BASE')"
    fi
    fwd_pid >/dev/null && return 0
    for port in "${S422_PORTS[@]}"; do
        specs+=("127.0.0.1:$((S422_PORT_BASE + port))=127.0.0.1:$port")
        if ss -Htln "src 127.0.0.1:$((S422_PORT_BASE + port))" 2>/dev/null | grep -q .; then
            busy+=" 127.0.0.1:$((S422_PORT_BASE + port))"
        fi
    done
    [[ -z $busy ]] || s422_die "ports the 4.22 lab's forwarder needs are in use:$busy (choose another KCDSYNC_LAB422_PORT_BASE)"
    mkdir -p "$LAB_DIR/bin"
    cp "$S422_HERE/nsfwd.py" "$FWD_PY"
    fwd_launch "$S422_NETNS" "${specs[@]}"
}

s422_write_host_env() {
    local p=$S422_PORT_BASE version
    lab2_krb5_conf "$LAB_DIR/host-krb5.conf" "127.0.0.1:$((p + 464))" "127.0.0.1:$((p + 88))"
    version=$(chroot "$S422_ROOT" samba --version)
    {
        cat "$LAB_ENV"
        printf '# The host side (through nsfwd.py), written by samba422.sh up after lab.env:
'
        printf "export KRB5_CONFIG='%s'\n" "$LAB_DIR/host-krb5.conf"
        printf "export LAB_LDAPS_URL='ldaps://127.0.0.1:%s'\n" $((p + 636))
        printf "export LAB_LDAP_URL='ldap://127.0.0.1:%s'\n" $((p + 389))
        printf "export LAB_SAMBA_VERSION='%s'\n" "${version#Version }"
        printf "export LAB_SCRIPT='samba422.sh'\n"
    } >"$S422_HOST_ENV.tmp"
    mv "$S422_HOST_ENV.tmp" "$S422_HOST_ENV"
}

# Under the lab's lock (taken after the DC's own `up`/`down` released it: flock is per open file).
s422_host_side() {
    take_lock
    case $1 in
        up) s422_forwarder_up; s422_write_host_env ;;
        down) lab2_stop_forwarder; rm -f "$S422_HOST_ENV" ;;
        status) fwd_pid >/dev/null || { echo "4.22 lab unhealthy: the forwarder (nsfwd.py) is not running" >&2; return 1; } ;;
    esac
    exec 9>&-
}

# --------------------------------------------------------------------------------------------
s422_inside() {
    local cmd=${1:-help}
    (($# > 0)) && shift
    case $cmd in
        up) ((${#} == 0)) || die "up takes no arguments"; cmd_up ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        seed) cmd_seed "$@" ;;
        kvno) cmd_kvno "$@" ;;
        exec) cmd_exec "$@" ;;
        hostexec) cmd_hostexec "$@" ;;
        *) s422_die "unknown command $cmd" ;;
    esac
}

s422_main() {
    local cmd=${1:-help}
    case $cmd in
        root) s422_build_root; return ;;
        help | -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return ;;
        __inside) shift; s422_inside "$@"; return ;;
    esac
    require_root
    case $cmd in
        up) s422_make_netns ;;
        down | status | seed | kvno | exec | hostexec)
            if ! s422_netns_up; then
                [[ $cmd == down ]] && { echo "4.22 lab down (no namespace $S422_NETNS)"; return 0; }
                [[ $cmd == status ]] && { echo "4.22 lab down (no namespace $S422_NETNS)" >&2; return 1; }
                s422_die "the 4.22 lab is not up (no namespace $S422_NETNS); run: $PROG up"
            fi
            # The forwarder first: it must not outlive the DC it forwards to.
            if [[ $cmd == down ]]; then s422_host_side down; fi ;;
        *) s422_die "unknown command $cmd ($PROG --help)" ;;
    esac
    local rc=0
    nsenter --net="$S422_NETNS" -- "$(readlink -f "${BASH_SOURCE[0]}")" __inside "$@" || rc=$?
    if [[ $rc == 0 && ( $cmd == up || $cmd == status ) ]]; then s422_host_side "$cmd" || rc=$?; fi
    # The namespace goes with the DC: after `down` nothing of the lab runs, nothing is mounted.
    if [[ $cmd == down && $rc == 0 ]]; then s422_remove_netns; fi
    return "$rc"
}

s422_main "$@"
