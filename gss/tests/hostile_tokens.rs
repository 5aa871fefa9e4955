//! Whatever bytes an unauthenticated caller sends as a token and a MIC, the acceptor answers
//! with an error and nothing else: no panic, no crash inside the C library, no acceptance.
//! The acceptor has a real keytab (made offline by MIT's ktutil for a principal no KDC knows),
//! so the bytes reach MIT's token parsing, not just a missing-file error.

use std::io::Write;
use std::process::{Command, Stdio};

use kcdsync_gss::Acceptor;
use proptest::prelude::*;

/// One keytab for the whole file (ktutil per case would dominate the run).
fn acceptor() -> &'static Acceptor {
    static ACC: std::sync::OnceLock<(tempfile::TempDir, Acceptor)> = std::sync::OnceLock::new();
    &ACC.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let acc = make_acceptor(dir.path());
        (dir, acc)
    })
    .1
}

fn make_acceptor(dir: &std::path::Path) -> Acceptor {
    let keytab = dir.join("svc.keytab");
    let principal = "kcdsync/ctl.hostile.test@HOSTILE.TEST";
    let mut child = Command::new("ktutil")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ktutil (krb5-user; deploy/lab/lab.sh install)");
    write!(
        child.stdin.take().unwrap(),
        "addent -password -p {principal} -k 1 -e aes256-cts-hmac-sha1-96 -s HOSTILE.TESTsvc\nNot-a-real-Pw1\nwkt {}\nquit\n",
        keytab.display()
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let acc = Acceptor {
        principal: principal.into(),
        keytab,
    };
    acc.check().expect("the keytab holds the principal's key");
    acc
}

/// A GSS-API initial token's framing (RFC 2743 3.1) around the Kerberos OID and `inner`.
fn framed(inner: &[u8]) -> Vec<u8> {
    let oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02";
    let body_len = oid.len() + 2 + inner.len();
    let mut t = vec![0x60];
    if body_len < 128 {
        t.push(body_len as u8);
    } else {
        t.extend([0x82, (body_len >> 8) as u8, body_len as u8]);
    }
    t.extend_from_slice(oid);
    t.extend_from_slice(b"\x01\x00"); // TOK_ID of an AP-REQ
    t.extend_from_slice(inner);
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_are_never_accepted(token in proptest::collection::vec(any::<u8>(), 0..4096),
                                       mic in proptest::collection::vec(any::<u8>(), 0..300)) {
        let acc = acceptor();
        prop_assert!(acc.accept(&token, b"csr", &mic).is_err());
    }

    #[test]
    fn framed_garbage_is_never_accepted(inner in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let acc = acceptor();
        prop_assert!(acc.accept(&framed(&inner), b"csr", b"0123456789abcdef0123456789ab").is_err());
    }
}

#[test]
fn oversized_tokens_and_signatures_are_refused_before_the_library_sees_them() {
    let acc = acceptor();
    let e = acc
        .accept(&vec![0x60; kcdsync_gss::MAX_TOKEN + 1], b"csr", b"mic")
        .unwrap_err();
    assert!(e.to_string().contains("expected 1..="), "{e}");
    let e = acc
        .accept(b"\x60\x00", b"csr", &[0; kcdsync_gss::MAX_MIC + 1])
        .unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
}
