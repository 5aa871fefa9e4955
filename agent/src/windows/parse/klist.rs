//! `klist -li 0x3e7`: the tickets of the SYSTEM logon session, the one live
//! migration authenticates with (WINDOWS-FACTS §4). klist prints text for
//! people, not data, so the parser is strict: every line must be known.

use kcdsync_proto::v1::KerberosTicket;
use prost_types::Timestamp;

use super::{ParseError, small_number, snippet};
use crate::calendar::civil_seconds;

#[derive(Default)]
struct TicketBuilder {
    index: usize,
    client: Option<String>,
    server: Option<String>,
    encryption_type: Option<String>,
    flags: Option<u32>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    renew: Option<Timestamp>,
    kdc: Option<String>,
}

impl TicketBuilder {
    fn build(self) -> Result<KerberosTicket, ParseError> {
        let index = self.index;
        let missing = |field| ParseError::KlistIncomplete { index, field };
        Ok(KerberosTicket {
            client: self.client.ok_or_else(|| missing("Client"))?,
            server: self.server.ok_or_else(|| missing("Server"))?,
            encryption_type: self
                .encryption_type
                .ok_or_else(|| missing("KerbTicket Encryption Type"))?,
            ticket_flags: self.flags.ok_or_else(|| missing("Ticket Flags"))?,
            start_time: Some(self.start.ok_or_else(|| missing("Start Time"))?),
            end_time: Some(self.end.ok_or_else(|| missing("End Time"))?),
            // Optional: a ticket that is not renewable may lack it.
            renew_until: self.renew,
            kdc_called: self.kdc.unwrap_or_default(),
        })
    }
}

enum KlistField {
    Client,
    Server,
    EncryptionType,
    Start,
    End,
    Renew,
    KdcCalled,
    Ignored,
    CachedTickets,
}

/// A label reduced to lower-case ASCII letters, digits and single spaces.
/// Non-ASCII letters are dropped, so "démarrage" read as UTF-8 and
/// "d\u{FFFD}marrage" (klist writes the OEM code page; the probe decodes
/// lossily) compare equal.
fn normalize_label(label: &str) -> String {
    let mut out = String::new();
    for word in label.split_whitespace() {
        let w: String = word
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if w.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
    }
    out
}

fn klist_field(label: &str) -> Option<KlistField> {
    use KlistField::*;
    Some(match normalize_label(label).as_str() {
        "client" => Client,
        "server" | "serveur" => Server,
        "kerbticket encryption type" | "type de chiffrement kerbticket" => EncryptionType,
        "start time" | "heure de dmarrage" => Start,
        "end time" | "heure de fin" => End,
        "renew time" | "heure de renouvellement" => Renew,
        "kdc called" | "kdc appel" => KdcCalled,
        "session key type" | "type de cl de session" | "cache flags" => Ignored,
        "cached tickets" | "tickets mis en cache" => CachedTickets,
        _ => return None,
    })
}

