#!/usr/bin/env bash
# deploy/lab/lab.sh — a real Active Directory (Samba AD DC + its Heimdal KDC) on loopback, for
# kcdsync's integration tests. Run `lab.sh --help` for the commands.
#
# HARD RULE (see LAB-NOTES): the lab stays on loopback. Samba only runs the services listed in
# SERVER_SERVICES (no dnsupdate/nbt/wrepl/ntp_signd), binds only to `lo`, and every samba or
# Kerberos tool runs inside a "fence": a private mount namespace where /etc/resolv.conf says
# `nameserver 127.0.0.1` and /etc/hosts maps dc1.lab.test to 127.0.0.1, so nothing can ask the
# machine's real resolver (which is off-box) anything.
#
# TWO DCs (`up --dcs 2`, opt-in, its own directory and lock; deploy/lab/README.md has the
# figures): dc1 (127.0.0.1) and dc2 (127.0.0.2, joined) run in a network namespace this script
# creates, holding only `lo` (127.0.0.2/8 added): the fence above, plus no route anywhere, and
# the host's DC ports stay free for the shared lab. Tests in the host namespace reach the DCs
# through nsfwd.py, one process that listens on host loopback (127.0.0.N:16000+port for DC N's
# 88, 389, 464, 636) and connects inside the namespace. Why a forwarder and not `nsenter` for the
# clients: the code under test (the controller, which also serves agents and kcdctl over gRPC)
# would have to run inside with everything that talks to it; a forwarder keeps every test as it
# is, costs a few ms per new connection, and each DC keeps its own address (honest certificates).
set -euo pipefail

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

LAB_DIR=${KCDSYNC_LAB_DIR:-/var/tmp/kcdsync-lab}
LAB_DIR=${LAB_DIR%/}
# One lock for the whole machine, not per lab dir: the DC's ports (88, 389, 636, 445...) are
# machine-wide, so two labs can never run at once whatever their directories.
LOCK_FILE=${KCDSYNC_LAB_LOCK:-/var/tmp/kcdsync-lab.lock}
LOCK_WAIT=${KCDSYNC_LAB_LOCK_WAIT:-600}     # seconds a caller waits for another up/seed/down
START_WAIT=${KCDSYNC_LAB_START_WAIT:-30}    # seconds samba gets to answer LDAPS

REALM=LAB.TEST
DOMAIN=LAB
DNS_DOMAIN=lab.test
DC_HOST=dc1
BASE_DN=DC=lab,DC=test
FLEET_OU="OU=Hyper-V,$BASE_DN"
USERS_CN="CN=Users,$BASE_DN"
ADMIN_DN="CN=Administrator,$USERS_CN"
SVC_USER=kcdsync-svc
NOPRIV_USER=kcdsync-nopriv
SVC_DN="CN=$SVC_USER,$USERS_CN"
NOPRIV_DN="CN=$NOPRIV_USER,$USERS_CN"
LDAPS_URL=ldaps://127.0.0.1:636
LDAP_URL=ldap://127.0.0.1:389
MIGRATION_SVC="Microsoft Virtual System Migration Service"

# No dnsupdate (would send DNS updates to the off-box resolver), nbt/wrepl (NetBIOS broadcasts),
# ntp_signd, dns. What is left is what an LDAP + Kerberos client needs.
SERVER_SERVICES="s3fs, rpc, ldap, cldap, kdc, drepl, winbindd, kcc"

# Packages the lab needs, and one command from each to detect a fresh machine.
# samba-ad-provision (the provision templates) is only a Recommends of samba; recommends are
# otherwise skipped because libnss-winbind/libpam-winbind would edit the machine's nsswitch/PAM.
PACKAGES=(samba samba-ad-dc samba-ad-provision krb5-user winbind ldb-tools ldap-utils smbclient
          openssl util-linux iproute2 libc-bin procps)
NEEDED_COMMANDS=(samba samba-tool samba_spnupdate winbindd ldbadd ldbsearch ldapadd ldapmodify
                 ldapsearch ldapdelete kinit kvno klist smbclient openssl unshare
                 flock ss iconv base64 od timeout)
PROVISION_SETUP_DIR=/usr/share/samba/setup   # from samba-ad-provision

# Paths inside the lab directory (LAB-NOTES: keep all samba state out of /var/lib, /run, /var/log).
SMB_CONF=$LAB_DIR/etc/smb.conf
PID_FILE=$LAB_DIR/samba.pid          # samba's own PID, written by the process that becomes samba
RUN_DIR=$LAB_DIR/run                 # samba's pid directory, ncalrpc, winbindd/ntp_signd sockets
FENCE_DIR=$LAB_DIR/fence             # resolv.conf/hosts/nsswitch.conf bind-mounted in the fence
TLS_DIR=$LAB_DIR/tls
CA_PEM=$LAB_DIR/ca.pem
KRB5_CONF=$LAB_DIR/krb5.conf
LAB_ENV=$LAB_DIR/lab.env             # written last: its presence marks a completed `up`
KEYTAB_DIR=$LAB_DIR/keytabs
SAMBA_LOG=$LAB_DIR/samba.log
MARKER=$LAB_DIR/.kcdsync-lab         # marks a directory lab.sh may wipe

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
Usage: $PROG COMMAND [ARGS]

A Samba Active Directory domain controller on loopback for kcdsync's integration tests.
Realm $REALM, NetBIOS domain $DOMAIN, DC $DC_HOST.$DNS_DOMAIN, base DN $BASE_DN.
Lab directory: \${KCDSYNC_LAB_DIR:-/var/tmp/kcdsync-lab} (now: $LAB_DIR). Must run as root.

