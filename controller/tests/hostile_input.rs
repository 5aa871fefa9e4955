//! Property tests of the controller's parsers of input: DNs, host names, its TOML config and
//! what agents send. Whatever text or bytes arrive, the answer is a value or a clear error,
//! never a panic; accepted values keep the invariants the rest of the controller relies on.

use std::path::PathBuf;
use std::sync::LazyLock;

use kcdsync_controller::config::Config;
use kcdsync_controller::grpc::validate::{EARLIEST_MS, MAX_AHEAD_MS, validate};
use kcdsync_controller::model::dn::Dn;
use kcdsync_controller::model::names::HostName;
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::*;
use proptest::prelude::*;
use prost::Message;

/// Modest, so the suite stays fast; no regression files written into the tree.
fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----------------------------------------------------------------------------------------
// Distinguished names
// ----------------------------------------------------------------------------------------

/// One character of an attribute value written the way `how` says: raw where RFC 4514 allows
/// it, `\c` for specials, or its UTF-8 bytes as `\XX` escapes.
fn write_char(c: char, hex: bool, first: bool, last: bool, out: &mut String) {
    let special = ",+\"\\<>;=".contains(c) || (c == '#' && first) || (c == ' ' && (first || last));
    if hex || c.is_control() {
        let mut b = [0u8; 4];
        for byte in c.encode_utf8(&mut b).bytes() {
            out.push_str(&format!("\\{byte:02X}"));
        }
    } else if special {
        out.push('\\');
        out.push(c);
    } else {
        out.push(c);
    }
}

/// A DN written from (type, value) pairs, each value character raw or hex per `hex`.
fn write_dn(rdns: &[(String, String)], hex: &[bool]) -> String {
    let mut out = String::new();
    let mut k = 0;
    for (i, (ty, value)) in rdns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(ty);
        out.push('=');
        let n = value.chars().count();
        for (j, c) in value.chars().enumerate() {
            write_char(c, hex[k % hex.len()], j == 0, j + 1 == n, &mut out);
            k += 1;
        }
    }
    out
}

fn rdns() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        ("[A-Za-z][A-Za-z0-9-]{0,8}", "\\PC{1,12}|[ ,+#=\\\\\"<>;é🔑a]{1,6}"),
        1..5,
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_string_is_a_dn_or_an_error_naming_it(s in "\\PC{0,60}|[A-Za-z=,+\\\\#\"<>; 0-9a-fé\u{0}]{0,40}") {
        match Dn::parse(&s) {
            Ok(d) => prop_assert_eq!(Dn::parse(&d.normalized()).unwrap(), d),
            Err(e) => prop_assert!(e.to_string().contains("is not a valid distinguished name"), "{}", e),
        }
    }

    #[test]
    fn a_written_dn_parses_back_however_it_is_escaped(rdns in rdns(), hex in prop::collection::vec(any::<bool>(), 1..16)) {
        let raw = write_dn(&rdns, &[false]);
        let mixed = write_dn(&rdns, &hex);
        let all_hex = write_dn(&rdns, &[true]);
        let d = Dn::parse(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&Dn::parse(&mixed).unwrap(), &d, "{} vs {}", raw, mixed);
        prop_assert_eq!(&Dn::parse(&all_hex).unwrap(), &d, "{} vs {}", raw, all_hex);
        prop_assert_eq!(Dn::parse(&d.normalized()).unwrap(), d);
    }

    #[test]
    fn escapes_of_bytes_that_are_not_utf8_are_an_error(bytes in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut dn = String::from("CN=");
        for b in &bytes {
            dn.push_str(&format!("\\{b:02x}"));
        }
        dn.push_str(",DC=x");
        match (Dn::parse(&dn), std::str::from_utf8(&bytes)) {
            (Ok(_), Ok(_)) => {}
            (Err(e), Err(_)) => {
                prop_assert!(e.to_string().contains("do not decode as UTF-8"), "{}", e);
                prop_assert!(e.to_string().contains(&dn), "{}", e);
            }
            (got, utf8) => prop_assert!(false, "{}: parse {:?} but UTF-8 {:?}", dn, got, utf8),
        }
    }

    // ------------------------------------------------------------------------------------
    // Host names
    // ------------------------------------------------------------------------------------

    #[test]
    fn accepted_host_names_hold_no_ldap_filter_metacharacters(s in "\\PC{0,40}|[a-zA-Z0-9.()*\\\\&|!=<>~ -]{0,20}") {
        if let Ok(h) = HostName::parse(&s) {
            let name = h.as_str();
            prop_assert!(!name.is_empty());
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'), "{:?}", name);
            prop_assert!(!name.contains(['(', ')', '*', '\\', '&', '|', '!', '=', '<', '>', '~', '\0', ' ']));
        }
    }

    // ------------------------------------------------------------------------------------
    // The controller's config
    // ------------------------------------------------------------------------------------

    #[test]
    fn any_text_is_a_config_or_an_error(text in "\\PC{0,200}") {
        let _ = Config::parse(&text, &CONFIG_DIR.join("kcdsync.toml"));
    }

    #[test]
    fn a_config_with_one_odd_value_is_refused_by_that_key(key in 0..CONFIG_KEYS.len(), value in toml_value()) {
        let (name, _) = CONFIG_KEYS[key];
        let text = config_text(Some((key, &value)));
        if let Err(e) = Config::parse(&text, &CONFIG_DIR.join("kcdsync.toml")) {
            prop_assert!(e.to_string().contains(name), "setting {} = {} gave: {}", name, value, e);
        }
    }

    // ------------------------------------------------------------------------------------
    // Agent messages
    // ------------------------------------------------------------------------------------

    #[test]
    fn arbitrary_bytes_decode_to_an_error_or_a_checked_message(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = AgentMessage::decode(bytes.as_slice()) {
            checked(&m)?;
        }
        let _ = HostReport::decode(bytes.as_slice());
        let _ = MigrationAttempts::decode(bytes.as_slice());
    }

    #[test]
    fn any_bytes_as_a_renewal_csr_are_refused_never_granted_nor_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        pem in any::<bool>(),
    ) {
        // As sent raw (DER) or inside a PEM block the way an agent sends its CSR.
        let csr = if pem {
            use std::io::Write;
            let mut text = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
            let b64: String = bytes.iter().map(|b| (b'A' + b % 26) as char).collect();
            let _ = writeln!(text, "{b64}");
            text.extend_from_slice(b"-----END CERTIFICATE REQUEST-----\n");
            text
        } else {
            bytes
        };
        prop_assert!(kcdsync_controller::certs::check_csr(&csr, "hv01.lab.test").is_err());
    }

    #[test]
    fn attempts_with_any_times_roles_and_ids_are_checked(
        seconds in prop_oneof![any::<i64>(), (NOW / 1000 - 86_400 * 400)..(NOW / 1000 + 86_400 * 2)],
        nanos in prop_oneof![any::<i32>(), 0..1_000_000_000i32],
        role in prop_oneof![any::<i32>(), 0..3i32],
        id in "\\PC{0,8}|.{500,520}",
    ) {
        let m = AgentMessage {
            seq: u64::MAX,
            body: Some(Body::Attempts(MigrationAttempts {
                attempts: vec![MigrationAttempt {
                    attempt_id: id,
                    time: Some(prost_types::Timestamp { seconds, nanos }),
                    role,
                    error_code: u32::MAX,
                    event_id: u32::MAX,
                    ..Default::default()
                }],
            })),
        };
        let decoded = AgentMessage::decode(m.encode_to_vec().as_slice()).unwrap();
        checked(&decoded)?;
        if validate(&decoded, NOW).is_ok() {
            let ms = kcdsync_proto::checked_ms_from_timestamp(&prost_types::Timestamp { seconds, nanos }).unwrap();
            prop_assert!((EARLIEST_MS..=NOW + MAX_AHEAD_MS).contains(&ms));
        }
    }
}

