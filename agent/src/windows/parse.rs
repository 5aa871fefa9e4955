//! Pure parsers for what the Windows probe's commands print, one module per
//! output shape, each with its tests on the recorded samples in
//! `agent/fixtures/windows/`. No I/O here: [`crate::probe::windows`] runs
//! the commands, these turn their output into `kcdsync.v1` messages. Every
//! parser is total: hostile or garbled input gives a [`ParseError`] (or an
//! `UNSPECIFIED` enum value for an unknown number), never a panic; the fuzz
//! test below holds every parser to that.

use serde_json::Value;

mod events;
mod json;
mod klist;
mod message;
mod networks;
mod os;
mod services;
mod vmhost;

pub use events::{VmmsEventBatch, parse_event_time, parse_vmms_event_batch, parse_vmms_events};
pub use klist::parse_klist;
pub use message::{
    MigrationOutcome, classify_message, parse_error_code, parse_peer_host, parse_role, parse_vm_id, parse_vm_name,
};
pub use networks::parse_migration_networks;
pub use os::{parse_host_identity, parse_os_and_device_guard};
pub use services::parse_services;
pub use vmhost::{VmHostInfo, parse_vmhost, parse_vmhost_info};

/// Why an output could not be read. Values quoted in messages are cut to a
/// short snippet, so a huge hostile string never makes a huge error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: property `{field}` is missing")]
    Missing { what: String, field: &'static str },
    #[error("{what}: property `{field}` should be {expected}, found {found}")]
    WrongType {
        what: String,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: property `{field}` is out of range: {value}")]
    OutOfRange {
        what: String,
        field: &'static str,
        value: String,
    },
    #[error("{what}: property `{field}` is not a date PowerShell writes: {value}")]
    BadDate {
        what: String,
        field: &'static str,
        value: String,
    },
    #[error("klist line {line_no}: unrecognized line {line}")]
    KlistLine { line_no: usize, line: String },
    #[error("klist line {line_no}: {problem}: {line}")]
    KlistValue {
        line_no: usize,
        problem: &'static str,
        line: String,
    },
    #[error("klist ticket #{index} has no `{field}` line (truncated output?)")]
    KlistIncomplete { index: usize, field: &'static str },
    #[error("klist announced {announced} cached tickets but printed {found} (truncated output?)")]
    KlistCount { announced: u64, found: usize },
    #[error("klist printed no `Cached Tickets: (N)` line")]
    KlistNoCount,
    #[error("klist failed: {0}")]
    KlistFailed(String),
}

const SNIPPET_CHARS: usize = 120;

/// `s` quoted, cut to [`SNIPPET_CHARS`] characters.
fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {}", snippet(&n.to_string())),
        Value::String(s) => format!("string {}", snippet(s)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// 1 to `max_digits` ASCII digits.
fn small_number(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The recorded outputs and small helpers every parser's tests use.
#[cfg(test)]
pub(crate) mod fixtures {
    use prost_types::Timestamp;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/windows/", $name))
        };
    }

    pub const VMHOST_PS51: &str = fixture!("vmhost_ps51.json");
    pub const VMHOST_PS7: &str = fixture!("vmhost_ps7.json");
    pub const NETS_EMPTY: &str = fixture!("migration_networks_empty.txt");
    pub const NETS_ONE: &str = fixture!("migration_networks_one_ps51.json");
    pub const NETS_MANY: &str = fixture!("migration_networks_many_ps51.json");
    pub const SERVICES_PS51: &str = fixture!("services_ps51.json");
    pub const SERVICES_SINGLE_PS7: &str = fixture!("services_single_ps7.json");
    pub const OS_WS2022: &str = fixture!("os_ps51_ws2022.json");
    pub const OS_WS2025: &str = fixture!("os_ps7_ws2025_credguard.json");
    pub const OS_NO_DG: &str = fixture!("os_ps51_no_deviceguard.json");
    pub const KLIST_USER: &str = fixture!("klist_user_s12.txt");
    pub const KLIST_SYSTEM: &str = fixture!("klist_system_hv01.txt");
    pub const KLIST_EMPTY: &str = fixture!("klist_system_empty.txt");
    pub const KLIST_FR: &str = fixture!("klist_fr_s15.txt");
    pub const KLIST_FAILED: &str = fixture!("klist_failed_s16.txt");
    pub const KLIST_PURGE: &str = fixture!("klist_purge_s13.txt");
    pub const EVENTS_EMPTY: &str = fixture!("events_empty.txt");
    pub const EVENTS_SEED: &str = fixture!("events_ps51_seed_single.json");
    pub const EVENTS_PS51: &str = fixture!("events_ps51_array.json");
    pub const EVENTS_PS7: &str = fixture!("events_ps7_array.json");

    pub const ALL_FIXTURES: &[(&str, &str)] = &[
        ("vmhost_ps51", VMHOST_PS51),
        ("vmhost_ps7", VMHOST_PS7),
        ("nets_empty", NETS_EMPTY),
        ("nets_one", NETS_ONE),
        ("nets_many", NETS_MANY),
        ("services_ps51", SERVICES_PS51),
        ("services_single_ps7", SERVICES_SINGLE_PS7),
        ("os_ws2022", OS_WS2022),
        ("os_ws2025", OS_WS2025),
        ("os_no_dg", OS_NO_DG),
        ("klist_user", KLIST_USER),
        ("klist_system", KLIST_SYSTEM),
        ("klist_empty", KLIST_EMPTY),
        ("klist_fr", KLIST_FR),
        ("klist_failed", KLIST_FAILED),
        ("klist_purge", KLIST_PURGE),
        ("events_empty", EVENTS_EMPTY),
        ("events_seed", EVENTS_SEED),
        ("events_ps51", EVENTS_PS51),
        ("events_ps7", EVENTS_PS7),
    ];

    pub const HV01: &str = "hv01.contoso.com";

    pub fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    pub fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::klist::parse_klist_time;
    use super::*;

    // --- hostile input --------------------------------------------------

    /// Deterministic pseudo-random numbers (no extra dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    fn char_boundaries(s: &str) -> Vec<usize> {
        s.char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect()
    }

    fn variants(s: &str, rng: &mut Lcg) -> Vec<String> {
        let mut out = Vec::new();
        let b = char_boundaries(s);
        let step = (b.len() / 150).max(1);
        for &cut in b.iter().step_by(step) {
            out.push(s[..cut].to_string());
            out.push(s[cut..].to_string());
        }
        const JUNK: &[&str] = &[
            "\"",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "0",
            "9",
            "\t",
            "\n",
            "\r\n",
            "#",
            "#0>",
            ">",
            "(",
            ")",
            "/",
            "-",
            "0x",
            "é",
            "\u{FFFD}",
            "\\",
            "\\u0000",
            "99",
            "-1",
            "1e999",
            "18446744073709551616",
            "null",
            "true",
            "Ticket Flags",
            "Cached Tickets: (",
            " : ",
            "'",
            "with host ",
            "at migration source ",
            "/Date(",
            "0x8009030E",
            "-2146893042",
        ];
        for _ in 0..250 {
            let mut v = s.to_string();
            for _ in 0..=rng.next(3) {
                let bv = char_boundaries(&v);
                let at = bv[rng.next(bv.len())];
                match rng.next(3) {
                    0 => v.insert_str(at, JUNK[rng.next(JUNK.len())]),
                    1 => {
                        let end = bv[(bv.iter().position(|&x| x == at).unwrap() + 1 + rng.next(8)).min(bv.len() - 1)];
                        v.replace_range(at..end, "");
                    }
                    _ => {
                        let end = bv[(bv.iter().position(|&x| x == at).unwrap() + 1).min(bv.len() - 1)];
                        v.replace_range(at..end, JUNK[rng.next(JUNK.len())]);
                    }
                }
            }
            out.push(v);
        }
        // Bogus numbers everywhere, duplicated lines, huge strings.
        out.push(s.replace(|c: char| c.is_ascii_digit(), "9"));
        out.push(s.replace('1', "99").replace('4', "-4"));
        out.push(s.lines().flat_map(|l| [l, l]).collect::<Vec<_>>().join("\n"));
        out.push(s.replace('"', ""));
        out.push(s.replace(':', ""));
        let mid = b[b.len() / 2];
        out.push(format!("{}{}{}", &s[..mid], "A".repeat(1 << 20), &s[mid..]));
        out.push(format!("{}{}{}", &s[..mid], "[".repeat(10_000), &s[mid..]));
        out
    }

    fn run_every_parser(input: &str) {
        let _ = parse_vmhost_info(input);
        let _ = parse_migration_networks(input);
        let _ = parse_services(input);
        let _ = parse_os_and_device_guard(input);
        let _ = parse_host_identity(input);
        let _ = parse_klist(input);
        let _ = parse_vmms_event_batch(input, HV01);
        let _ = parse_vmms_event_batch(input, "");
        let _ = parse_error_code(input);
        let _ = classify_message(input, HV01);
        let _ = parse_event_time(input);
        let _ = parse_klist_time(input);
    }

    #[test]
    fn fuzz_every_fixture_never_panics() {
        let mut rng = Lcg(0x006b_6364_7379_6e63);
        let mut n = 0;
        for (name, text) in ALL_FIXTURES {
            for v in variants(text, &mut rng) {
                // A panic fails the test and names the input.
                let r = std::panic::catch_unwind(|| run_every_parser(&v));
                assert!(r.is_ok(), "panic on a variant of {name}: {:?}", snippet(&v));
                n += 1;
            }
        }
        assert!(n > 5_000, "{n} variants");
    }
}
