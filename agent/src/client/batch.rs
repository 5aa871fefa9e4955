//! Attempts to messages, by size: every message fits the controller's
//! `agents.max_message_bytes`, an attempt that alone cannot fit is set aside
//! (never resent forever), and a controller that still refuses a message as
//! too large makes the agent's limit shrink until it fits.

use kcdsync_proto::v1::MigrationAttempt;
use prost::Message;

/// Room an AgentMessage needs around its attempts: `seq`, the oneof's tag
/// and length, with margin.
const ENVELOPE: usize = 32;
/// The smallest limit the agent shrinks to: the controller's smallest
/// `agents.max_message_bytes`.
pub const MIN_MESSAGE_BYTES: usize = 4096;

/// Attempts grouped into messages of at most `limit` encoded bytes, in order,
/// and the ids of attempts too large for any message.
pub fn batches<'a>(
    attempts: impl IntoIterator<Item = &'a MigrationAttempt>,
    limit: usize,
) -> (Vec<Vec<MigrationAttempt>>, Vec<String>) {
    let budget = limit.saturating_sub(ENVELOPE);
    let (mut out, mut too_large) = (Vec::new(), Vec::new());
    let (mut cur, mut size) = (Vec::new(), 0);
    for a in attempts {
        // As a repeated field: tag, length, body.
        let n = a.encoded_len();
        let n = n + 1 + prost::encoding::encoded_len_varint(n as u64);
        if n > budget {
            too_large.push(a.attempt_id.clone());
            continue;
        }
        if size + n > budget {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(a.clone());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    (out, too_large)
}

/// The limit after the controller refused a message as too large: half, but
/// never below [`MIN_MESSAGE_BYTES`]. Each refusal halves it, so a message
/// is resent at most log2(limit / 4096) times before what is in it fits or
/// is set aside.
pub fn shrink(limit: usize) -> usize {
    (limit / 2).max(MIN_MESSAGE_BYTES)
}

/// Whether a broken stream's status says the controller refused a message
/// as too large (tonic's decoder: OUT_OF_RANGE, "message length too large").
pub fn refused_as_too_large(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::OutOfRange
        || (s.code() == tonic::Code::ResourceExhausted && s.message().contains("message length too large"))
}

#[cfg(test)]
mod tests {
    use kcdsync_proto::v1::AgentMessage;
    use kcdsync_proto::v1::MigrationAttempts;
    use kcdsync_proto::v1::agent_message::Body;

    use super::*;

    fn attempt(id: usize, message_bytes: usize) -> MigrationAttempt {
        MigrationAttempt {
            attempt_id: format!("hv01.lab.test:{id}"),
            message: "x".repeat(message_bytes),
            ..Default::default()
        }
    }

    fn wire_len(batch: &[MigrationAttempt]) -> usize {
        AgentMessage {
            seq: u64::MAX,
            body: Some(Body::Attempts(MigrationAttempts {
                attempts: batch.to_vec(),
            })),
        }
        .encoded_len()
    }

    #[test]
    fn every_message_fits_the_limit_and_keeps_the_order() {
        let attempts: Vec<_> = (0..1000).map(|i| attempt(i, 100 + i % 700)).collect();
        let limit = 16 * 1024;
        let (batches, too_large) = batches(&attempts, limit);
        assert!(too_large.is_empty());
        assert!(batches.len() > 1);
        assert!(
            batches.iter().all(|b| wire_len(b) <= limit),
            "a message over {limit} bytes"
        );
        let flat: Vec<_> = batches.concat();
        assert_eq!(flat, attempts, "all of them, in order");
    }

    #[test]
    fn an_attempt_no_message_can_hold_is_named_not_sent() {
        let attempts = [attempt(1, 10), attempt(2, 5000), attempt(3, 10)];
        let (batches, too_large) = batches(&attempts, MIN_MESSAGE_BYTES);
        assert_eq!(too_large, ["hv01.lab.test:2"]);
        assert_eq!(batches.concat().len(), 2);
    }

    #[test]
    fn refusals_shrink_the_limit_to_a_floor() {
        let mut limit = 1 << 20;
        let mut refusals = 0;
        while limit > MIN_MESSAGE_BYTES {
            limit = shrink(limit);
            refusals += 1;
        }
        assert_eq!((limit, refusals), (MIN_MESSAGE_BYTES, 8));
        assert_eq!(shrink(limit), MIN_MESSAGE_BYTES);
    }

    #[test]
    fn the_decoders_refusal_is_recognised() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 2000000 bytes, the limit is: 1048576 bytes",
        );
        assert!(refused_as_too_large(&s));
        assert!(!refused_as_too_large(&tonic::Status::unavailable("bye")));
    }
}