const NOW: i64 = 1_800_000_000_000;

/// Validation answers Ok or INVALID_ARGUMENT with a message naming the field.
fn checked(m: &AgentMessage) -> Result<(), TestCaseError> {
    if let Err(s) = validate(m, NOW) {
        prop_assert_eq!(s.code(), tonic::Code::InvalidArgument, "{:?}", s);
        prop_assert!(
            s.message().starts_with("report.") || s.message().starts_with("attempts["),
            "{}",
            s.message()
        );
    }
    Ok(())
}

/// A directory holding the files a config names (a password file, a CA file).
static CONFIG_DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    // Secret files must be private (the config refuses any other mode).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
});

/// Every key of a plausible config, with its usual value. The name is what an error about the
/// key must mention.
const CONFIG_KEYS: [(&str, &str); 12] = [
    ("url", "\"ldaps://127.0.0.1\""),
    ("ca_file", "\"pw\""),
    ("bind_dn", "\"CN=svc,CN=Users,DC=lab,DC=test\""),
    ("password_file", "\"pw\""),
    ("timeout_secs", "10"),
    ("page_size", "500"),
    ("base_dns", "[\"OU=Hyper-V,DC=lab,DC=test\"]"),
    ("max_hosts_per_apply", "50"),
    ("interval_secs", "300"),
    ("name", "\"a\""),
    ("mode", "\"enforce\""),
    ("hosts", "[\"hv01.lab.test\", \"HV02\"]"),
];

fn config_text(replace: Option<(usize, &str)>) -> String {
    let v = |i: usize| match replace {
        Some((k, value)) if k == i => value.to_owned(),
        _ => CONFIG_KEYS[i].1.to_owned(),
    };
    let line = |i: usize| format!("{} = {}\n", CONFIG_KEYS[i].0, v(i));
    let mut t = String::from("[ad]\n");
    (0..6).for_each(|i| t.push_str(&line(i)));
    t.push_str(&format!("[scope]\n{}[guard]\n{}", line(6), line(7)));
    t.push_str(&format!("[reconcile]\n{}[[group]]\n", line(8)));
    (9..12).for_each(|i| t.push_str(&line(i)));
    t
}

/// A TOML value as written in a file: numbers out of every range, strings of anything, bools,
/// arrays.
fn toml_value() -> impl Strategy<Value = String> {
    let string = "\\PC{0,30}".prop_map(|s| toml::Value::String(s).to_string());
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        Just("99999999999999999999999".to_owned()),
        Just("-0".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        string.clone(),
        prop::collection::vec(string, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

#[test]
fn the_plausible_config_is_valid_as_written() {
    Config::parse(&config_text(None), &CONFIG_DIR.join("kcdsync.toml")).unwrap();
}
