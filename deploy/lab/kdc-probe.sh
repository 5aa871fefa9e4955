#!/usr/bin/env bash
# deploy/lab/kdc-probe.sh — ask a lab's KDC what it enforces for kcdsync: classic KCD, Protected
# Users, NOT_DELEGATED, RBCD (with and without protocol transition), the migration-service SPN;
# and its LDAP server: change-notification limits, rootDSE replicateSingleObject.
#
# Runs against a lab started by deploy/lab/samba422.sh (`up` then `seed`), selected by the same
# environment variables (default: the 4.22 lab). Changes the seeded objects (UAC of HV01, RBCD on
# HV02) and adds a user dave (Protected Users), a computer SRC1 and a user erin: run it on a
# throwaway lab only, never on the shared one. Every kvno is the system's MIT kvno (the tests'),
# `kvno -U USER -P SPN` after kinit as the source computer, inside the lab's namespace and fence.
# Prints one line per case: GRANTED / REFUSED: <kvno's message>.
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
S="$HERE/samba422.sh"
L=${KCDSYNC_LAB422_DIR:-/var/tmp/kcdsync-lab422}
NETNS=${KCDSYNC_LAB422_NETNS:-/var/tmp/kcdsync-lab422.netns}
# python3-ldap lives in the 4.22 root; the probe is only a client, so it serves the 4.17 lab too.
PYROOT=${KCDSYNC_PROBE_PYROOT:-/var/tmp/samba422-root}
OU="OU=demo,OU=Hyper-V,DC=lab,DC=test"
ADMIN="CN=Administrator,CN=Users,DC=lab,DC=test"
W=$L/probe
mkdir -p "$W"; chmod 700 "$W"

ldapmod() {
    "$S" hostexec -- env LDAPTLS_CACERT="$L/ca.pem" LDAPTLS_REQCERT=demand \
        ldapmodify -x -H ldaps://127.0.0.1:636 -D "$ADMIN" -y "$L/admin.pass" >/dev/null
}
ldapq() {
    "$S" hostexec -- env LDAPTLS_CACERT="$L/ca.pem" LDAPTLS_REQCERT=demand \
        ldapsearch -x -H ldaps://127.0.0.1:636 -D "$ADMIN" -y "$L/admin.pass" -LLL -o ldif_wrap=no "$@"
}
setuac() {
    printf 'dn: CN=%s,%s\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: %s\n-\n\n' \
        "$1" "$OU" "$2" | ldapmod
}
pwfile() { [[ -s $W/$1.pass ]] || (umask 077; printf 'Kc1-%s' "$(openssl rand -hex 12)" >"$W/$1.pass"); }
b64pw() { printf '"%s"' "$(cat "$W/$1.pass")" | iconv -f UTF-8 -t UTF-16LE | base64 -w0; }
samba_tool() { "$S" exec -- samba-tool "$@" -H "$L/private/sam.ldb"; }

# kv SRC USER SPN [flags]: kinit SRC$ (keytab for HVnn, password for SRC1), kvno -U USER -P SPN.
# With "flags", also the S4U2Self ticket's flags (F = forwardable).
kv() {
    local src=$1 user=$2 spn=$3 cred
    if [[ -f $L/keytabs/${src,,}.keytab ]]; then cred="-k -t $L/keytabs/${src,,}.keytab"; else cred="pw:$W/${src,,}.pass"; fi
    # shellcheck disable=SC2016
    "$S" hostexec -- bash -c '
        cc=$(mktemp); export KRB5CCNAME=FILE:$cc; trap "rm -f $cc" EXIT
        case $1 in pw:*) kinit "$2" <"${1#pw:}" >/dev/null ;; *) kinit $1 "$2" ;; esac || { echo "kinit failed"; exit 2; }
        t0=$(date +%s%N)
        if out=$(kvno -U "$3" -P "$4" 2>&1); then r="GRANTED"; else r="REFUSED: $(printf "%s\n" "$out" | grep "^kvno: " | tail -1 | sed "s/^kvno: //")"; fi
        ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        f=""; if [ "$5" = flags ]; then f=" | S4U2Self ticket flags $(klist -f | awk -v p="$2" "/^[0-9]/ && \$NF==p {getline; print \$NF}")"; fi
        echo "$r (${ms} ms)$f"' kv "$cred" "${src^^}\$@LAB.TEST" "$user" "$spn" "${4:-}"
}
case_() { printf '%-64s ' "$1"; shift; kv "$@" || true; }

echo "# $(grep -m1 -o 'samba version [^ ]*' "$L/samba.log") — $L"