/// Raw output of `klist -li 0x3e7` (English or French labels as in
/// WINDOWS-FACTS §4; other languages give [`ParseError::KlistLine`]).
///
/// Tabs, trailing spaces and CRLF are tolerated; `Ticket Flags 0x… -> …`
/// has no colon. Client and server are kept as klist prints them
/// (`HV01$ @ CONTOSO.COM`).
///
/// **Times are read as UTC.** klist prints `M/D/YYYY H:MM:SS (local)` in the
/// host's local time zone, and the output does not say which zone that is;
/// the timestamps are therefore off by the host's UTC offset. Compare them
/// with each other (ticket age, expiry order) or with the host's own clock
/// read the same way, not with true UTC instants.
///
/// Every line must be recognised; an unknown or garbled line is an error
/// naming it, and a ticket count different from `Cached Tickets: (N)` is an
/// error (truncated output). `klist failed with …` is [`ParseError::KlistFailed`].
pub fn parse_klist(text: &str) -> Result<Vec<KerberosTicket>, ParseError> {
    let mut tickets = Vec::new();
    let mut current: Option<TicketBuilder> = None;
    let mut announced: Option<u64> = None;

    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let unrecognized = || ParseError::KlistLine {
            line_no,
            line: snippet(line),
        };
        let bad = |problem| ParseError::KlistValue {
            line_no,
            problem,
            line: snippet(line),
        };
        let lower = line.to_ascii_lowercase();

        if lower.starts_with("klist failed") {
            return Err(ParseError::KlistFailed(snippet(line)));
        }
        if ["current logonid is ", "targeted logonid is ", "logonid est "]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            if current.is_some() {
                return Err(unrecognized());
            }
            continue;
        }

        // "#N>" opens a ticket; the rest of the line is its first field.
        let mut body = line;
        if let Some(rest) = line.strip_prefix('#') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let after = &rest[digits..];
            let (Some(after), true) = (after.strip_prefix('>'), digits > 0 && digits <= 6) else {
                return Err(bad("bad ticket number"));
            };
            if announced.is_none() {
                return Err(bad("ticket before the `Cached Tickets` line"));
            }
            if let Some(t) = current.take() {
                tickets.push(t.build()?);
            }
            current = Some(TicketBuilder {
                index: tickets.len(),
                ..Default::default()
            });
            body = after.trim();
            if body.is_empty() {
                continue;
            }
        }
        let body_lower = body.to_ascii_lowercase();

        // "Ticket Flags 0x40e10000 -> forwardable ..." (no colon).
        let flags_rest = ["ticket flags", "indicateurs de tickets"]
            .iter()
            .find(|p| body_lower.starts_with(*p))
            .map(|p| body[p.len()..].trim_start().trim_start_matches(':').trim_start());
        if let Some(rest) = flags_rest {
            let t = current.as_mut().ok_or_else(unrecognized)?;
            let hex = rest.split_whitespace().next().unwrap_or("");
            let hex = hex
                .strip_prefix("0x")
                .or_else(|| hex.strip_prefix("0X"))
                .ok_or_else(|| bad("bad ticket flags"))?;
            t.flags = Some(u32::from_str_radix(hex, 16).map_err(|_| bad("bad ticket flags"))?);
            continue;
        }

        let Some((label, value)) = body.split_once(':') else {
            return Err(unrecognized());
        };
        let value = value.trim();
        match klist_field(label).ok_or_else(unrecognized)? {
            KlistField::CachedTickets => {
                if announced.is_some() || current.is_some() {
                    return Err(unrecognized());
                }
                let n = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| bad("bad ticket count"))?;
                announced = Some(n);
            }
            field => {
                let t = current.as_mut().ok_or_else(unrecognized)?;
                match field {
                    KlistField::Client => t.client = Some(value.to_string()),
                    KlistField::Server => t.server = Some(value.to_string()),
                    KlistField::EncryptionType => t.encryption_type = Some(value.to_string()),
                    KlistField::Start => t.start = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::End => t.end = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::Renew => t.renew = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::KdcCalled => t.kdc = kdc_name(value),
                    KlistField::Ignored | KlistField::CachedTickets => {}
                }
            }
        }
    }
    if let Some(t) = current.take() {
        tickets.push(t.build()?);
    }
    let announced = announced.ok_or(ParseError::KlistNoCount)?;
    if announced != tickets.len() as u64 {
        return Err(ParseError::KlistCount {
            announced,
            found: tickets.len(),
        });
    }
    Ok(tickets)
}

/// `Kdc Called: DC01.contoso.com`: a host name, lower-cased, or nothing when klist printed
/// none or something that is not a DNS name (it is only used to match a DC's dNSHostName).
fn kdc_name(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches('\\').to_ascii_lowercase();
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then_some(v)
}

