//! `Get-WinEvent` on the VMMS-Admin log: one page of events after a cursor,
//! turned into migration attempts (what each message says is read by
//! [`super::message`]) and the next cursor.

use kcdsync_proto::v1::MigrationAttempt;
use prost_types::Timestamp;
use serde_json::Value;

use super::json::{as_u32, json_items, prop, req, wrong};
use super::message::classify_message;
use super::{ParseError, small_number, snippet};
use crate::calendar::civil_seconds;

/// A stored message is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 8 * 1024;

/// One page of [`PS_VMMS_EVENTS`](crate::windows::scripts::PS_VMMS_EVENTS) output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmmsEventBatch {
    /// Migration outcomes (success or failure), by RecordId ascending.
    pub attempts: Vec<(u64, MigrationAttempt)>,
    /// Highest RecordId of *all* events read, migration-related or not: the
    /// next cursor. `None` when there was no event.
    pub max_record_id: Option<u64>,
    /// Every event read, migration-related or not: RecordId and
    /// TimeCreated, in output order. The record at the saved cursor tells a
    /// cleared log (see [`crate::probe::check_log`]); the newest one's time
    /// goes into the next cursor.
    pub records: Vec<(u64, Option<Timestamp>)>,
}

impl VmmsEventBatch {
    /// The lowest record at or above `from`.
    pub fn first_from(&self, from: u64) -> Option<&(u64, Option<Timestamp>)> {
        self.records
            .iter()
            .filter(|(id, _)| *id >= from)
            .min_by_key(|(id, _)| *id)
    }

    /// The time of the record `id`.
    pub fn time_of(&self, id: u64) -> Option<&Timestamp> {
        self.records
            .iter()
            .find(|(r, _)| *r == id)
            .and_then(|(_, t)| t.as_ref())
    }
}

/// Output of [`PS_VMMS_EVENTS`](crate::windows::scripts::PS_VMMS_EVENTS) (or the same selection with PS 5.1's raw
/// `"\/Date(ms)\/"` TimeCreated): empty output = no event, one object, or an
/// array. Returns the migration outcomes only; see [`parse_vmms_event_batch`]
/// for the cursor.
pub fn parse_vmms_events(json: &str, local_host: &str) -> Result<Vec<(u64, MigrationAttempt)>, ParseError> {
    parse_vmms_event_batch(json, local_host).map(|b| b.attempts)
}

/// Like [`parse_vmms_events`], plus the highest RecordId read.
///
/// Outcome and details come from the message text, not the event id:
/// success for "successfully completed the live migration" (20415, 20417,
/// 20418); failure for a message that mentions a migration (or "with host")
/// and a failure; anything else (migration started, unrelated VMMS events,
/// null message) is skipped. `attempt_id` is `"<local_host>:<RecordId>"`.
pub fn parse_vmms_event_batch(json: &str, local_host: &str) -> Result<VmmsEventBatch, ParseError> {
    let mut batch = VmmsEventBatch::default();
    for (i, m) in json_items(json, "Get-WinEvent")?.iter().enumerate() {
        let what = format!("Get-WinEvent item {i}");
        let record_id = match req(m, &what, "RecordId")? {
            Value::Number(n) => n.as_u64().ok_or_else(|| ParseError::OutOfRange {
                what: what.clone(),
                field: "RecordId",
                value: n.to_string(),
            })?,
            other => return Err(wrong(&what, "RecordId", "an unsigned integer", other)),
        };
        let event_id = as_u32(req(m, &what, "Id")?, &what, "Id")?;
        let time = match prop(m, "TimeCreated") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_event_time(s).ok_or_else(|| ParseError::BadDate {
                what: what.clone(),
                field: "TimeCreated",
                value: snippet(s),
            })?),
            Some(other) => return Err(wrong(&what, "TimeCreated", "a date string", other)),
        };
        let message = match prop(m, "Message") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(wrong(&what, "Message", "a string", other)),
        };
        batch.max_record_id = Some(batch.max_record_id.map_or(record_id, |x| x.max(record_id)));
        batch.records.push((record_id, time));
        let Some(message) = message else { continue };
        let Some(outcome) = classify_message(message, local_host) else {
            continue;
        };
        batch.attempts.push((
            record_id,
            MigrationAttempt {
                attempt_id: format!("{local_host}:{record_id}"),
                time,
                vm_name: outcome.vm_name.unwrap_or_default(),
                vm_id: outcome.vm_id.unwrap_or_default(),
                peer: outcome.peer.unwrap_or_default(),
                role: outcome.role as i32,
                success: outcome.success,
                event_id,
                error_code: outcome.error_code.unwrap_or(0),
                message: cut_chars(message.trim(), MAX_MESSAGE_CHARS),
                account: String::new(),
                traceparent: String::new(),
            },
        ));
    }
    batch.attempts.sort_by_key(|(id, _)| *id);
    Ok(batch)
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// `TimeCreated` as ConvertTo-Json writes it: PS 5.1 `/Date(ms)/` (the JSON
/// text `"\/Date(ms)\/"`, Unix milliseconds, UTC) or ISO-8601 with `Z`, an
/// offset, or no zone (read as UTC), up to 9 fractional digits.
pub fn parse_event_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
        let digits = inner.strip_prefix('-').unwrap_or(inner);
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: i64 = inner.parse().ok()?;
        return Some(kcdsync_proto::timestamp_from_ms(ms));
    }
    parse_iso8601(s)
}