Commands:
  up               Start the lab (idempotent). If a healthy lab runs, prints "lab already up".
                   A leftover lab (dead samba, half-finished up) is stopped by PID, its
                   directory wiped, and a fresh domain provisioned: CA + server certificate,
                   DC, $FLEET_OU,
                   users $SVC_USER (full control on the OU + SeEnableDelegationPrivilege) and
                   $NOPRIV_USER (full control, no privilege). Concurrent calls serialize on
                   $LOCK_FILE; the later ones find the lab up. Installs the packages when a
                   needed command is missing (apt-get). Then: source \$KCDSYNC_LAB_DIR/lab.env
  install          Install the Debian packages the lab needs, if any command is missing
                   (what \`up\` does first; CI calls it on its own).
  install --samba backports
                   Build the Samba 4.22 root (Debian bookworm-backports) that
                   deploy/lab/samba422.sh runs a DC from, beside the system's samba, which it
                   leaves alone (\`samba422.sh root\`; downloads Debian packages, installs only
                   debootstrap). Its KDC honours RBCD; see deploy/lab/README.md.
  down [--purge]   Stop samba by its PID (TERM, up to 10 s, then KILL). --purge also removes
                   the lab directory. Idempotent.
  status           Exit 0 and print one line when the lab is up and answers LDAPS; else exit 1.
  seed [--ou NAME] (Re)create the demo fleet in OU=NAME,$FLEET_OU (default NAME=demo):
                   Hyper-V hosts HV01..HV04 and file server FS01 with HOST/, cifs/ and
                   migration-service SPNs, keytabs in \$KCDSYNC_LAB_DIR/keytabs/hv0N.keytab,
                   and the BROKEN delegation kcdsync repairs: every HVn delegates to the other
                   hosts' migration+cifs SPNs and FS01's cifs SPNs, but "Kerberos only" (no
                   TRUSTED_TO_AUTH_FOR_DELEGATION 0x1000000); HV01 also lists HTTP/web01.$DNS_DOMAIN.
                   Users alice (normal), bob (sensitive, NOT_DELEGATED), carol (disabled).
  kvno SRC USER SPN
                   Ask the KDC for S4U2Self+S4U2Proxy: as SRC\$ (keytab of HV0N), get a ticket
                   to SPN on behalf of USER. Prints GRANTED (exit 0) or "REFUSED: <why>" (exit 1).
                   Example: $PROG kvno HV01 alice cifs/hv02.$DNS_DOMAIN
  exec -- CMD [ARGS...]
                   Run CMD inside the loopback fence (private mount namespace with the lab's
                   resolv.conf/hosts) with KRB5_CONFIG and the lab.env variables set.
                   Example: $PROG exec -- kinit -k -t \$KCDSYNC_LAB_DIR/keytabs/hv01.keytab 'HV01\$'
  help, --help     This text.

Two DCs (opt-in, for the tests that need them; its own directory and lock, beside the shared lab):
  up --dcs 2       dc1.$DNS_DOMAIN (127.0.0.1) + dc2.$DNS_DOMAIN (127.0.0.2) joined to it, replicating
                   both ways, in a network namespace holding only lo. Idempotent, ~20 s.
                   Directory \${KCDSYNC_LAB2_DIR:-/var/tmp/kcdsync-lab2}; tests reach the DCs through
                   a forwarder on host loopback: 127.0.0.N:\$((KCDSYNC_LAB2_PORT_BASE+PORT)) (base 16000)
                   for PORT 88, 389, 464, 636 of DC N. Then: source \$KCDSYNC_LAB2_DIR/lab.env
  status --dcs 2, down --dcs 2 [--purge]
  stop-dc --dcs 2 N, start-dc --dcs 2 N
                   Stop DC N alone (by PID), start it again (waits for LDAPS). What it missed
                   comes at the next notification or periodic pull, or at once by
                   $PROG exec --dcs 2 --dc N -- sh -c 'samba-tool drs replicate ...'.
  exec --dcs 2 [--dc N] -- CMD [ARGS...]
                   Run CMD in the namespace and fence as DC N (default 1) sees it (its krb5.conf;
                   LAB_SMB_CONF is its smb.conf). Example:
                   $PROG exec --dcs 2 --dc 2 -- sh -c 'samba-tool drs showrepl -s "\$LAB_SMB_CONF"'

Environment: KCDSYNC_LAB_DIR (lab directory), KCDSYNC_LAB_LOCK (lock file),
KCDSYNC_LAB_START_WAIT (seconds to wait for LDAPS, default 30); for two DCs KCDSYNC_LAB2_DIR,
KCDSYNC_LAB2_LOCK (default /var/tmp/kcdsync-lab2.lock), KCDSYNC_LAB2_PORT_BASE.
Exit codes: 0 ok, 1 "no" (status: down; kvno: refused), 2 error.
EOF
}

require_root() { [[ $EUID -eq 0 ]] || die "must run as root (samba DC, mount namespaces)"; }

# Random password that satisfies AD complexity (upper, lower, digit, symbol) without shell or
# LDIF-special characters.
gen_password() {
    local r
    r=$(openssl rand -base64 48 | tr -dc 'A-Za-z0-9')
    printf 'Kc1-%s' "${r:0:24}"
}

# write_secret FILE: a fresh random password, mode 600, no trailing newline (ldap* -y reads the
# whole file as the password).
write_secret() {
    (umask 077; gen_password >"$1")
}

# unicodePwd value for LDIF: UTF-16LE of the password in double quotes, base64.
unicode_pwd_b64() {
    printf '"%s"' "$1" | iconv -f UTF-8 -t UTF-16LE | base64 -w0
}

# Take the machine-wide lab lock on fd 9. Every process we start while holding it must get
# `9>&-`, or it would keep the lock after we exit (samba lives on after `up`).
take_lock() {
    exec 9>>"$LOCK_FILE"
    if ! flock -w "$LOCK_WAIT" 9; then
        die "another lab.sh holds $LOCK_FILE for more than ${LOCK_WAIT}s"
    fi
}

# Install the packages when one of the commands is missing (fresh CI machines).
ensure_packages() {
    local c missing=()
    for c in "${NEEDED_COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [[ -d $PROVISION_SETUP_DIR ]] || missing+=("$PROVISION_SETUP_DIR")
    ((${#missing[@]} == 0)) && return 0
    log "missing commands: ${missing[*]}; installing ${PACKAGES[*]}"
    # Installing samba on a machine with an init system would start the distribution's smbd/nmbd/
    # samba-ad-dc on all interfaces (NetBIOS broadcasts leave the machine, ports 445/389/88 get
    # taken). A policy-rc.d that answers 101 stops the maintainer scripts from starting them.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from kcdsync deploy/lab/lab.sh\nexit 101\n' >"$policy"
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
    for c in "${NEEDED_COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || die "command $c still missing after apt-get install"
    done
    [[ -d $PROVISION_SETUP_DIR ]] || die "$PROVISION_SETUP_DIR still missing after apt-get install"
}

# --------------------------------------------------------------------------------------------
# The loopback fence
# --------------------------------------------------------------------------------------------

# Files bind-mounted over the system's in the fence.
write_fence_files() {
    mkdir -p "$FENCE_DIR"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$FENCE_DIR/resolv.conf"
    cat >"$FENCE_DIR/hosts" <<EOF
127.0.0.1 $DC_HOST.$DNS_DOMAIN $DC_HOST localhost
::1 localhost ip6-localhost ip6-loopback
EOF
    # Only files and dns (which, in the fence, asks 127.0.0.1): no nss-resolve/mdns/ldap/sss
    # module that could reach the network or a daemon outside the namespace.
    cat >"$FENCE_DIR/nsswitch.conf" <<EOF
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
netgroup: files
EOF
    mkdir -p "$FENCE_DIR/empty"
}

# The bash program that runs as the first thing in the fence: mount the lab files, then exec
# the command, so the command keeps this process's PID (start_samba relies on that).
# A missing /etc/resolv.conf (or a dangling symlink) cannot be mounted over, but glibc then uses
# 127.0.0.1 by itself, so skipping it is still safe. nscd's socket is hidden: a running nscd
# would answer from outside the namespace, with the system's resolver.
# shellcheck disable=SC2016
FENCE_PROG='
set -e
f=$1; shift
for n in resolv.conf hosts nsswitch.conf; do
    if [ -e "/etc/$n" ]; then mount --bind "$f/$n" "/etc/$n"; fi
done
for d in /run/nscd /var/run/nscd; do
    if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind "$f/empty" "$d"; fi
done
exec "$@"'

# Prefix of every fenced command: empty for the one-DC lab (host network namespace, samba bound to
# `lo`); `nsenter --net=NETNS` for the two-DC lab (see "Two DCs" below).
NS_ENTER=()

# fence CMD [ARGS...]: run CMD in a private mount namespace with the lab's resolver files.
fence() {
    [[ -f $FENCE_DIR/resolv.conf ]] || die "no fence files in $FENCE_DIR (run: $PROG up)"
    "${NS_ENTER[@]}" unshare --mount --propagation private -- bash -c "$FENCE_PROG" lab-fence "$FENCE_DIR" "$@"
}

# Kerberos tools in the fence, with the lab's krb5.conf.
fenced_krb() {
    fence env KRB5_CONFIG="$KRB5_CONF" "$@"
}

# --------------------------------------------------------------------------------------------
# LDAP as one of the lab accounts (LDAPS, certificate verified against the lab CA)
# --------------------------------------------------------------------------------------------

# ldap_as ROLE TOOL [ARGS...]  — ROLE is admin, svc or nopriv.
# Plain LDAP simple binds are refused by Samba ("Transport encryption required"): always LDAPS.
ldap_as() {
    local role=$1 tool=$2 dn
    shift 2
    case $role in
        admin) dn=$ADMIN_DN ;;
        svc) dn=$SVC_DN ;;
        nopriv) dn=$NOPRIV_DN ;;
        *) die "ldap_as: unknown role $role" ;;
    esac
    LDAPTLS_CACERT=$CA_PEM LDAPTLS_REQCERT=demand \
        "$tool" -x -H "$LDAPS_URL" -D "$dn" -y "$LAB_DIR/$role.pass" -o nettimeout=10 "$@"
}

# dn_exists DN: 0 if the object exists (admin view).
dn_exists() {
    local out rc=0
    out=$(ldap_as admin ldapsearch -LLL -s base -b "$1" dn 2>&1) || rc=$?
    case $rc in
        0) return 0 ;;
        32) return 1 ;;
        *) die "ldapsearch $1 failed (rc $rc): $out" ;;
    esac
}

# --------------------------------------------------------------------------------------------
# Process handling
# --------------------------------------------------------------------------------------------

# pid_comm PID: the command name of a live process; fails for no process or a zombie (a killed
# samba whose parent, often PID 1 in containers, has not reaped it yet still has /proc/PID).
pid_comm() {
    local stat
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # /proc/PID/stat is "PID (COMM) STATE ...": COMM may contain spaces, so cut at the last ')'.
    [[ ${stat##*) } != [ZX]* ]] || return 1
    cat "/proc/$1/comm" 2>/dev/null
}

# pid_is_lab_samba PID: the PID is alive and is one of samba's processes. PIDs come from pid files
# inside the lab directory; the name check guards against a recycled PID.
pid_is_lab_samba() {
    local pid=$1 comm
    comm=$(pid_comm "$pid") || return 1
    case $comm in
        # samba's root process, the smbd/winbindd it starts, and their helpers.
        samba | smbd | smbd-notifyd | cleanupd | winbindd | 'tfork('*) return 0 ;;
    esac
    return 1
}

# All PIDs of the lab's samba processes: from our pid file, samba's own pid directory, and any
# process whose command line names this lab's exact smb.conf (children orphaned by a kill -9).
lab_pids() {
    local f pid
    {
        for f in "$PID_FILE" "$RUN_DIR"/*.pid; do
            [[ -f $f ]] || continue
            pid=$(tr -dc '0-9' 2>/dev/null <"$f") || continue
            [[ -n $pid ]] && echo "$pid"
        done
        for f in /proc/[0-9]*/cmdline; do
            if tr '\0' ' ' 2>/dev/null <"$f" | grep -qF -- "$SMB_CONF"; then
                pid=${f#/proc/}
                echo "${pid%/cmdline}"
            fi
        done
    } | sort -un | while read -r pid; do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        pid_is_lab_samba "$pid" && echo "$pid"
    done
    return 0
}

# stop_samba: TERM every lab samba process, wait up to 10 s, KILL what is left.
stop_samba() {
    local pids pid i
    mapfile -t pids < <(lab_pids)
    ((${#pids[@]} == 0)) && return 0
    log "stopping samba (pids ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        mapfile -t pids < <(for pid in "${pids[@]}"; do pid_is_lab_samba "$pid" && echo "$pid"; done)
        ((${#pids[@]} == 0)) && break
        sleep 0.1
    done
    if ((${#pids[@]} > 0)); then
        log "samba did not stop in 10 s; KILL ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$PID_FILE"
}

samba_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null <"$PID_FILE") || return 1
    [[ $(pid_comm "$pid") == samba ]] || return 1
    echo "$pid"
}

# ldaps_bind_ok: a verified LDAPS simple bind as Administrator answers (bounded by timeout).
# (Samba does not implement the WhoAmI extended operation, so ldapwhoami cannot be used.)
ldaps_bind_ok() {
    [[ -f $CA_PEM && -f $LAB_DIR/admin.pass ]] || return 1
    LDAPTLS_CACERT=$CA_PEM LDAPTLS_REQCERT=demand timeout 15 \
        ldapsearch -x -H "$LDAPS_URL" -D "$ADMIN_DN" -y "$LAB_DIR/admin.pass" \
        -o nettimeout=5 -LLL -s base -b "$ADMIN_DN" dn >/dev/null 2>&1 9>&-
}

# healthy: samba (by our pid file) alive, `up` completed, LDAPS answers a verified bind.
healthy() {
    samba_pid >/dev/null && [[ -f $LAB_ENV ]] && ldaps_bind_ok
}

# wipe_lab_dir: rm -rf the lab directory, but only one lab.sh created (it holds the marker) or
# an empty one: KCDSYNC_LAB_DIR pointed at $HOME by mistake must not be deleted.
wipe_lab_dir() {
    [[ -e $LAB_DIR ]] || return 0
    if [[ ! -e $MARKER && -n $(ls -A "$LAB_DIR") ]]; then
        die "$LAB_DIR is not a lab directory (no $MARKER); refusing to delete it"
    fi
    rm -rf "$LAB_DIR"
}

# --------------------------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------------------------

# A CA and a server certificate with SANs: Samba's autogenerated one has no subjectAltName and
# rustls refuses it. IP SANs make ldaps://127.0.0.1 and ldaps://[::1] verify.
make_certs() {
    mkdir -p "$TLS_DIR"
    cat >"$TLS_DIR/openssl.cnf" <<EOF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = placeholder
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:$DC_HOST.$DNS_DOMAIN, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    (
        umask 077   # key files mode 600: samba refuses keys readable by others
        openssl req -config "$TLS_DIR/openssl.cnf" -x509 -newkey rsa:2048 -nodes -sha256 \
            -days 3650 -subj "/CN=kcdsync lab CA" -extensions ca_ext \
            -keyout "$TLS_DIR/ca.key" -out "$CA_PEM" 2>/dev/null
        openssl req -config "$TLS_DIR/openssl.cnf" -new -newkey rsa:2048 -nodes -sha256 \
            -subj "/CN=$DC_HOST.$DNS_DOMAIN" \
            -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
        openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$CA_PEM" -CAkey "$TLS_DIR/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
            -extfile "$TLS_DIR/openssl.cnf" -extensions server_ext \
            -out "$TLS_DIR/server.pem" 2>/dev/null
    )
    chmod 644 "$CA_PEM" "$TLS_DIR/server.pem"
    rm -f "$TLS_DIR/server.csr"
}

# dc_options ARRAY DIR RUN_DIR INTERFACES KEY CERT: the smb.conf options every lab DC gets
# (provision and join): the services and interfaces of the loopback rule, and every path inside
# the lab directory.
dc_options() {
    local -n _opts=$1
    _opts=(
        --option="server services = $SERVER_SERVICES"
        --option="interfaces = $4"
        --option="bind interfaces only = yes"
        --option="disable netbios = yes"
        --option="smb ports = 445"
        --option="load printers = no"
        --option="printing = bsd"
        --option="printcap name = /dev/null"
        --option="disable spoolss = yes"
        --option="name resolve order = host"
        --option="log file = $2/log/%m.log"
        --option="pid directory = $3"
        --option="ncalrpc dir = $3/ncalrpc"
        --option="winbindd socket directory = $3/winbindd"
        --option="ntp signd socket directory = $3/ntp_signd"
        --option="tls enabled = yes"
        --option="tls keyfile = $5"
        --option="tls certfile = $6"
        --option="tls cafile = $CA_PEM"
    )
}

provision() {
    local opts
    dc_options opts "$LAB_DIR" "$RUN_DIR" lo "$TLS_DIR/server.key" "$TLS_DIR/server.pem"
    mkdir -p "$RUN_DIR" "$LAB_DIR/log" "$LAB_DIR/etc"
    # Without -s, samba-tool loads the machine's /etc/samba/smb.conf and provision copies its
    # settings and shares (homes, printers, panic action, /var/log paths...) into the lab's
    # smb.conf. A nearly empty base file keeps the lab independent of the machine.
    printf '[global]\n' >"$LAB_DIR/etc/provision-base.conf"
    local out
    if ! out=$(fence samba-tool domain provision -s "$LAB_DIR/etc/provision-base.conf" \
        --targetdir="$LAB_DIR" \
        --realm="$REALM" --domain="$DOMAIN" --server-role=dc \
        --dns-backend=NONE --host-ip=127.0.0.1 --host-name="$DC_HOST" \
        --adminpass="$(cat "$LAB_DIR/admin.pass")" \
        "${opts[@]}" \
        9>&- 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "samba-tool domain provision failed"
    fi
    printf '%s\n' "$out" >"$LAB_DIR/log/provision.log"
}

# Prefix of the samba command line: empty for the one-DC lab; `env KRB5_CONFIG=...` for each DC of
# the two-DC lab (each samba lists its own KDC first).
SAMBA_ENV=()

# Start samba in the fence, in the background, in its own session (a Ctrl-C or a test runner
# killing our process group must not take it down), and record its PID. The background
# subshell execs unshare, which execs the fence program, which execs setsid, which execs
# `bash -c 'echo $$ >pidfile; exec samba ...'`: one process all along, so the PID written is
# samba's own and no shell lingers as its parent. fd 9 (the lock) is closed so samba does not
# hold it; stdout/stderr go to the log so a caller reading our output is not kept waiting.
start_samba() {
    rm -f "$PID_FILE"
    # shellcheck disable=SC2016
    (
        exec "${NS_ENTER[@]}" unshare --mount --propagation private -- bash -c "$FENCE_PROG" lab-fence \
            "$FENCE_DIR" setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' lab-samba "$PID_FILE" \
            "${SAMBA_ENV[@]}" samba -s "$SMB_CONF" -F -M single --debug-stdout
    ) </dev/null >>"$SAMBA_LOG" 2>&1 9>&- &
    disown $! 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $PID_FILE ]] && return 0
        sleep 0.1
    done
    die "samba did not start (no $PID_FILE); log: $SAMBA_LOG"
}

# Wait (bounded) for a verified LDAPS bind; fail early if samba died.
wait_ldaps() {
    local deadline=$((SECONDS + START_WAIT))
    while ((SECONDS < deadline)); do
        if ! samba_pid >/dev/null; then
            tail -n 40 "$SAMBA_LOG" >&2 || true
            die "samba exited during start-up (log above, full log: $SAMBA_LOG)"
        fi
        ldaps_bind_ok && return 0
        sleep 0.2
    done
    tail -n 40 "$SAMBA_LOG" >&2 || true
    die "LDAPS on $LDAPS_URL did not answer a verified bind within ${START_WAIT}s (log above)"
}

# krb5.conf for clients: no DNS anywhere, forwardable tickets (S4U2Proxy needs a forwardable
# TGT), TCP to the KDC.
write_krb5_conf() {
    cat >"$KRB5_CONF" <<EOF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    forwardable = true
    udp_preference_limit = 1

[realms]
    $REALM = {
        kdc = 127.0.0.1
        admin_server = 127.0.0.1
        kpasswd_server = 127.0.0.1
    }

[domain_realm]
    .$DNS_DOMAIN = $REALM
    $DNS_DOMAIN = $REALM
EOF
    chmod 644 "$KRB5_CONF"
}

# ldif_user DN SAM UAC PASSWORD: LDIF for a user account with its password set at creation.
ldif_user() {
    cat <<EOF
dn: $1
objectClass: user
cn: $2
sAMAccountName: $2
userPrincipalName: $2@$DNS_DOMAIN
userAccountControl: $3
unicodePwd:: $(unicode_pwd_b64 "$4")

EOF
}

# object_sid DN: the objectSid as S-1-5-..., read over LDAPS and decoded here (binary layout:
# revision, sub-authority count, 6-byte big-endian authority, then 32-bit little-endian
# sub-authorities). Reading sam.ldb with ldbsearch would load the machine's smb.conf.
object_sid() {
    local b64 b sid i j
    b64=$(ldap_as admin ldapsearch -LLL -o ldif_wrap=no -s base -b "$1" objectSid |
        awk '/^objectSid:: /{print $2}')
    [[ -n $b64 ]] || die "no objectSid for $1"
    read -ra b < <(base64 -d <<<"$b64" | od -An -v -tu1 | tr -s ' \n' '  ')
    local auth=0
    for ((i = 2; i < 8; i++)); do auth=$((auth * 256 + b[i])); done
    sid="S-${b[0]}-$auth"
    for ((i = 0; i < b[1]; i++)); do
        j=$((8 + 4 * i))
        sid+="-$((b[j] | b[j + 1] << 8 | b[j + 2] << 16 | b[j + 3] << 24))"
    done
    [[ $sid == S-1-5-21-* ]] || die "unexpected objectSid $sid for $1"
    echo "$sid"
}

create_accounts() {
    write_secret "$LAB_DIR/svc.pass"
    write_secret "$LAB_DIR/nopriv.pass"
    {
        printf 'dn: %s\nobjectClass: organizationalUnit\nou: Hyper-V\n' "$FLEET_OU"
        printf 'description: parent of kcdsync test fleets\n\n'
        ldif_user "$SVC_DN" "$SVC_USER" 512 "$(cat "$LAB_DIR/svc.pass")"
        ldif_user "$NOPRIV_DN" "$NOPRIV_USER" 512 "$(cat "$LAB_DIR/nopriv.pass")"
    } | ldap_as admin ldapadd >/dev/null || die "creating OU and service accounts failed"

    local svc_sid nopriv_sid
    svc_sid=$(object_sid "$SVC_DN")
    nopriv_sid=$(object_sid "$NOPRIV_DN")

    # Full control (GA) on the fleet OU, inherited by every object below it (in AD, CI applies
    # to all child objects).
    fence samba-tool dsacl set -s "$SMB_CONF" -H "$LAB_DIR/private/sam.ldb" --objectdn="$FLEET_OU" \
        --sddl="(A;CI;GA;;;$svc_sid)(A;CI;GA;;;$nopriv_sid)" 9>&- >/dev/null ||
        die "samba-tool dsacl set failed"

    # SeEnableDelegationPrivilege for kcdsync-svc only. samba-tool has no command for it; Samba
    # reads privilege.ldb when a connection binds, so a record added with ldbadd works for the
    # next bind. Samba finds the record by SEARCHING objectSid=<SID>, not by its DN: a record
    # with only `dn: sid=...` and `privilege:` is silently ignored (measured). So it copies the
    # layout of the provisioned records (objectClass privilege, objectSid, comment).
    printf 'dn: sid=%s\nobjectClass: privilege\nobjectSid: %s\ncomment: %s\nprivilege: SeEnableDelegationPrivilege\n\n' \
        "$svc_sid" "$svc_sid" "$SVC_USER (kcdsync lab)" |
        fence ldbadd -H "$LAB_DIR/private/privilege.ldb" 9>&- >/dev/null ||
        die "adding SeEnableDelegationPrivilege to privilege.ldb failed"
    echo "$svc_sid" >"$LAB_DIR/svc.sid"
    echo "$nopriv_sid" >"$LAB_DIR/nopriv.sid"
}

# Prove the accounts do what the tests expect: both can create and delete a computer below
# the fleet OU; only kcdsync-svc may write msDS-AllowedToDelegateTo (rc 50 for the other).
verify_accounts() {
    local role dn out rc
    for role in svc nopriv; do
        dn="CN=lab-probe-$role,$FLEET_OU"
        printf 'dn: %s\nobjectClass: computer\ncn: lab-probe-%s\nsAMAccountName: lab-probe-%s$\nuserAccountControl: 4098\n\n' \
            "$dn" "$role" "$role" | ldap_as "$role" ldapadd >/dev/null ||
            die "$role cannot create a computer in $FLEET_OU"
        rc=0
        out=$(printf 'dn: %s\nchangetype: modify\nadd: msDS-AllowedToDelegateTo\nmsDS-AllowedToDelegateTo: cifs/probe.%s\n-\n\n' \
            "$dn" "$DNS_DOMAIN" | ldap_as "$role" ldapmodify 2>&1) || rc=$?
        if [[ $role == svc && $rc != 0 ]]; then
            die "kcdsync-svc cannot write msDS-AllowedToDelegateTo (rc $rc): $out"
        elif [[ $role == nopriv && $rc != 50 ]]; then
            die "kcdsync-nopriv writing msDS-AllowedToDelegateTo: expected rc 50, got $rc: $out"
        fi
        ldap_as "$role" ldapdelete "$dn" || die "$role cannot delete $dn"
    done
}

write_lab_env() {
    cat >"$LAB_ENV.tmp" <<EOF
# kcdsync lab: source this file. Generated by deploy/lab/lab.sh up. Passwords are in the
# *_PASS_FILE files (mode 600), never here.
export KCDSYNC_LAB_DIR='$LAB_DIR'
export KRB5_CONFIG='$KRB5_CONF'
export LAB_LDAPS_URL='$LDAPS_URL'
export LAB_LDAP_URL='$LDAP_URL'
export LAB_CA='$CA_PEM'
export LAB_BASE_DN='$BASE_DN'
export LAB_FLEET_OU='$FLEET_OU'
export LAB_REALM='$REALM'
export LAB_DOMAIN='$DOMAIN'
export LAB_DNS_DOMAIN='$DNS_DOMAIN'
export LAB_DC_HOST='$DC_HOST.$DNS_DOMAIN'
export LAB_ADMIN_DN='$ADMIN_DN'
export LAB_ADMIN_PASS_FILE='$LAB_DIR/admin.pass'
export LAB_SVC_DN='$SVC_DN'
export LAB_SVC_PASS_FILE='$LAB_DIR/svc.pass'
export LAB_SVC_SID='$(cat "$LAB_DIR/svc.sid")'
export LAB_NOPRIV_DN='$NOPRIV_DN'
export LAB_NOPRIV_PASS_FILE='$LAB_DIR/nopriv.pass'
export LAB_NOPRIV_SID='$(cat "$LAB_DIR/nopriv.sid")'
export LAB_KEYTAB_DIR='$KEYTAB_DIR'
EOF
    mv "$LAB_ENV.tmp" "$LAB_ENV"
}

SAMBA_STARTED=0
LAB_ARGS=''   # ' --dcs 2' for the two-DC lab, in messages
up_failed_hint() {
    local rc=$?
    if ((rc != 0 && SAMBA_STARTED)); then
        log "up failed (rc $rc); samba still runs for debugging (log: $SAMBA_LOG);" \
            "'$PROG down$LAB_ARGS' stops it, '$PROG up$LAB_ARGS' starts over"
    fi
}

cmd_up() {
    local t0
    t0=$(now)
    require_root
    take_lock
    ensure_packages
    # On failure after samba started, say what is left behind: samba keeps running so its state
    # can be inspected; the next `up` sees no lab.env, treats it as a leftover and starts over.
    trap up_failed_hint EXIT
    if healthy; then
        echo "lab already up ($LAB_DIR, samba pid $(samba_pid))"
        return 0
    fi
    # Anything else is a leftover (dead or half-started samba, interrupted up): stop it by PID
    # and start from an empty directory.
    if [[ -e $LAB_DIR ]]; then
        log "leftover lab in $LAB_DIR: stopping it and wiping the directory"
        stop_samba
        wipe_lab_dir
    fi
    check_ports_free
    mkdir -p "$LAB_DIR"
    chmod 755 "$LAB_DIR"
    echo "kcdsync lab directory, created by deploy/lab/lab.sh; 'lab.sh down --purge' removes it" \
        >"$MARKER"
    write_fence_files
    write_secret "$LAB_DIR/admin.pass"
    make_certs
    provision
    write_krb5_conf
    SAMBA_STARTED=1
    start_samba
    wait_ldaps
    # dnsupdate is off, so the DC's own SPNs (ldap/dc1.lab.test, ...) must be written once.
    fenced_krb samba_spnupdate -s "$SMB_CONF" 9>&- >>"$LAB_DIR/log/spnupdate.log" 2>&1 ||
        die "samba_spnupdate failed; see $LAB_DIR/log/spnupdate.log"
    create_accounts
    verify_accounts
    mkdir -p "$KEYTAB_DIR"
    write_lab_env
    echo "lab up in $(elapsed "$t0") s: samba pid $(samba_pid), $LDAPS_URL, realm $REALM"
    echo "use: source $LAB_ENV"
}

# The DC's ports must be free (ours are stopped by now): anything still listening belongs to
# someone else, e.g. the distribution's samba-ad-dc service.
check_ports_free() {
    local busy
    busy=$(ss -Htlnp 2>/dev/null | awk '$4 ~ /:(88|389|636|445|464|3268|3269)$/' || true)
    [[ -z $busy ]] || die "ports the DC needs are in use (another lab under a different \
KCDSYNC_LAB_DIR, or the distribution's samba-ad-dc?):
$busy"
}

# --------------------------------------------------------------------------------------------
# down / status / exec
# --------------------------------------------------------------------------------------------

cmd_down() {
    local purge=0 t0
    t0=$(now)
    case ${1:-} in
        --purge) purge=1 ;;
        '') ;;
        *) die "down: unknown argument $1" ;;
    esac
    require_root
    take_lock
    stop_samba
    if ((purge)); then
        wipe_lab_dir
        echo "lab down and removed ($(elapsed "$t0") s)"
    else
        echo "lab down ($(elapsed "$t0") s); state kept in $LAB_DIR (down --purge removes it)"
    fi
}

cmd_status() {
    local pid
    if ! pid=$(samba_pid); then
        echo "lab down: no running samba for $PID_FILE" >&2
        return 1
    fi
    if [[ ! -f $LAB_ENV ]]; then
        echo "lab not ready: samba pid $pid runs but 'up' did not finish (no $LAB_ENV)" >&2
        return 1
    fi
    if ! ldaps_bind_ok; then
        echo "lab unhealthy: samba pid $pid runs but $LDAPS_URL does not answer a verified bind" >&2
        return 1
    fi
    local started
    started=$(ps -o etimes= -p "$pid" | tr -d ' ')
    echo "lab up: samba pid $pid, up ${started}s, $LDAPS_URL, realm $REALM, dir $LAB_DIR"
}

load_env() {
    [[ -f $LAB_ENV ]] || die "lab is not up ($LAB_ENV missing); run: $PROG up"
    # shellcheck disable=SC1090
    source "$LAB_ENV"
}

cmd_exec() {
    [[ ${1:-} == -- ]] && shift
    (($# > 0)) || die "exec: no command (usage: $PROG exec -- CMD [ARGS...])"
    load_env
    exec unshare --mount --propagation private -- bash -c "$FENCE_PROG" lab-fence "$FENCE_DIR" "$@"
}

# --------------------------------------------------------------------------------------------
# seed
# --------------------------------------------------------------------------------------------

# ldif_computer NAME OU_DN PASSWORD DELEGATE_TO... : a computer account (enabled workstation
# trust, UAC 4096) with HOST/ and cifs/ SPNs; HVnn also gets the migration-service SPNs.
ldif_computer() {
    local name=$1 ou=$2 pw=$3 lower v
    shift 3
    lower=${name,,}
    cat <<EOF
dn: CN=$name,$ou
objectClass: computer
cn: $name
sAMAccountName: $name\$
dNSHostName: $lower.$DNS_DOMAIN
userAccountControl: 4096
unicodePwd:: $(unicode_pwd_b64 "$pw")
servicePrincipalName: HOST/$lower.$DNS_DOMAIN
servicePrincipalName: HOST/$name
servicePrincipalName: cifs/$lower.$DNS_DOMAIN
servicePrincipalName: cifs/$name
EOF
    if [[ $name == HV* ]]; then
        printf 'servicePrincipalName: %s/%s.%s\n' "$MIGRATION_SVC" "$lower" "$DNS_DOMAIN"
        printf 'servicePrincipalName: %s/%s\n' "$MIGRATION_SVC" "$name"
    fi
    for v in "$@"; do
        printf 'msDS-AllowedToDelegateTo: %s\n' "$v"
    done
    echo
}

cmd_seed() {
    local ou_name=demo t0
    t0=$(now)
    while (($# > 0)); do
        case $1 in
            --ou) ou_name=${2:?--ou needs a NAME}; shift 2 ;;
            --ou=*) ou_name=${1#--ou=}; shift ;;
            *) die "seed: unknown argument $1" ;;
        esac
    done
    [[ $ou_name =~ ^[A-Za-z0-9._-]+$ ]] || die "seed: OU name must match [A-Za-z0-9._-]+"
    require_root
    take_lock
    healthy || die "lab is not up; run: $PROG up"

    local ou_dn="OU=$ou_name,$FLEET_OU"
    local hosts=(HV01 HV02 HV03 HV04) h m lm

    # Recreate from scratch: the fleet OU subtree and the three users.
    if dn_exists "$ou_dn"; then
        ldap_as admin ldapdelete -r "$ou_dn" || die "deleting $ou_dn failed"
    fi
    # sAMAccountNames and SPNs are unique in the domain: hosts from an earlier seed in another OU
    # would make the add fail, so remove them (only below the fleet OU; elsewhere is an error).
    local dn
    while read -r dn; do
        [[ -n $dn ]] || continue
        [[ ${dn,,} == *",${FLEET_OU,,}" ]] ||
            die "$dn holds a seed host name outside $FLEET_OU; remove it first"
        ldap_as admin ldapdelete "$dn" || die "deleting $dn failed"
    done < <(ldap_as admin ldapsearch -LLL -o ldif_wrap=no -b "$BASE_DN" \
        '(|(sAMAccountName=HV01$)(sAMAccountName=HV02$)(sAMAccountName=HV03$)(sAMAccountName=HV04$)(sAMAccountName=FS01$))' \
        dn | sed -n 's/^dn: //p')
    local u
    for u in alice bob carol; do
        if dn_exists "CN=$u,$USERS_CN"; then
            ldap_as admin ldapdelete "CN=$u,$USERS_CN" || die "deleting user $u failed"
        fi
    done

    # Computer passwords are random and not kept: the keytabs below are all the tests need.
    local ldif
    ldif=$(
        printf 'dn: %s\nobjectClass: organizationalUnit\nou: %s\n\n' "$ou_dn" "$ou_name"
        for h in "${hosts[@]}" FS01; do
            local deleg=()
            if [[ $h == HV* ]]; then
                # The broken state: every other host's migration and cifs SPNs plus the file
                # server, but "Kerberos only" (UAC stays 4096, no 0x1000000).
                for m in "${hosts[@]}"; do
                    [[ $m == "$h" ]] && continue
                    lm=${m,,}
                    deleg+=("$MIGRATION_SVC/$lm.$DNS_DOMAIN" "$MIGRATION_SVC/$m"
                            "cifs/$lm.$DNS_DOMAIN" "cifs/$m")
                done
                deleg+=("cifs/fs01.$DNS_DOMAIN" "cifs/FS01")
                # An entry kcdsync does not manage and must leave alone.
                [[ $h == HV01 ]] && deleg+=("HTTP/web01.$DNS_DOMAIN")
            fi
            ldif_computer "$h" "$ou_dn" "$(gen_password)" "${deleg[@]}"
        done
        ldif_user "CN=alice,$USERS_CN" alice 512 "$(gen_password)"            # normal
        ldif_user "CN=bob,$USERS_CN" bob $((512 | 0x100000)) "$(gen_password)" # NOT_DELEGATED
        ldif_user "CN=carol,$USERS_CN" carol 514 "$(gen_password)"            # disabled
    )
    printf '%s\n' "$ldif" | ldap_as admin ldapadd >/dev/null || die "seeding $ou_dn failed"

    # Keytabs for the Hyper-V hosts, from the DC's database.
    mkdir -p "$KEYTAB_DIR"
    local kt n
    for h in "${hosts[@]}"; do
        kt="$KEYTAB_DIR/${h,,}.keytab"
        rm -f "$kt"
        (umask 077; fence samba-tool domain exportkeytab -s "$SMB_CONF" "$kt" --principal="$h\$@$REALM" \
            9>&- >>"$LAB_DIR/log/exportkeytab.log" 2>&1) || die "exportkeytab for $h failed"
        # exportkeytab silently writes nothing for an account without keys: check.
        n=$(klist -k "$kt" 2>/dev/null | grep -c "$h\\\$@$REALM" || true)
        ((n > 0)) || die "keytab $kt has no keys for $h\$@$REALM"
    done
    echo "seeded $ou_dn: ${hosts[*]} FS01 (Kerberos-only delegation), users alice bob carol;" \
        "keytabs in $KEYTAB_DIR ($(elapsed "$t0") s)"
}

# --------------------------------------------------------------------------------------------
# kvno: S4U2Self + S4U2Proxy against the real KDC
# --------------------------------------------------------------------------------------------
cmd_kvno() {
    (($# == 3)) || die "usage: $PROG kvno SRC_NETBIOS USER SPN"
    local src=${1^^} user=$2 spn=$3
    load_env
    local kt="$KEYTAB_DIR/${src,,}.keytab"
    [[ -f $kt ]] || die "no keytab $kt (run: $PROG seed)"
    local cc out rc=0
    cc=$(mktemp /tmp/kcdsync-lab-cc.XXXXXX)
    # shellcheck disable=SC2016
    out=$(fence env KRB5_CONFIG="$KRB5_CONF" KRB5CCNAME="FILE:$cc" bash -c '
        kinit -k -t "$1" "$2" || exit 100
        kvno -U "$3" -P "$4"' lab-kvno "$kt" "$src\$@$REALM" "$user" "$spn" 2>&1) || rc=$?
    rm -f "$cc"
    if ((rc == 100)); then
        printf '%s\n' "$out" >&2
        die "kinit as $src\$@$REALM with $kt failed"
    fi
    # kvno prints a "kvno = N" line even on failure: judge by the exit code only.
    if ((rc == 0)); then
        echo "GRANTED"
        return 0
    fi
    local why
    why=$(printf '%s\n' "$out" | grep -E '^kvno: ' | tail -n 1 || true)
    echo "REFUSED: ${why:-$out}"
    return 1
}

# --------------------------------------------------------------------------------------------
# Two DCs (opt-in: `up --dcs 2`; deploy/lab/README.md has the why and the measured figures)
# --------------------------------------------------------------------------------------------
# dc1.lab.test (127.0.0.1) and dc2.lab.test (127.0.0.2), one domain, replicating both ways, in a
# network namespace this script creates (bind-mounted on $KCDSYNC_LAB2_DIR/netns) holding only
# `lo` with 127.0.0.2/8 added: nothing inside can reach anything outside, and the DCs' ports
# (88, 389, 636...) never touch the host's, so this lab runs beside the shared one-DC lab. Its
# own directory, lock and environment variable (KCDSYNC_LAB2_DIR, not KCDSYNC_LAB_DIR: a test
# that sourced the one-DC lab.env must not point this lab at the shared directory).
# Tests in the host namespace reach the DCs through nsfwd.py: one process, listening on host
# loopback ports, connecting inside the namespace (LDAP, LDAPS, KDC and kpasswd over TCP).

LAB2_PORT_BASE=${KCDSYNC_LAB2_PORT_BASE:-16000}
# DC port -> host port is PORT_BASE + DC port, on the DC's own address: 127.0.0.1:16636 is DC1's
# LDAPS, 127.0.0.2:16636 DC2's. No port the one-DC lab checks (88, 389, 636...) is used.
LAB2_PORTS=(88 389 464 636)
# A change is announced to the other DC 1 s after it is made instead of the default 5+ s
# (LAB-NOTES: 0.2-1.0 s end to end against 0.2-4.8 s).
LAB2_OPTIONS=(--option="dreplsrv:notify_interval = 1")

lab2_init() {
    LAB_ARGS=' --dcs 2'
    LAB_DIR=${KCDSYNC_LAB2_DIR:-/var/tmp/kcdsync-lab2}
    LAB_DIR=${LAB_DIR%/}
    case $LAB_DIR in
        /*/*) ;;
        *) die "KCDSYNC_LAB2_DIR must be an absolute path below a top-level directory (got '$LAB_DIR')" ;;
    esac
    if ! [[ $LAB2_PORT_BASE =~ ^[0-9]+$ ]] || ((LAB2_PORT_BASE < 1024 || LAB2_PORT_BASE > 60000)); then
        die "KCDSYNC_LAB2_PORT_BASE must be a number in 1024..60000 (got '$LAB2_PORT_BASE')"
    fi
    # Its own lock: the DCs' ports are inside the namespace, so this lab and the one-DC lab
    # never wait for each other.
    LOCK_FILE=${KCDSYNC_LAB2_LOCK:-/var/tmp/kcdsync-lab2.lock}
    FENCE_DIR=$LAB_DIR/fence
    TLS_DIR=$LAB_DIR/tls
    CA_PEM=$LAB_DIR/ca.pem
    LAB_ENV=$LAB_DIR/lab.env
    MARKER=$LAB_DIR/.kcdsync-lab
    NETNS=$LAB_DIR/netns
    NS_ENTER=(nsenter "--net=$NETNS")
    FWD_PID=$LAB_DIR/nsfwd.pid
    FWD_LOG=$LAB_DIR/nsfwd.log
    FWD_PY=$LAB_DIR/bin/nsfwd.py
    use_dc 1
}

# use_dc N: point the one-DC helpers (start_samba, stop_samba, samba_pid, fence, fenced_krb,
# ldap_as, ldaps_bind_ok) at DC N. KRB5_CONF is samba's own (inside the namespace).
use_dc() {
    DC_NAME=dc$1
    DC_IP=127.0.0.$1
    DC_DIR=$LAB_DIR/$DC_NAME
    SMB_CONF=$DC_DIR/etc/smb.conf
    PID_FILE=$DC_DIR/samba.pid
    RUN_DIR=$DC_DIR/run
    SAMBA_LOG=$DC_DIR/samba.log
    KRB5_CONF=$DC_DIR/krb5.conf
    SAMBA_ENV=(env "KRB5_CONFIG=$KRB5_CONF")
    LDAPS_URL=ldaps://$DC_IP:$((LAB2_PORT_BASE + 636))
    LDAP_URL=ldap://$DC_IP:$((LAB2_PORT_BASE + 389))
}

lab2_netns_up() { [[ -e $NETNS ]] && findmnt -rn "$NETNS" >/dev/null 2>&1; }

# The namespace: a file bind-mounted to a new network namespace (`unshare --net=FILE`), kept
# alive by the mount alone, so no holder process. It starts with `lo` down and no address.
lab2_make_netns() {
    touch "$NETNS"
    unshare --net="$NETNS" true || die "unshare --net=$NETNS failed (needs root and a kernel with network namespaces)"
    # 127.0.0.2 must be an address of an interface, or samba exits "can't determine interface".
    "${NS_ENTER[@]}" ip link set lo up
    "${NS_ENTER[@]}" ip addr add 127.0.0.2/8 dev lo
    local ifaces
    ifaces=$("${NS_ENTER[@]}" ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
    [[ $ifaces == 'lo ' ]] || die "namespace $NETNS has interfaces other than lo: $ifaces"
}

lab2_remove_netns() {
    if lab2_netns_up; then
        umount "$NETNS" || die "cannot unmount $NETNS"
    fi
    rm -f "$NETNS"
}

# The fence's /etc/hosts. Replication finds the other DC by `<NTDS objectGUID>._msdcs.lab.test`
# (without it: WERR_FILE_NOT_FOUND), so the GUIDs are added once known. Written in place (same
# inode): the fences of running processes bind-mounted this file and see the new lines.
lab2_write_hosts() {
    local g1=${1:-} g2=${2:-}
    {
        printf '127.0.0.1 dc1.%s dc1 localhost\n' "$DNS_DOMAIN"
        printf '127.0.0.2 dc2.%s dc2\n' "$DNS_DOMAIN"
        [[ -n $g1 ]] && printf '127.0.0.1 %s._msdcs.%s\n' "$g1" "$DNS_DOMAIN"
        [[ -n $g2 ]] && printf '127.0.0.2 %s._msdcs.%s\n' "$g2" "$DNS_DOMAIN"
        printf '::1 localhost ip6-localhost ip6-loopback\n'
    } >"$FENCE_DIR/hosts"
}

# A CA and one server certificate per DC (SANs: its name and its address, the same inside the
# namespace and, through the forwarder, outside).
lab2_certs() {
    mkdir -p "$TLS_DIR"
    local n
    (
        umask 077
        printf '[ req ]\ndistinguished_name = dn\nprompt = no\n[ dn ]\nCN = placeholder\n[ ca_ext ]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n' \
            >"$TLS_DIR/ca.cnf"
        openssl req -config "$TLS_DIR/ca.cnf" -x509 -newkey rsa:2048 -nodes -sha256 \
            -days 3650 -subj "/CN=kcdsync two-DC lab CA" -extensions ca_ext \
            -keyout "$TLS_DIR/ca.key" -out "$CA_PEM" 2>/dev/null
        for n in 1 2; do
            printf '[ server_ext ]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:dc%s.%s, IP:127.0.0.%s\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n' \
                "$n" "$DNS_DOMAIN" "$n" >"$TLS_DIR/dc$n.cnf"
            openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=dc$n.$DNS_DOMAIN" \
                -keyout "$TLS_DIR/dc$n.key" -out "$TLS_DIR/dc$n.csr" 2>/dev/null
            openssl x509 -req -in "$TLS_DIR/dc$n.csr" -CA "$CA_PEM" -CAkey "$TLS_DIR/ca.key" \
                -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
                -extfile "$TLS_DIR/dc$n.cnf" -extensions server_ext -out "$TLS_DIR/dc$n.pem" 2>/dev/null
        done
    )
    chmod 644 "$CA_PEM" "$TLS_DIR/dc1.pem" "$TLS_DIR/dc2.pem"
    rm -f "$TLS_DIR"/dc?.csr
}

# krb5.conf files. Inside the namespace, each samba's lists its own KDC first, then the other:
# DC-to-DC replication authenticates with Kerberos (else WERR_NO_LOGON_SERVERS). Outside, for
# tests: one per DC (kvno against exactly that KDC) and one with both, DC1 first.
# lab2_krb5_conf FILE KPASSWD_SERVER KDC...
lab2_krb5_conf() {
    local file=$1 kpasswd=$2 k
    shift 2
    {
        printf '[libdefaults]\n    default_realm = %s\n    dns_lookup_kdc = false\n' "$REALM"
        printf '    dns_lookup_realm = false\n    dns_canonicalize_hostname = false\n    rdns = false\n'
        printf '    forwardable = true\n    udp_preference_limit = 1\n\n[realms]\n    %s = {\n' "$REALM"
        for k in "$@"; do printf '        kdc = %s\n' "$k"; done
        printf '        admin_server = %s\n        kpasswd_server = %s\n    }\n\n' "$1" "$kpasswd"
        printf '[domain_realm]\n    .%s = %s\n    %s = %s\n' "$DNS_DOMAIN" "$REALM" "$DNS_DOMAIN" "$REALM"
    } >"$file"
    chmod 644 "$file"
}

lab2_write_krb5_confs() {
    local p=$LAB2_PORT_BASE
    lab2_krb5_conf "$LAB_DIR/dc1/krb5.conf" 127.0.0.1 127.0.0.1 127.0.0.2
    lab2_krb5_conf "$LAB_DIR/dc2/krb5.conf" 127.0.0.2 127.0.0.2 127.0.0.1
    lab2_krb5_conf "$LAB_DIR/krb5-dc1.conf" "127.0.0.1:$((p + 464))" "127.0.0.1:$((p + 88))"
    lab2_krb5_conf "$LAB_DIR/krb5-dc2.conf" "127.0.0.2:$((p + 464))" "127.0.0.2:$((p + 88))"
    lab2_krb5_conf "$LAB_DIR/krb5.conf" "127.0.0.1:$((p + 464))" "127.0.0.1:$((p + 88))" "127.0.0.2:$((p + 88))"
}

# Host-side listeners the forwarder needs: each must be free.
lab2_check_ports_free() {
    local n port busy=''
    for n in 1 2; do
        for port in "${LAB2_PORTS[@]}"; do
            if ss -Htln "src 127.0.0.$n:$((LAB2_PORT_BASE + port))" 2>/dev/null | grep -q .; then
                busy+=" 127.0.0.$n:$((LAB2_PORT_BASE + port))"
            fi
        done
    done
    [[ -z $busy ]] || die "ports the two-DC lab's forwarder needs are in use:$busy (another two-DC lab under a different KCDSYNC_LAB2_DIR? choose another KCDSYNC_LAB2_PORT_BASE)"
}

fwd_pid() {
    local pid
    [[ -f $FWD_PID ]] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null <"$FWD_PID") || return 1
    [[ -n $pid ]] && pid_comm "$pid" >/dev/null || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$FWD_PY" || return 1
    echo "$pid"
}

lab2_start_forwarder() {
    local specs=() n port
    for n in 1 2; do
        for port in "${LAB2_PORTS[@]}"; do
            specs+=("127.0.0.$n:$((LAB2_PORT_BASE + port))=127.0.0.$n:$port")
        done
    done
    fwd_launch "$NETNS" "${specs[@]}"
}

# fwd_launch NETNS LISTEN=TARGET...: starts $FWD_PY (nsfwd.py) detached, its PID in $FWD_PID and
# its log in $FWD_LOG, and waits until it says it is ready. Also used by samba422.sh.
fwd_launch() {
    local netns=$1 i
    shift
    rm -f "$FWD_PID"
    : >"$FWD_LOG"
    # shellcheck disable=SC2016
    (
        exec setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' lab-fwd "$FWD_PID" \
            python3 "$FWD_PY" "$netns" "$@"
    ) </dev/null >>"$FWD_LOG" 2>&1 9>&- &
    disown $! 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        grep -q '^nsfwd: ready' "$FWD_LOG" 2>/dev/null && return 0
        [[ -s $FWD_PID ]] && ! fwd_pid >/dev/null && break
        sleep 0.05
    done
    cat "$FWD_LOG" >&2 || true
    die "the forwarder (nsfwd.py) did not start; log above ($FWD_LOG)"
}

lab2_stop_forwarder() {
    local pid i
    pid=$(fwd_pid) || { rm -f "$FWD_PID"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        fwd_pid >/dev/null || break
        sleep 0.1
    done
    fwd_pid >/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$FWD_PID"
}

# ntds_guid N: the objectGUID of DC N's "NTDS Settings" object, as text (the binary GUID's first
# three fields are little-endian), read from DC1.
ntds_guid() {
    local dn b64
    dn="CN=NTDS Settings,CN=DC$1,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,$BASE_DN"
    b64=$(ldap_as admin ldapsearch -LLL -o ldif_wrap=no -s base -b "$dn" objectGUID |
        awk '/^objectGUID:: /{print $2}')
    [[ -n $b64 ]] || die "no objectGUID for $dn"
    local b=()
    # read returns 1 at the end of its input without a newline: the bytes are read anyway.
    read -ra b < <(base64 -d <<<"$b64" | od -An -v -tx1 | tr -s ' \n' '  ') || true
    ((${#b[@]} == 16)) || die "objectGUID of $dn is not 16 bytes"
    printf '%s%s%s%s-%s%s-%s%s-%s%s-%s%s%s%s%s%s\n' "${b[3]}" "${b[2]}" "${b[1]}" "${b[0]}" \
        "${b[5]}" "${b[4]}" "${b[7]}" "${b[6]}" "${b[@]:8:8}"
}

lab2_provision_dc1() {
    use_dc 1
    local opts out
    dc_options opts "$DC_DIR" "$RUN_DIR" 127.0.0.1 "$TLS_DIR/dc1.key" "$TLS_DIR/dc1.pem"
    opts+=("${LAB2_OPTIONS[@]}")
    mkdir -p "$RUN_DIR" "$DC_DIR/log" "$DC_DIR/etc"
    if ! out=$(fence samba-tool domain provision -s "$LAB_DIR/provision-base.conf" \
        --targetdir="$DC_DIR" --realm="$REALM" --domain="$DOMAIN" --server-role=dc \
        --dns-backend=NONE --host-ip=127.0.0.1 --host-name=dc1 \
        --adminpass="$(cat "$LAB_DIR/admin.pass")" "${opts[@]}" 9>&- 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "samba-tool domain provision (dc1) failed"
    fi
    printf '%s\n' "$out" >"$DC_DIR/log/provision.log"
}

lab2_join_dc2() {
    use_dc 2
    local opts out
    dc_options opts "$DC_DIR" "$RUN_DIR" 127.0.0.2 "$TLS_DIR/dc2.key" "$TLS_DIR/dc2.pem"
    opts+=("${LAB2_OPTIONS[@]}")
    mkdir -p "$RUN_DIR" "$DC_DIR/log" "$DC_DIR/etc"
    # DC2's KDC does not exist yet: the join authenticates against DC1's (DC1's krb5.conf).
    if ! out=$(fence env KRB5_CONFIG="$LAB_DIR/dc1/krb5.conf" samba-tool domain join "$DNS_DOMAIN" DC \
        -s "$LAB_DIR/provision-base.conf" --server="dc1.$DNS_DOMAIN" \
        -U "Administrator%$(cat "$LAB_DIR/admin.pass")" --targetdir="$DC_DIR" \
        --dns-backend=NONE --no-dns-updates --realm="$REALM" \
        --option="netbios name = DC2" "${opts[@]}" 9>&- 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "samba-tool domain join (dc2) failed"
    fi
    printf '%s\n' "$out" >"$DC_DIR/log/join.log"
}

lab2_start_dc() {
    use_dc "$1"
    start_samba
    wait_ldaps
    # dnsupdate is off: the DC's own SPNs are written once (LAB-NOTES).
    fenced_krb samba_spnupdate -s "$SMB_CONF" 9>&- >>"$DC_DIR/log/spnupdate.log" 2>&1 ||
        die "samba_spnupdate ($DC_NAME) failed; see $DC_DIR/log/spnupdate.log"
}

# Right after DC2 starts, DC1 pulls each partition from DC2 once: without it, DC1 has no
# repsFrom for DC2 yet and the first DC2->DC1 change waits for the 300 s periodic pull.
lab2_initial_replication() {
    use_dc 1
    local nc t i=0
    for nc in "$BASE_DN" "CN=Configuration,$BASE_DN" "CN=Schema,CN=Configuration,$BASE_DN"; do
        t=$(now)
        fence env KRB5_CONFIG="$LAB_DIR/dc1/krb5.conf" samba-tool drs replicate dc1 dc2 "$nc" \
            -U "Administrator%$(cat "$LAB_DIR/admin.pass")" 9>&- \
            >"$LAB_DIR/dc1/log/drs-replicate-$i.log" 2>&1 || {
            cat "$LAB_DIR/dc1/log/drs-replicate-$i.log" >&2
            die "initial samba-tool drs replicate dc1 dc2 $nc failed (log above)"
        }
        log "drs replicate dc1 dc2 $nc: $(elapsed "$t") s"
        i=$((i + 1))
    done
}

# $LAB_DIR/bin/dcN-exec CMD...: CMD inside the namespace and fence, as DC N's samba sees the
# world (its krb5.conf, LAB_SMB_CONF=its smb.conf). Self-contained: it does not call this script.
lab2_write_exec_wrappers() {
    local n
    for n in 1 2; do
        {
            printf '#!/usr/bin/env bash\n# Generated by deploy/lab/lab.sh up --dcs 2: run a command inside the two-DC lab'"'"'s\n'
            printf '# network namespace and loopback fence, with dc%s'"'"'s krb5.conf.\n' "$n"
            printf 'set -euo pipefail\n'
            # shellcheck disable=SC2016  # $# and $0 belong to the generated script
            printf '(($# > 0)) || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }\n'
            printf 'exec nsenter --net=%q -- unshare --mount --propagation private -- bash -c %q lab-fence %q \\\n' \
                "$NETNS" "$FENCE_PROG" "$FENCE_DIR"
            printf '    env KRB5_CONFIG=%q LAB_SMB_CONF=%q "$@"\n' "$LAB_DIR/dc$n/krb5.conf" "$LAB_DIR/dc$n/etc/smb.conf"
        } >"$LAB_DIR/bin/dc$n-exec"
        chmod 755 "$LAB_DIR/bin/dc$n-exec"
    done
}

lab2_write_env() {
    local p=$LAB2_PORT_BASE n
    {
        cat <<EOF
# kcdsync two-DC lab: source this file. Generated by deploy/lab/lab.sh up --dcs 2. The
# administrator password is in LAB_ADMIN_PASS_FILE (mode 600), never here.
export KCDSYNC_LAB2_DIR='$LAB_DIR'
export LAB_DCS='2'
export KRB5_CONFIG='$LAB_DIR/krb5.conf'
export LAB_LDAPS_URL='ldaps://127.0.0.1:$((p + 636))'
export LAB_CA='$CA_PEM'
export LAB_BASE_DN='$BASE_DN'
export LAB_REALM='$REALM'
export LAB_DOMAIN='$DOMAIN'
export LAB_DNS_DOMAIN='$DNS_DOMAIN'
export LAB_ADMIN_DN='$ADMIN_DN'
export LAB_ADMIN_PASS_FILE='$LAB_DIR/admin.pass'
export LAB_NETNS='$NETNS'
EOF
        for n in 1 2; do
            cat <<EOF
export LAB_DC${n}_HOST='dc$n.$DNS_DOMAIN'
export LAB_DC${n}_LDAPS_URL='ldaps://127.0.0.$n:$((p + 636))'
export LAB_DC${n}_LDAP_URL='ldap://127.0.0.$n:$((p + 389))'
export LAB_DC${n}_KDC='127.0.0.$n:$((p + 88))'
export LAB_DC${n}_KRB5_CONFIG='$LAB_DIR/krb5-dc$n.conf'
export LAB_DC${n}_EXEC='$LAB_DIR/bin/dc$n-exec'
export LAB_DC${n}_SMB_CONF='$LAB_DIR/dc$n/etc/smb.conf'
export LAB_DC${n}_NTDS_GUID='$(cat "$LAB_DIR/dc$n/ntds.guid")'
EOF
        done
    } >"$LAB_ENV.tmp"
    mv "$LAB_ENV.tmp" "$LAB_ENV"
}

lab2_healthy() {
    local n
    fwd_pid >/dev/null && [[ -f $LAB_ENV ]] || return 1
    for n in 1 2; do
        use_dc "$n"
        samba_pid >/dev/null && ldaps_bind_ok || return 1
    done
}

# Stop everything a two-DC lab may have left (by PID), and the namespace.
lab2_stop_all() {
    local n
    for n in 2 1; do
        use_dc "$n"
        stop_samba
    done
    lab2_stop_forwarder
    lab2_remove_netns
}

LAB2_TIMES=''
lab2_step() { LAB2_TIMES+="${LAB2_TIMES:+, }$1 $(elapsed "$2") s"; }

cmd2_up() {
    local t0 t
    t0=$(now)
    require_root
    take_lock
    ensure_packages
    local c
    for c in nsenter ip python3 findmnt; do
        command -v "$c" >/dev/null 2>&1 || die "the two-DC lab needs $c (util-linux, iproute2, python3)"
    done
    trap up_failed_hint EXIT
    if lab2_healthy; then
        use_dc 1
        echo "lab already up ($LAB_DIR, two DCs, samba pids $(samba_pid) $(use_dc 2; samba_pid))"
        return 0
    fi
    if [[ -e $LAB_DIR ]]; then
        log "leftover two-DC lab in $LAB_DIR: stopping it and wiping the directory"
        lab2_stop_all
        wipe_lab_dir
    fi
    lab2_check_ports_free
    mkdir -p "$LAB_DIR/bin" "$LAB_DIR/dc1" "$LAB_DIR/dc2"
    chmod 755 "$LAB_DIR"
    echo "kcdsync two-DC lab directory, created by deploy/lab/lab.sh; 'lab.sh down --dcs 2 --purge' removes it" \
        >"$MARKER"
    cp "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/nsfwd.py" "$FWD_PY"
    write_fence_files
    lab2_write_hosts
    write_secret "$LAB_DIR/admin.pass"
    printf '[global]\n' >"$LAB_DIR/provision-base.conf"
    t=$(now)
    lab2_make_netns
    lab2_start_forwarder
    lab2_certs
    lab2_write_krb5_confs
    lab2_step namespace+forwarder+certs "$t"
    t=$(now)
    lab2_provision_dc1
    lab2_step "dc1 provision" "$t"
    SAMBA_STARTED=1
    t=$(now)
    lab2_start_dc 1
    use_dc 1
    ntds_guid 1 >"$LAB_DIR/dc1/ntds.guid"
    lab2_write_hosts "$(cat "$LAB_DIR/dc1/ntds.guid")"
    lab2_step "dc1 start" "$t"
    t=$(now)
    lab2_join_dc2
    use_dc 1
    ntds_guid 2 >"$LAB_DIR/dc2/ntds.guid"
    lab2_write_hosts "$(cat "$LAB_DIR/dc1/ntds.guid")" "$(cat "$LAB_DIR/dc2/ntds.guid")"
    lab2_step "dc2 join" "$t"
    t=$(now)
    lab2_start_dc 2
    lab2_step "dc2 start" "$t"
    t=$(now)
    lab2_initial_replication
    lab2_step "initial drs replicate" "$t"
    lab2_write_exec_wrappers
    lab2_write_env
    use_dc 1
    echo "two-DC lab up in $(elapsed "$t0") s ($LAB2_TIMES): dc1 $LDAPS_URL, $(use_dc 2; echo "dc2 $LDAPS_URL"), realm $REALM"
    echo "use: source $LAB_ENV"
}

cmd2_down() {
    local purge=0 t0
    t0=$(now)
    case ${1:-} in
        --purge) purge=1 ;;
        '') ;;
        *) die "down: unknown argument $1" ;;
    esac
    require_root
    take_lock
    lab2_stop_all
    if ((purge)); then
        wipe_lab_dir
        echo "two-DC lab down and removed ($(elapsed "$t0") s)"
    else
        echo "two-DC lab down ($(elapsed "$t0") s); state kept in $LAB_DIR (down --dcs 2 --purge removes it)"
    fi
}

cmd2_status() {
    local n pid line='' running=0
    fwd_pid >/dev/null && running=1
    for n in 1 2; do
        use_dc "$n"
        samba_pid >/dev/null && running=1
    done
    ((running)) || { echo "two-DC lab down: no samba and no forwarder running for $LAB_DIR" >&2; return 1; }
    [[ -f $LAB_ENV ]] || { echo "two-DC lab not ready: 'up --dcs 2' did not finish (no $LAB_ENV)" >&2; return 1; }
    fwd_pid >/dev/null || { echo "two-DC lab unhealthy: the forwarder (nsfwd.py) is not running" >&2; return 1; }
    for n in 1 2; do
        use_dc "$n"
        pid=$(samba_pid) || { echo "two-DC lab unhealthy: no running samba for $DC_NAME" >&2; return 1; }
        ldaps_bind_ok || { echo "two-DC lab unhealthy: $DC_NAME's $LDAPS_URL does not answer a verified bind" >&2; return 1; }
        line+=" $DC_NAME pid $pid $LDAPS_URL,"
    done
    echo "two-DC lab up:$line realm $REALM, dir $LAB_DIR"
}

cmd2_exec() {
    local n=1
    while (($# > 0)); do
        case $1 in
            --dc) n=${2:?--dc needs 1 or 2}; shift 2 ;;
            --dc=*) n=${1#--dc=}; shift ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [[ $n == 1 || $n == 2 ]] || die "exec: --dc must be 1 or 2"
    (($# > 0)) || die "exec: no command (usage: $PROG exec --dcs 2 [--dc N] -- CMD [ARGS...])"
    [[ -x $LAB_DIR/bin/dc$n-exec && -f $LAB_ENV ]] || die "the two-DC lab is not up; run: $PROG up --dcs 2"
    exec "$LAB_DIR/bin/dc$n-exec" "$@"
}

# stop-dc / start-dc N: one DC of a running two-DC lab stopped (by PID) and started again, the
# other untouched: "DC2 is down" for the per-DC verify's proofs. start-dc returns once the DC
# answers a verified LDAPS bind; it does not replicate by itself what it missed (dc1 notified it
# while it was down): `exec --dcs 2 --dc 2 -- samba-tool drs replicate ...` pulls it at once.
cmd2_dc_n() {
    [[ ${1:-} == 1 || ${1:-} == 2 ]] || die "$2 needs the DC's number, 1 or 2 ($PROG $2 --dcs 2 N)"
}

cmd2_stop_dc() {
    cmd2_dc_n "${1:-}" stop-dc
    require_root
    take_lock
    [[ -f $LAB_ENV ]] && lab2_netns_up || die "the two-DC lab is not up; run: $PROG up --dcs 2"
    use_dc "$1"
    stop_samba
    echo "$DC_NAME stopped"
}

cmd2_start_dc() {
    local t0
    t0=$(now)
    cmd2_dc_n "${1:-}" start-dc
    require_root
    take_lock
    [[ -f $LAB_ENV ]] && lab2_netns_up || die "the two-DC lab is not up; run: $PROG up --dcs 2"
    use_dc "$1"
    if samba_pid >/dev/null; then
        echo "$DC_NAME already running (pid $(samba_pid))"
        return 0
    fi
    lab2_start_dc "$1"
    echo "$DC_NAME started in $(elapsed "$t0") s"
}

# --------------------------------------------------------------------------------------------
main() {
    local cmd=${1:-help} dcs=1 args=()
    (($# > 0)) && shift
    # --dcs N anywhere before `--` selects the lab: 1 (the shared one-DC lab, default) or 2.
    while (($# > 0)); do
        case $1 in
            --dcs) dcs=${2:-}; shift; (($# > 0)) && shift ;;
            --dcs=*) dcs=${1#--dcs=}; shift ;;
            --) args+=("$@"); break ;;
            *) args+=("$1"); shift ;;
        esac
    done
    if [[ $dcs == 2 ]]; then
        lab2_init
        case $cmd in
            up) ((${#args[@]} == 0)) || die "up takes no arguments but --dcs"; cmd2_up ;;
            install) require_root; ensure_packages ;;
            down) cmd2_down "${args[@]}" ;;
            status) cmd2_status ;;
            exec) cmd2_exec "${args[@]}" ;;
            stop-dc) cmd2_stop_dc "${args[@]}" ;;
            start-dc) cmd2_start_dc "${args[@]}" ;;
            help | -h | --help) usage ;;
            *) die "$cmd is not available for the two-DC lab (up, down, status, exec, stop-dc, start-dc, install are)" ;;
        esac
        return
    fi
    [[ $dcs == 1 ]] || die "--dcs must be 1 or 2 (got '$dcs')"
    case $LAB_DIR in
        /*/*) ;;
        *) die "KCDSYNC_LAB_DIR must be an absolute path below a top-level directory (got '$LAB_DIR')" ;;
    esac
    case $cmd in
        up) ((${#args[@]} == 0)) || die "up takes no arguments"; cmd_up ;;
        install)
            case "${args[*]:-}" in
                '') require_root; ensure_packages ;;
                '--samba backports' | --samba=backports)
                    exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/samba422.sh" root ;;
                '--samba system' | --samba=system) require_root; ensure_packages ;;
                *) die "install: unknown arguments '${args[*]}' (install [--samba system|backports])" ;;
            esac ;;
        down) cmd_down "${args[@]}" ;;
        status) cmd_status ;;
        seed) cmd_seed "${args[@]}" ;;
        kvno) cmd_kvno "${args[@]}" ;;
        exec) cmd_exec "${args[@]}" ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

# Run main unless sourced (sourcing lets a test harness call single functions).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
