#!/usr/bin/env python3
"""notify_probe.py URL CA BIND_DN PASS_FILE BASE — what a DC does with LDAP change notification
(control 1.2.840.113556.1.4.528) and the rootDSE replicateSingleObject operation.

Used by deploy/lab/kdc-probe.sh (deploy/lab/README.md, "Samba 4.22 (bookworm-backports)").
Needs python3-ldap (installed in the 4.22 root; a client only). Prints one line per finding.
"""
import sys
import time

import ldap
from ldap.controls import LDAPControl

NOTIFY = "1.2.840.113556.1.4.528"
url, ca, dn, pass_file, base = sys.argv[1:6]
password = open(pass_file).read().strip()


def connect():
    c = ldap.initialize(url)
    c.set_option(ldap.OPT_X_TLS_CACERTFILE, ca)
    c.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    c.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    c.set_option(ldap.OPT_NETWORK_TIMEOUT, 10)
    c.simple_bind_s(dn, password)
    return c


def err(e):
    a = e.args[0] if e.args else {}
    return "rc %s %r" % (a.get("result"), a.get("info") or a.get("desc"))


def watch(c, scope=ldap.SCOPE_SUBTREE, filt="(objectClass=*)", b=None):
    return c.search_ext(b or base, scope, filt, ["uSNChanged"],
                        serverctrls=[LDAPControl(NOTIFY, True, None)])


def state(c, msgid, wait=0.5):
    """'pending' (accepted, waiting for changes), 'entry' (a notification), or the error."""
    try:
        r = c.result3(msgid, all=0, timeout=wait)
    except ldap.TIMEOUT:
        return "pending"
    except ldap.LDAPError as e:
        return "refused: " + err(e)
    if r[0] is None:
        return "pending"
    return "entry" if r[1] else "done(%s)" % r[0]


c = connect()
# 1. How many notification searches one connection may hold.
ids = [watch(c) for _ in range(8)]
states = [state(c, i) for i in ids]
for n, s in enumerate(states, 1):
    print("notify search #%d on one connection: %s" % (n, s))
accepted = sum(1 for s in states if s == "pending")
print("notify: %d of 8 accepted on one connection" % accepted)

# 2. Abandon one accepted search: is its slot free again?
if accepted:
    c.abandon(ids[0])
    time.sleep(0.2)
    print("notify: after abandoning #1, a new search: %s" % state(c, watch(c)))

# 3. Another connection has its own slots.
c2 = connect()
print("notify: first search on a second connection: %s" % state(c2, watch(c2)))

# 4. Filters.
for f in ("(objectClass=computer)", "(objectClass=*)"):
    c3 = connect()
    print("notify: filter %s: %s" % (f, state(c3, watch(c3, filt=f))))
    c3.unbind_s()

# 5. Latency: a write on another connection, time until a watch on its own connection sees it
#    (5 samples: modify the description of an OU created for the probe).
c4 = connect()
w = connect()
target = "OU=notify-probe,%s" % base
try:
    w.delete_s(target)
except ldap.NO_SUCH_OBJECT:
    pass
w.add_s(target, [("objectClass", [b"organizationalUnit"]), ("ou", [b"notify-probe"])])
mid = c4.search_ext(target, ldap.SCOPE_BASE, "(objectClass=*)", ["uSNChanged"],
                    serverctrls=[LDAPControl(NOTIFY, True, None)])
state(c4, mid, 0.3)
samples = []
for i in range(5):
    t0 = time.monotonic()
    w.modify_s(target, [(ldap.MOD_REPLACE, "description", [b"probe %d" % i])])
    seen = None
    while time.monotonic() - t0 < 10:
        try:
            r = c4.result3(mid, all=0, timeout=10)
        except ldap.TIMEOUT:
            continue
        if r[1]:
            seen = time.monotonic() - t0
            break
    samples.append("%.1f ms" % (seen * 1000) if seen is not None else "NOT within 10 s")
    time.sleep(0.2)
print("notify: modify seen after " + ", ".join(samples))
w.delete_s(target)

# 6. rootDSE replicateSingleObject (MS-ADTS 3.1.1.3.3.14): value "<source DSA DN>:<object DN>".
dsa = w.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["dsServiceName"])[0][1]["dsServiceName"][0]
val = dsa + b":" + base.encode()
try:
    w.modify_s("", [(ldap.MOD_REPLACE, "replicateSingleObject", [val])])
    print("replicateSingleObject: accepted (rc 0)")
except ldap.LDAPError as e:
    print("replicateSingleObject: " + err(e))
