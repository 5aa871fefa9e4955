//! What a VMMS event message says about a migration: outcome, the local
//! host's role, VM, peer host and error code. The event id alone does not
//! tell success from failure reliably, and the details exist only in the
//! text, so the text is read, defensively: only its start is scanned and
//! every helper is total.

use kcdsync_proto::v1::MigrationRole;

/// Only the start of a message is scanned for names and codes.
const MAX_SCAN_BYTES: usize = 64 * 1024;

/// The first [`MAX_SCAN_BYTES`] of `s`, cut on a character boundary.
fn scan_window(s: &str) -> &str {
    if s.len() <= MAX_SCAN_BYTES {
        return s;
    }
    let mut end = MAX_SCAN_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
/// What a VMMS message says about a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationOutcome {
    pub success: bool,
    pub role: MigrationRole,
    pub vm_name: Option<String>,
    pub vm_id: Option<String>,
    pub peer: Option<String>,
    /// For failures only.
    pub error_code: Option<u32>,
}

/// Reads a VMMS message; `None` when it is not a migration outcome.
pub fn classify_message(message: &str, local_host: &str) -> Option<MigrationOutcome> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    let success = lower.contains("successfully completed the live migration");
    let failure = !success && lower.contains("fail") && (lower.contains("migration") || lower.contains("with host"));
    if !success && !failure {
        return None;
    }
    Some(MigrationOutcome {
        success,
        role: parse_role(msg, local_host),
        vm_name: parse_vm_name(msg),
        vm_id: parse_vm_id(msg),
        peer: parse_peer_host(msg, local_host),
        error_code: if failure { parse_error_code(msg) } else { None },
    })
}

/// The HRESULT a message reports: the first `0x` + 8 hex digits with the
/// failure bit set (`(0x8009030E)`, `0x8009030E.`, `0x8009030d`), else the
/// first `0x` + 8 hex digits, else a negative decimal of 9–10 digits
/// (`-2146893042`) read as a 32-bit two's complement.
pub fn parse_error_code(message: &str) -> Option<u32> {
    let b = scan_window(message).as_bytes();
    let boundary = |i: usize| i >= b.len() || !b[i].is_ascii_alphanumeric();
    let mut first_any = None;
    for i in 0..b.len().saturating_sub(1) {
        if b[i] != b'0' || !(b[i + 1] == b'x' || b[i + 1] == b'X') {
            continue;
        }
        if i > 0 && b[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let start = i + 2;
        let end = start + 8;
        if end > b.len() || !b[start..end].iter().all(u8::is_ascii_hexdigit) || !boundary(end) {
            continue;
        }
        // All ASCII hex digits: valid UTF-8 and a valid u32.
        let Ok(code) = u32::from_str_radix(std::str::from_utf8(&b[start..end]).ok()?, 16) else {
            continue;
        };
        if code & 0x8000_0000 != 0 {
            return Some(code);
        }
        first_any.get_or_insert(code);
    }
    if first_any.is_some() {
        return first_any;
    }
    for i in 0..b.len() {
        if b[i] != b'-' || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-')) {
            continue;
        }
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(9..=10).contains(&digits) || !boundary(i + 1 + digits) {
            continue;
        }
        let text = std::str::from_utf8(&b[i..i + 1 + digits]).ok()?;
        if let Ok(v) = text.parse::<i64>()
            && (i32::MIN as i64..0).contains(&v)
        {
            return Some(v as i32 as u32);
        }
    }
    None
}

/// Phrases that name a host, in the order they are tried for the peer.
const HOST_PHRASES: &[&str] = &[
    "with host ",
    "destination host ",
    "destination node ",
    "at migration destination ",
    "at migration source ",
];

/// The other host of the migration: the first host named by `with host "X"`
/// / `'X'` / `X:`, `destination host "X."`, `destination node "X"`, or
/// `at migration destination/source "X"` that is not the local host
/// (compared on the first DNS label, case-insensitively). Quotes and
/// trailing dots are trimmed.
pub fn parse_peer_host(message: &str, local_host: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in HOST_PHRASES {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            if let Some(host) = host_after(&msg[at..])
                && !same_host(&host, local_host)
            {
                return Some(host);
            }
        }
    }
    None
}

/// A host name at the start of `s`: quoted with `"` or `'`, or bare up to
/// `:`, `,`, `;`, `(`, `)` or whitespace.
fn host_after(s: &str) -> Option<String> {
    let s = s.trim_start_matches(' ');
    let raw = match s.chars().next()? {
        q @ ('"' | '\'') => {
            let rest = &s[1..];
            &rest[..rest.find(q)?]
        }
        _ => {
            let end = s
                .find(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | ';' | '(' | ')'))
                .unwrap_or(s.len());
            &s[..end]
        }
    };
    let host = raw.trim().trim_end_matches('.');
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    valid.then(|| host.to_string())
}

fn first_label(h: &str) -> &str {
    h.split('.').next().unwrap_or(h)
}

fn same_host(a: &str, b: &str) -> bool {
    !b.is_empty() && first_label(a).eq_ignore_ascii_case(first_label(b))
}