fn parse_iso8601(s: &str) -> Option<Timestamp> {
    if !s.is_ascii() || s.len() < 19 || s.len() > 40 {
        return None;
    }
    let b = s.as_bytes();
    // `s` is ASCII and at least 19 bytes long: these slices are in bounds.
    let num = |r: std::ops::Range<usize>| small_number(&s[r.clone()], r.len());
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        for (k, c) in frac.bytes().take(n.min(9)).enumerate() {
            nanos += (c - b'0') as i64 * 10i64.pow(8 - k as u32);
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = &rest[1..];
            let (h, m) = match z.len() {
                5 if z.as_bytes()[2] == b':' => (small_number(&z[..2], 2)?, small_number(&z[3..], 2)?),
                4 => (small_number(&z[..2], 2)?, small_number(&z[2..], 2)?),
                2 => (small_number(z, 2)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h as i64 * 3600 + m as i64 * 60)
        }
    };
    let local = civil_seconds(year as i64, month, day, hour, minute, second)?;
    Some(Timestamp {
        seconds: local - offset_secs,
        nanos: nanos as i32,
    })
}

#[cfg(test)]
mod tests {
    use kcdsync_proto::v1::MigrationRole;

    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn events_seed_failure_ps51_single_object() {
        let b = parse_vmms_event_batch(EVENTS_SEED, HV01).unwrap();
        assert_eq!(b.max_record_id, Some(4711));
        assert_eq!(b.attempts.len(), 1);
        let (rid, a) = &b.attempts[0];
        assert_eq!(*rid, 4711);
        assert_eq!(a.attempt_id, "hv01.contoso.com:4711");
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8009_030E);
        assert_eq!(a.role(), MigrationRole::Source);
        assert_eq!(a.peer, "", "the seed's host name is redacted");
        assert_eq!(a.vm_name, "");
        assert_eq!(a.event_id, 21502);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1_762_160_000,
                nanos: 0
            })
        );
        assert!(
            a.message
                .starts_with("Virtual machine migration operation failed at migration source.")
        );
        assert!(
            a.message
                .contains("No credentials are available in the security package (0x8009030E).")
        );
    }

    #[test]
    fn events_ps51_array_0x8009030d_and_unquoted_host() {
        let b = parse_vmms_event_batch(&crlf(EVENTS_PS51), HV01).unwrap();
        assert_eq!(
            b.max_record_id,
            Some(4714),
            "the skipped 'initiated' event still moves the cursor"
        );
        let ids: Vec<u64> = b.attempts.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [4712, 4714]);
        let a = &b.attempts[0].1;
        assert_eq!(a.error_code, 0x8009_030D);
        assert_eq!(a.peer, "DESTINATION-SERVER");
        assert_eq!(
            a.role(),
            MigrationRole::Source,
            "a peer named DESTINATION-… does not make us the destination"
        );
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793697165,
                nanos: 123_456_700
            })
        );
        let a = &b.attempts[1].1;
        assert_eq!(a.error_code, 0x8009_030E);
        assert_eq!(a.peer, "HV02");
        assert_eq!(a.role(), MigrationRole::Source);
    }

    #[test]
    fn events_ps7_array_successes_and_failures() {
        let b = parse_vmms_event_batch(EVENTS_PS7, "HYPER-V4.contoso.com").unwrap();
        assert_eq!(b.max_record_id, Some(5007));
        let by_id = |id: u64| {
            &b.attempts
                .iter()
                .find(|(r, _)| *r == id)
                .unwrap_or_else(|| panic!("{id}"))
                .1
        };
        assert_eq!(b.attempts.len(), 6, "the null-message event is skipped");

        let a = by_id(5001);
        assert!(a.success);
        assert_eq!(a.event_id, 20415);
        assert_eq!(a.vm_name, "903194-nyc201");
        assert_eq!(a.vm_id, "F5EF233C-B586-4380-B5EA-00C1D5499815");
        assert_eq!(a.error_code, 0);
        assert_eq!(a.role(), MigrationRole::Unspecified);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793697165,
                nanos: 639_441_600
            }),
            "-07:00 offset applied"
        );
        assert_eq!(a.attempt_id, "HYPER-V4.contoso.com:5001");

        let a = by_id(5002);
        assert!(a.success);
        assert_eq!(a.vm_name, "VM");

        let a = by_id(5003);
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8009_0322);
        assert_eq!(a.vm_name, "WindowsAdminCenter");
        assert_eq!(a.vm_id, "39D45F49-72D2-4D19-B98A-9F55481A8047");
        assert_eq!(a.peer, "hyper-v01");
        assert_eq!(a.role(), MigrationRole::Source);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793698270,
                nanos: 250_000_000
            })
        );

        let a = by_id(5004);
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8007_000E);
        assert_eq!(a.vm_name, "vm1");
        assert_eq!(a.peer, "S2D1");
        assert_eq!(
            a.role(),
            MigrationRole::Source,
            "the failure is at the named destination, another host"
        );

        let a = by_id(5005);
        assert!(!a.success);
        assert_eq!(a.role(), MigrationRole::Destination);
        assert_eq!((a.error_code, a.peer.as_str(), a.vm_name.as_str()), (0, "", ""));

        let a = by_id(5006);
        assert!(a.success);
        assert_eq!(a.vm_name, "ws2025-core-01");
    }

    #[test]
    fn events_role_seen_from_the_other_host() {
        let b = parse_vmms_event_batch(EVENTS_PS7, "hyper-v01").unwrap();
        let a = &b.attempts.iter().find(|(r, _)| *r == 5003).unwrap().1;
        assert_eq!(a.role(), MigrationRole::Destination);
        assert_eq!(a.peer, "HYPER-V4");
    }

    #[test]
    fn events_empty_and_null() {
        let b = parse_vmms_event_batch(EVENTS_EMPTY, HV01).unwrap();
        assert_eq!(b, VmmsEventBatch::default());
        assert!(parse_vmms_events("null", HV01).unwrap().is_empty());
    }

    #[test]
    fn events_bad_fields() {
        let ev = |body: &str| parse_vmms_event_batch(&format!("{{{body}}}"), HV01);
        assert!(matches!(
            ev("\"Id\": 1, \"Message\": \"x\""),
            Err(ParseError::Missing { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": \"12\", \"Id\": 1"),
            Err(ParseError::WrongType { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": -1, \"Id\": 1"),
            Err(ParseError::OutOfRange { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"Message\": 42"),
            Err(ParseError::WrongType { field: "Message", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"TimeCreated\": \"/Date(abc)/\""),
            Err(ParseError::BadDate {
                field: "TimeCreated",
                ..
            })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"TimeCreated\": 5"),
            Err(ParseError::WrongType { .. })
        ));
        let b = ev("\"RecordId\": 9, \"Id\": 1, \"TimeCreated\": null, \"Message\": \"Live migration of 'x' failed.\"")
            .unwrap();
        assert_eq!(b.attempts[0].1.time, None);
    }

    #[test]
    fn events_huge_message_is_cut() {
        let msg = format!(
            "Virtual machine migration operation failed at migration source. (0x8009030E) {}",
            "é".repeat(3_000_000)
        );
        let json = serde_json::json!({"RecordId": 1, "Id": 21502, "Level": 2, "TimeCreated": null, "Message": msg})
            .to_string();
        let b = parse_vmms_event_batch(&json, HV01).unwrap();
        let a = &b.attempts[0].1;
        assert_eq!(a.message.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(a.error_code, 0x8009_030E);
    }

    #[test]
    fn event_times() {
        assert_eq!(
            parse_event_time("/Date(1595374458918)/"),
            Some(Timestamp {
                seconds: 1595374458,
                nanos: 918_000_000
            })
        );
        assert_eq!(
            parse_event_time("/Date(-1)/"),
            Some(Timestamp {
                seconds: -1,
                nanos: 999_000_000
            })
        );
        assert_eq!(
            parse_event_time("2021-08-05T16:13:05.6394416-07:00"),
            Some(Timestamp {
                seconds: 1628205185,
                nanos: 639_441_600
            })
        );
        assert_eq!(parse_event_time("2021-08-05T23:13:05Z"), ts(1628205185));
        assert_eq!(parse_event_time("2021-08-05T23:13:05"), ts(1628205185));
        assert_eq!(parse_event_time("2021-08-06T01:13:05+0200"), ts(1628205185));
        assert_eq!(
            parse_event_time("2021-08-05T23:13:05.123456789123Z").unwrap().nanos,
            123_456_789
        );
        for bad in [
            "",
            "2021-08-05",
            "2021-13-05T00:00:00Z",
            "2021-08-05T00:00:00+25:00",
            "2021-08-05T00:00:00.Z",
            "/Date()/",
            "/Date(1e5)/",
            "2021-08-05T00:00:00 PST",
            "２０２１-08-05T00:00:00Z",
        ] {
            assert_eq!(parse_event_time(bad), None, "{bad}");
        }
    }
}