# --- fixtures -------------------------------------------------------------------------------
pwfile dave; pwfile erin; pwfile src1
exists() { ldapq -s base -b "$1" dn >/dev/null 2>&1; }
if ! exists "CN=dave,CN=Users,DC=lab,DC=test"; then
    printf 'dn: CN=dave,CN=Users,DC=lab,DC=test\nchangetype: add\nobjectClass: user\nsAMAccountName: dave\nuserPrincipalName: dave@lab.test\nuserAccountControl: 512\nunicodePwd:: %s\n\ndn: CN=Protected Users,CN=Users,DC=lab,DC=test\nchangetype: modify\nadd: member\nmember: CN=dave,CN=Users,DC=lab,DC=test\n-\n\n' "$(b64pw dave)" | ldapmod
fi
if ! exists "CN=erin,CN=Users,DC=lab,DC=test"; then
    printf 'dn: CN=erin,CN=Users,DC=lab,DC=test\nchangetype: add\nobjectClass: user\nsAMAccountName: erin\nuserPrincipalName: erin@lab.test\nuserAccountControl: 512\nunicodePwd:: %s\n\n' "$(b64pw erin)" | ldapmod
fi
if ! exists "CN=SRC1,$OU"; then
    printf 'dn: CN=SRC1,%s\nchangetype: add\nobjectClass: computer\nsAMAccountName: SRC1$\ndNSHostName: src1.lab.test\nuserAccountControl: 4096\nunicodePwd:: %s\nservicePrincipalName: HOST/src1.lab.test\nservicePrincipalName: HOST/SRC1\n\n' "$OU" "$(b64pw src1)" | ldapmod
fi
setuac SRC1 4096
samba_tool delegation del-principal 'HV02$' 'SRC1$' >/dev/null 2>&1 || true

echo "## classic KCD (HV01 lists cifs/hv02, cifs/fs01, the migration SPNs of HV02-04, HTTP/web01)"
setuac HV01 4096
case_ "HV01 Kerberos-only (uac 4096), alice -> cifs/hv02.lab.test" HV01 alice cifs/hv02.lab.test
setuac HV01 $((4096 | 0x1000000))
case_ "HV01 uac 0x1000000, alice -> cifs/hv02.lab.test" HV01 alice cifs/hv02.lab.test flags
case_ "HV01 uac 0x1000000, alice -> cifs/HV02" HV01 alice cifs/HV02
case_ "HV01 uac 0x1000000, alice -> cifs/fs01.lab.test" HV01 alice cifs/fs01.lab.test
case_ "HV01 uac 0x1000000, alice -> host/hv02.lab.test (not listed)" HV01 alice host/hv02.lab.test
case_ "HV01 uac 0x1000000, bob (NOT_DELEGATED) -> cifs/hv02" HV01 bob cifs/hv02.lab.test flags
case_ "HV01 uac 0x1000000, dave (Protected Users) -> cifs/hv02" HV01 dave cifs/hv02.lab.test flags
case_ "HV01 uac 0x1000000, carol (disabled) -> cifs/hv02" HV01 carol cifs/hv02.lab.test

echo "## Protected Users, dave's own TGT (kinit -f with his password)"
# shellcheck disable=SC2016
"$S" hostexec -- bash -c 'cc=$(mktemp); export KRB5CCNAME=FILE:$cc; trap "rm -f $cc" EXIT
    kinit -f dave@LAB.TEST <"$1" >/dev/null && klist -f | awk "/krbtgt/{s=\$1\" \"\$2; e=\$3\" \"\$4; getline; print \"dave TGT: start \" s \", end \" e \", \" \$NF}"' x "$W/dave.pass"

echo "## migration-service SPN (space in the service name)"
MIG="Microsoft Virtual System Migration Service"
case_ "HV01 uac 0x1000000, alice -> $MIG/hv02.lab.test" HV01 alice "$MIG/hv02.lab.test"
case_ "HV01 uac 0x1000000, alice -> $MIG/HV02" HV01 alice "$MIG/HV02"
case_ "same, written with backslash escapes" HV01 alice 'Microsoft\ Virtual\ System\ Migration\ Service/hv02.lab.test'
printf '%-64s ' "HV01 plain TGS (kvno, no S4U) -> $MIG/hv02.lab.test"
# shellcheck disable=SC2016
"$S" hostexec -- bash -c 'cc=$(mktemp); export KRB5CCNAME=FILE:$cc; trap "rm -f $cc" EXIT
    kinit -k -t "$1" "HV01\$@LAB.TEST"; if out=$(kvno "$2" 2>&1); then echo GRANTED; else echo "REFUSED: ${out#kvno: }"; fi' \
    x "$L/keytabs/hv01.keytab" "$MIG/hv02.lab.test" || true