/// The local host's side of the migration: SOURCE for "at migration source"
/// / "at the source host", DESTINATION for "at migration destination" / "at
/// the destination host" / "on the destination node|host" (the earliest
/// phrase wins; a host merely *named* "DESTINATION-…" does not count). When
/// the phrase names a host that is not the local host, the failure happened
/// on the peer and the local role is the other one.
pub fn parse_role(message: &str, local_host: &str) -> MigrationRole {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    let phrases: &[(&str, MigrationRole)] = &[
        ("at migration source", MigrationRole::Source),
        ("at the source host", MigrationRole::Source),
        ("at migration destination", MigrationRole::Destination),
        ("at the destination host", MigrationRole::Destination),
        ("on the destination node", MigrationRole::Destination),
        ("on the destination host", MigrationRole::Destination),
    ];
    let Some((pos, phrase, role)) = phrases
        .iter()
        .filter_map(|(p, r)| lower.find(p).map(|pos| (pos, *p, *r)))
        .min_by_key(|(pos, _, _)| *pos)
    else {
        return MigrationRole::Unspecified;
    };
    let after = &msg[pos + phrase.len()..];
    let named = after.strip_prefix(' ').and_then(host_after);
    match named {
        Some(h) if !local_host.is_empty() && !same_host(&h, local_host) => match role {
            MigrationRole::Source => MigrationRole::Destination,
            MigrationRole::Destination => MigrationRole::Source,
            other => other,
        },
        _ => role,
    }
}

/// The quoted VM name: after "operation for", else "virtual machine", else
/// "migration of" (one or more spaces, then `'…'` or `"…"`).
pub fn parse_vm_name(message: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in ["operation for", "virtual machine", "migration of"] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            let rest = &msg[at..];
            let trimmed = rest.trim_start_matches(' ');
            if trimmed.len() == rest.len() {
                continue; // "virtual machines", "virtual machine's": not followed by a space
            }
            let Some(q @ ('"' | '\'')) = trimmed.chars().next() else {
                continue;
            };
            let inner = &trimmed[1..];
            if let Some(end) = inner.find(q) {
                let name = inner[..end].trim();
                if !name.is_empty() && name.len() <= 512 {
                    return Some(name.to_string());
                }
            }
        }
    }
    None
}

/// The GUID after "VMID" or "Virtual machine ID" (upper-cased as written).
pub fn parse_vm_id(message: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in ["vmid", "virtual machine id"] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            let rest = msg[at..].trim_start_matches([' ', ':']);
            if let Some(guid) = rest.get(..36)
                && is_guid(guid)
            {
                return Some(guid.to_string());
            }
        }
    }
    None
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn error_codes_from_text() {
        let c = parse_error_code;
        assert_eq!(
            c("No credentials are available in the security package (0x8009030E)."),
            Some(0x8009_030E)
        );
        assert_eq!(c("in the security package 0x8009030E."), Some(0x8009_030E));
        assert_eq!(c("were not recognized (0x8009030d)"), Some(0x8009_030D));
        assert_eq!(c("0X80090322"), Some(0x8009_0322));
        assert_eq!(c("error -2146893042: no credentials"), Some(0x8009_030E));
        assert_eq!(c("(-2146893043)."), Some(0x8009_030D));
        assert_eq!(
            c("klist failed with 0x8009030e/-2146893042: No credentials"),
            Some(0x8009_030E)
        );
        assert_eq!(c("(0x000013AB)."), Some(0x13AB));
        assert_eq!(c("(0x000013AB) then (0x8007274D) and (0x80072746)"), Some(0x8007_274D));
        assert_eq!(c("LogonId 0:0x3e7"), None);
        assert_eq!(c("abc0x80090322"), None);
        assert_eq!(c("0x800903221"), None);
        assert_eq!(c("VMID E0D09432-1234-4A34-9D0E-6F3A2C1B7E55"), None);
        assert_eq!(c("took -12 seconds, id 12-2146893042"), None);
        assert_eq!(c("-9999999999"), None);
        assert_eq!(c(""), None);
        assert_eq!(c("0x"), None);
        assert_eq!(c("-"), None);
    }

    #[test]
    fn peer_vm_and_role_helpers() {
        assert_eq!(parse_peer_host("with host \"X.\": fails", ""), Some("X".into()));
        assert_eq!(
            parse_peer_host("with host 'hv02.contoso.com.'", ""),
            Some("hv02.contoso.com".into())
        );
        assert_eq!(
            parse_peer_host("with host HV03: No credentials", "hv01"),
            Some("HV03".into())
        );
        assert_eq!(
            parse_peer_host("with host *computer name*: No credentials", "hv01"),
            None
        );
        assert_eq!(
            parse_peer_host("to destination host \"Node11.\"", "hv01"),
            Some("Node11".into())
        );
        assert_eq!(parse_peer_host("with host \"unterminated", "hv01"), None);
        assert_eq!(
            parse_peer_host("with host \"HV01\"", "hv01.contoso.com"),
            None,
            "the local host is not a peer"
        );
        assert_eq!(parse_vm_name("Live migration of \"VM\" failed."), Some("VM".into()));
        assert_eq!(
            parse_vm_name("migration on virtual machine \"VM\" because"),
            Some("VM".into())
        );
        assert_eq!(parse_vm_name("virtual machines 'x'"), None);
        assert_eq!(parse_vm_name("virtual machine ''"), None);
        assert_eq!(
            parse_vm_id("(VMID e0d09432-1b5f-4a34-9d0e-6f3a2c1b7e5)"),
            None,
            "35 characters"
        );
        assert_eq!(
            parse_role("failed at migration destination: Logon failure", "hv01"),
            MigrationRole::Destination
        );
        assert_eq!(parse_role("nothing here", "hv01"), MigrationRole::Unspecified);
        assert!(
            classify_message(
                "initiated the live migration of virtual machine \"VM01\" to destination host \"Node11.\"",
                HV01
            )
            .is_none()
        );
        assert!(classify_message("The virtual switch was created.", HV01).is_none());
    }
}
