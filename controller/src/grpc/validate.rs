//! What an agent sends is input: every message is checked here before anything is stored or
//! acted on. Enum numbers must be known, attempt ids bounded, and every timestamp a real one in
//! a plausible window (not before 2000, not more than a day ahead of the controller's clock;
//! ticket lifetimes up to a year ahead). A refused message gets INVALID_ARGUMENT naming the
//! field, and changes nothing: the stream ends and the agent keeps its outbox.

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::*;
use tonic::Status;

/// 2000-01-01T00:00:00Z: no Hyper-V host reports anything older.
pub const EARLIEST_MS: i64 = 946_684_800_000;
/// How far ahead of the controller an observed instant may be (clock skew, generously).
pub const MAX_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// How far ahead a ticket's end or renew-until may be (AD's maximum renewal is far less).
pub const MAX_TICKET_AHEAD_MS: i64 = 366 * 24 * 3600 * 1000;
/// Attempt ids are chosen by the agent (`<host>:<event record id>`); bounded so that a key of
/// the store stays small.
pub const MAX_ATTEMPT_ID_BYTES: usize = 512;

/// Checks one message as the controller received it at `now_ms`.
pub fn validate(msg: &AgentMessage, now_ms: i64) -> Result<(), Status> {
    match &msg.body {
        Some(Body::Report(r)) => report(r, now_ms),
        Some(Body::Attempts(a)) => {
            for (i, at) in a.attempts.iter().enumerate() {
                known::<MigrationRole>(at.role, &format!("attempts[{i}].role"))?;
                if at.attempt_id.is_empty() || at.attempt_id.len() > MAX_ATTEMPT_ID_BYTES {
                    return Err(Status::invalid_argument(format!(
                        "attempts[{i}].attempt_id must be 1 to {MAX_ATTEMPT_ID_BYTES} bytes"
                    )));
                }
                instant(at.time.as_ref(), &format!("attempts[{i}].time"), now_ms, MAX_AHEAD_MS)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A report the controller cannot read is an error to fix, not something to store
/// half-understood.
fn report(r: &HostReport, now_ms: i64) -> Result<(), Status> {
    instant(r.observed_at.as_ref(), "report.observed_at", now_ms, MAX_AHEAD_MS)?;
    for (i, s) in r.services.iter().enumerate() {
        known::<ServiceState>(s.state, &format!("report.services[{i}].state"))?;
        known::<StartMode>(s.start_mode, &format!("report.services[{i}].start_mode"))?;
    }
    if let Some(m) = &r.migration {
        known::<MigrationAuthType>(m.authentication_type, "report.migration.authentication_type")?;
        known::<MigrationPerformance>(m.performance_option, "report.migration.performance_option")?;
    }
    for (i, t) in r.system_tickets.iter().enumerate() {
        let field = |f: &str| format!("report.system_tickets[{i}].{f}");
        instant(t.start_time.as_ref(), &field("start_time"), now_ms, MAX_AHEAD_MS)?;
        instant(t.end_time.as_ref(), &field("end_time"), now_ms, MAX_TICKET_AHEAD_MS)?;
        instant(
            t.renew_until.as_ref(),
            &field("renew_until"),
            now_ms,
            MAX_TICKET_AHEAD_MS,
        )?;
        // Matched against the DCs' dNSHostName to decide when a purge may go out.
        if !t.kdc_called.is_empty()
            && let Err(e) = crate::model::names::HostName::parse(&t.kdc_called)
        {
            return Err(Status::invalid_argument(format!("{}: {e}", field("kdc_called"))));
        }
    }
    Ok(())
}

fn known<E: TryFrom<i32>>(v: i32, what: &str) -> Result<(), Status> {
    E::try_from(v)
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("{what} = {v} is not a known value")))
}

/// An optional timestamp: unset is fine; set, it must convert without overflow and lie between
/// 2000 and `ahead_ms` past `now_ms`.
fn instant(t: Option<&prost_types::Timestamp>, what: &str, now_ms: i64, ahead_ms: i64) -> Result<(), Status> {
    let Some(t) = t else {
        return Ok(());
    };
    let Some(ms) = kcdsync_proto::checked_ms_from_timestamp(t) else {
        return Err(Status::invalid_argument(format!(
            "{what} (seconds {}, nanos {}) is not a timestamp: nanos must be 0 to 999999999 and seconds a date",
            t.seconds, t.nanos
        )));
    };
    let latest = now_ms.saturating_add(ahead_ms);
    if !(EARLIEST_MS..=latest).contains(&ms) {
        return Err(Status::invalid_argument(format!(
            "{what} = {ms} ms since 1970 is out of range: it must be after 2000-01-01 and at most {} h \
             ahead of the controller's clock (check the host's clock)",
            ahead_ms / 3_600_000
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn attempt_at(seconds: i64, nanos: i32) -> AgentMessage {
        AgentMessage {
            seq: 2,
            body: Some(Body::Attempts(MigrationAttempts {
                attempts: vec![MigrationAttempt {
                    attempt_id: "hv01.lab.test:1".into(),
                    time: Some(prost_types::Timestamp { seconds, nanos }),
                    ..Default::default()
                }],
            })),
        }
    }

    fn refusal(m: &AgentMessage) -> String {
        let s = validate(m, NOW).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        s.message().to_owned()
    }

    #[test]
    fn a_plausible_attempt_time_passes() {
        validate(&attempt_at(NOW / 1000 - 60, 5), NOW).unwrap();
        validate(&attempt_at(NOW / 1000 + 3600, 0), NOW).unwrap();
    }

    #[test]
    fn seconds_at_the_ends_of_i64_are_refused_not_wrapped() {
        for s in [i64::MAX, i64::MIN, i64::MAX / 1000, -1] {
            let e = refusal(&attempt_at(s, 0));
            assert!(e.starts_with("attempts[0].time"), "{e}");
        }
        assert!(refusal(&attempt_at(i64::MAX, 0)).contains("is not a timestamp"));
    }

    #[test]
    fn negative_or_oversized_nanos_are_refused() {
        for n in [-1, i32::MIN, 1_000_000_000, i32::MAX] {
            let e = refusal(&attempt_at(NOW / 1000, n));
            assert!(e.contains("nanos must be 0 to 999999999"), "{e}");
        }
    }

    #[test]
    fn before_2000_or_more_than_a_day_ahead_is_refused() {
        let e = refusal(&attempt_at(EARLIEST_MS / 1000 - 1, 0));
        assert!(e.contains("must be after 2000-01-01"), "{e}");
        let e = refusal(&attempt_at((NOW + MAX_AHEAD_MS) / 1000 + 1, 0));
        assert!(
            e.contains("at most 24 h ahead") && e.contains("check the host's clock"),
            "{e}"
        );
    }

    #[test]
    fn a_report_with_a_ticket_from_the_far_future_is_refused() {
        let ts = |ms: i64| Some(kcdsync_proto::timestamp_from_ms(ms));
        let ticket = |end: i64| KerberosTicket {
            start_time: ts(NOW - 1000),
            end_time: ts(end),
            ..Default::default()
        };
        let msg = |t| AgentMessage {
            seq: 2,
            body: Some(Body::Report(HostReport {
                observed_at: ts(NOW),
                system_tickets: vec![t],
                ..Default::default()
            })),
        };
        // A week of renewal is normal; ten years is not.
        validate(&msg(ticket(NOW + 7 * 24 * 3600 * 1000)), NOW).unwrap();
        let e = refusal(&msg(ticket(NOW + 10 * 366 * 24 * 3600 * 1000)));
        assert!(e.starts_with("report.system_tickets[0].end_time"), "{e}");

        // The KDC a ticket names decides where a purge waits: a DNS name or nothing.
        let from = |kdc: &str| KerberosTicket {
            kdc_called: kdc.into(),
            ..ticket(NOW + 3600 * 1000)
        };
        validate(&msg(from("dc2.lab.test")), NOW).unwrap();
        let e = refusal(&msg(from("dc2.lab.test)(objectClass=*")));
        assert!(e.starts_with("report.system_tickets[0].kdc_called"), "{e}");
    }

    #[test]
    fn unknown_enum_values_and_unbounded_ids_are_refused() {
        let with = |f: fn(&mut MigrationAttempt)| {
            let mut m = attempt_at(NOW / 1000, 0);
            if let Some(Body::Attempts(a)) = &mut m.body {
                f(&mut a.attempts[0]);
            }
            m
        };
        assert_eq!(
            refusal(&with(|a| a.role = 7)),
            "attempts[0].role = 7 is not a known value"
        );
        let m = with(|a| a.attempt_id = "x".repeat(513));
        assert_eq!(refusal(&m), "attempts[0].attempt_id must be 1 to 512 bytes");
    }
}