echo "## RBCD: HV02's msDS-AllowedToActOnBehalfOfOtherIdentity grants SRC1 (no msDS-AllowedToDelegateTo on SRC1)"
case_ "before RBCD: SRC1 uac 4096, alice -> cifs/hv02.lab.test" SRC1 alice cifs/hv02.lab.test
samba_tool delegation add-principal 'HV02$' 'SRC1$' >/dev/null
# The descriptor samba-tool wrote, written back over LDAP by Administrator after removing it.
SD=$(ldapq -s base -b "CN=HV02,$OU" msDS-AllowedToActOnBehalfOfOtherIdentity | sed -n 's/^msDS-AllowedToActOnBehalfOfOtherIdentity:: //p')
samba_tool delegation del-principal 'HV02$' 'SRC1$' >/dev/null
printf '%-64s ' "LDAP add of that descriptor as Administrator"
printf 'dn: CN=HV02,%s\nchangetype: modify\nadd: msDS-AllowedToActOnBehalfOfOtherIdentity\nmsDS-AllowedToActOnBehalfOfOtherIdentity:: %s\n-\n\n' "$OU" "$SD" |
    "$S" hostexec -- env LDAPTLS_CACERT="$L/ca.pem" LDAPTLS_REQCERT=demand \
        ldapmodify -x -H ldaps://127.0.0.1:636 -D "$ADMIN" -y "$L/admin.pass" 2>&1 | grep -E 'ldap_modify|additional info|^modifying' | tr '\n\t' '  ' || true
echo
samba_tool delegation del-principal 'HV02$' 'SRC1$' >/dev/null 2>&1 || true
samba_tool delegation add-principal 'HV02$' 'SRC1$' >/dev/null
case_ "RBCD, SRC1 uac 4096 (S4U2Self not forwardable), alice" SRC1 alice cifs/hv02.lab.test flags
setuac SRC1 $((4096 | 0x1000000))
case_ "RBCD, SRC1 uac 0x1000000, alice -> cifs/hv02.lab.test" SRC1 alice cifs/hv02.lab.test flags
case_ "RBCD, SRC1 uac 0x1000000, erin -> cifs/hv02.lab.test" SRC1 erin cifs/hv02.lab.test
case_ "RBCD, SRC1 uac 0x1000000, bob (NOT_DELEGATED)" SRC1 bob cifs/hv02.lab.test flags
case_ "RBCD, SRC1 uac 0x1000000, dave (Protected Users)" SRC1 dave cifs/hv02.lab.test flags
case_ "RBCD, SRC1 uac 0x1000000, alice -> cifs/hv03.lab.test (no RBCD)" SRC1 alice cifs/hv03.lab.test
samba_tool delegation del-principal 'HV02$' 'SRC1$' >/dev/null
case_ "RBCD removed (del-principal), SRC1 uac 0x1000000, alice" SRC1 alice cifs/hv02.lab.test
setuac SRC1 4096

echo "## LDAP: change notification, replicateSingleObject"
cp "$L/ca.pem" "$PYROOT/tmp/kdc-probe-ca.pem"
cp "$L/admin.pass" "$PYROOT/tmp/kdc-probe-admin.pass"; chmod 600 "$PYROOT/tmp/kdc-probe-admin.pass"
cp "$HERE/notify_probe.py" "$PYROOT/tmp/kdc-probe-notify.py"
# In the namespace and behind the same resolver fence as everything else (the lab's fence files
# over the root's /etc), though the probe only connects to 127.0.0.1 by address.
# shellcheck disable=SC2016
nsenter --net="$NETNS" -- unshare --mount --propagation private -- bash -c '
    for n in resolv.conf hosts nsswitch.conf; do mount --bind "$1/$n" "$2/etc/$n"; done
    shift 2; exec chroot "$@"' probe-fence "$L/fence" "$PYROOT" "$PYROOT" python3 /tmp/kdc-probe-notify.py ldaps://127.0.0.1:636 \
    /tmp/kdc-probe-ca.pem "$ADMIN" /tmp/kdc-probe-admin.pass "$OU" || echo "notify_probe.py failed (rc $?)"
rm -f "$PYROOT/tmp/kdc-probe-ca.pem" "$PYROOT/tmp/kdc-probe-admin.pass" "$PYROOT/tmp/kdc-probe-notify.py"
