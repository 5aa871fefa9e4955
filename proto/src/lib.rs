//! The `kcdsync.v1` wire contract. Generated code lives here and only here:
//! other crates use these types and never hand-write wire messages.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kcdsync.v1");
}

/// The encoded FileDescriptorSet of `kcdsync.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kcdsync_descriptor.bin"));

/// A wire timestamp from Unix milliseconds (negative values included).
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix milliseconds from a wire timestamp; the sub-millisecond part is dropped.
pub fn ms_from_timestamp(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + (t.nanos / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_through_timestamps() {
        for ms in [0, 1, 999, 1_000, 1_733_000_000_123, -1, -1_001] {
            assert_eq!(ms_from_timestamp(&timestamp_from_ms(ms)), ms, "{ms}");
        }
        assert_eq!(timestamp_from_ms(-1).nanos, 999_000_000);
    }
}