/// `12/17/2025 8:50:52 (local)` → a Timestamp, reading the wall-clock time
/// as UTC (see [`parse_klist`]).
pub(super) fn parse_klist_time(value: &str) -> Option<Timestamp> {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    let v = match lower.strip_suffix("(local)") {
        Some(_) => v[..v.len() - "(local)".len()].trim_end(),
        None => v,
    };
    let (date, time) = v.split_once(' ')?;
    let mut d = date.split('/');
    let month = small_number(d.next()?, 2)?;
    let day = small_number(d.next()?, 2)?;
    let year = small_number(d.next()?, 4)?;
    if d.next().is_some() {
        return None;
    }
    let mut t = time.trim().split(':');
    let hour = small_number(t.next()?, 2)?;
    let minute = small_number(t.next()?, 2)?;
    let second = small_number(t.next()?, 2)?;
    if t.next().is_some() {
        return None;
    }
    let seconds = civil_seconds(year as i64, month, day, hour, minute, second)?;
    Some(Timestamp { seconds, nanos: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;
    use crate::windows::parse::parse_error_code;

    #[test]
    fn klist_system_session() {
        let t = parse_klist(KLIST_SYSTEM).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            KerberosTicket {
                client: "HV01$ @ CONTOSO.COM".into(),
                server: "krbtgt/CONTOSO.COM @ CONTOSO.COM".into(),
                start_time: ts(1793689509),              // 11/3/2026 7:05:09, read as UTC
                end_time: ts(1793689509 + 10 * 3600),    // 17:05:09
                renew_until: ts(1793689509 + 7 * 86400), // 11/10/2026 7:05:09
                ticket_flags: 0x40e1_0000,
                encryption_type: "AES-256-CTS-HMAC-SHA1-96".into(),
                kdc_called: "dc01.contoso.com".into(),
            }
        );
        assert_eq!(t[2].kdc_called, "", "an empty `Kdc Called:` names no KDC");
        assert_eq!(
            t[1].server,
            "Microsoft Virtual System Migration Service/HV02.contoso.com @ CONTOSO.COM"
        );
        assert_eq!(t[1].ticket_flags & 0x0004_0000, 0x0004_0000, "ok_as_delegate");
        assert_eq!(t[2].encryption_type, "RSADSI RC4-HMAC(NT)");
        assert_eq!(parse_klist(&crlf(KLIST_SYSTEM)).unwrap(), t);
    }

    #[test]
    fn klist_user_transcript_s12() {
        let t = parse_klist(KLIST_USER).unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].ticket_flags, 0x60a1_0000);
        assert_eq!(t[0].client, "jsykora @ MINDFREAK.LAB.LAN");
        assert_eq!(t[0].kdc_called, "crissdc01.mindfreak.lab.lan");
        assert_eq!(t[0].start_time, ts(1765961452)); // 12/17/2025 8:50:52
        assert_eq!(
            t[5].server,
            "LDAP/CrissDC01.mindfreak.lab.lan/mindfreak.lab.lan @ MINDFREAK.LAB.LAN"
        );
    }

    #[test]
    fn a_kdc_is_kept_only_as_a_dns_name() {
        assert_eq!(kdc_name(" DC01.Contoso.com "), Some("dc01.contoso.com".into()));
        assert_eq!(kdc_name("\\\\DC01"), Some("dc01".into()), "a logon-server spelling");
        for bad in [
            "",
            "dc01 contoso",
            "dc01..contoso",
            "dc01.contoso.com;rm",
            &"a".repeat(64),
        ] {
            assert_eq!(kdc_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn klist_empty_cache() {
        assert!(parse_klist(KLIST_EMPTY).unwrap().is_empty());
        assert!(parse_klist(&crlf(KLIST_EMPTY)).unwrap().is_empty());
    }

    #[test]
    fn klist_french_labels() {
        let t = parse_klist(KLIST_FR).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].client, "jdupond @ domain.local");
        assert_eq!(t[0].server, "krbtgt/domain.local @ domain.local");
        assert_eq!(t[0].encryption_type, "RSADSI RC4-HMAC(NT)");
        assert_eq!(t[0].ticket_flags, 0x50a0_0000);
        assert_eq!(t[0].start_time, ts(1516818360)); // 1/24/2018 18:26:00
        // klist writes the OEM code page; decoded lossily, "é" becomes U+FFFD.
        let lossy = KLIST_FR.replace('é', "\u{FFFD}");
        assert_eq!(parse_klist(&lossy).unwrap(), t);
    }

    #[test]
    fn klist_failure_and_purge_output() {
        let e = parse_klist(KLIST_FAILED).unwrap_err();
        assert!(
            matches!(e, ParseError::KlistFailed(ref m) if m.contains("0x8009030e")),
            "{e}"
        );
        assert_eq!(parse_error_code(KLIST_FAILED), Some(0x8009_030E));
        // Purge output is not a ticket list: named line, not a panic.
        let e = parse_klist(KLIST_PURGE).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 2, .. }), "{e}");
        assert!(e.to_string().contains("Deleting all tickets"), "{e}");
    }

    #[test]
    fn klist_unknown_language_is_a_named_error() {
        // German labels are not supported: the first unknown line is named.
        let de = KLIST_EMPTY.replace("Cached Tickets: (0)", "Zwischengespeicherte Tickets: (0)");
        let e = parse_klist(&de).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 5, .. }), "{e}");
        assert!(e.to_string().contains("Zwischengespeicherte"), "{e}");
    }

    #[test]
    fn klist_garbled() {
        let bad_date = KLIST_SYSTEM.replacen("11/3/2026 7:05:09", "13/45/2026 7:05:09", 1);
        let e = parse_klist(&bad_date).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistValue {
                    line_no: 11,
                    problem: "bad date",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_klist(&KLIST_SYSTEM.replacen("Ticket Flags 0x40e10000", "Ticket Flags 0xZZ", 1)).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistValue {
                    problem: "bad ticket flags",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_klist(&KLIST_SYSTEM.replacen("\tServer:", "\tServeur du futur:", 1)).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 8, .. }), "{e}");
        let e = parse_klist(&KLIST_SYSTEM.replace("Cached Tickets: (3)", "Cached Tickets: (4)")).unwrap_err();
        assert_eq!(e, ParseError::KlistCount { announced: 4, found: 3 });
        let cut = &KLIST_SYSTEM[..KLIST_SYSTEM.find("\tEnd Time").unwrap()];
        let e = parse_klist(cut).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistIncomplete {
                    index: 0,
                    field: "End Time"
                }
            ),
            "{e}"
        );
        assert_eq!(parse_klist("").unwrap_err(), ParseError::KlistNoCount);
        assert!(matches!(
            parse_klist("#0>\tClient: x"),
            Err(ParseError::KlistValue { .. })
        ));
        assert!(matches!(
            parse_klist("garbage without colon"),
            Err(ParseError::KlistLine { line_no: 1, .. })
        ));
        let huge = format!("Cached Tickets: (0)\n{}", "A".repeat(1 << 20));
        let e = parse_klist(&huge).unwrap_err();
        assert!(e.to_string().len() < 400, "error text stays short");
    }

    #[test]
    fn klist_time_validation() {
        assert_eq!(parse_klist_time("2/29/2024 0:00:00 (local)"), ts(1709164800));
        assert_eq!(parse_klist_time("2/29/2023 0:00:00 (local)"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00:00"), ts(0));
        assert_eq!(parse_klist_time("1/1/1970 24:00:00"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00"), None);
        assert_eq!(parse_klist_time("1/1/19700 0:00:00"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00:00 PM"), None);
    }
}
