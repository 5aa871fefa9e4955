//! The `kcdsync.v1` wire contract. Generated code lives here and only here:
//! other crates use these types and never hand-write wire messages. Besides
//! them, only conversions every crate needs to fill those types (Unix ms <->
//! `Timestamp`).

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kcdsync.v1");
}

/// The encoded FileDescriptorSet of `kcdsync.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kcdsync_descriptor.bin"));

/// Unix milliseconds as a protobuf `Timestamp`. The wire carries
/// `Timestamp`s while stores and clocks count milliseconds; `div_euclid` /
/// `rem_euclid` keep `nanos` in `0..1e9` for instants before 1970 too, as
/// the protobuf contract requires.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf `Timestamp` as Unix milliseconds, sub-millisecond nanos
/// dropped (rounded towards the past). Saturates instead of overflowing for
/// a hostile `seconds`.
pub fn ms_from_timestamp(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(1_000_000)))
}

/// A protobuf `Timestamp` as Unix milliseconds, or `None` when it is not one: `nanos` outside
/// `0..1e9` (the protobuf contract) or `seconds` whose milliseconds overflow an i64. For values
/// that come off the wire, where saturating would turn garbage into a plausible instant.
pub fn checked_ms_from_timestamp(t: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_timestamps_round_trip() {
        for ms in [0, 1, 999, 1000, 1_595_374_458_918, -1, -999, -1000, -1001] {
            let t = timestamp_from_ms(ms);
            assert!((0..1_000_000_000).contains(&t.nanos), "{ms}: {t:?}");
            assert_eq!(ms_from_timestamp(&t), ms);
        }
        assert_eq!(
            timestamp_from_ms(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
        assert_eq!(
            timestamp_from_ms(1_595_374_458_918),
            prost_types::Timestamp {
                seconds: 1_595_374_458,
                nanos: 918_000_000
            }
        );
        let t = prost_types::Timestamp {
            seconds: 10,
            nanos: 999_999,
        };
        assert_eq!(ms_from_timestamp(&t), 10_000, "sub-millisecond nanos are dropped");
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(ms_from_timestamp(&huge), i64::MAX);
    }

    #[test]
    fn checked_conversion_refuses_what_is_not_a_timestamp() {
        let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(
            checked_ms_from_timestamp(&t(1_595_374_458, 918_000_001)),
            Some(1_595_374_458_918)
        );
        assert_eq!(checked_ms_from_timestamp(&t(-1, 999_000_000)), Some(-1));
        assert_eq!(checked_ms_from_timestamp(&t(i64::MAX, 0)), None);
        assert_eq!(checked_ms_from_timestamp(&t(i64::MIN, 0)), None);
        assert_eq!(checked_ms_from_timestamp(&t(i64::MAX / 1000, 999_999_999)), None);
        assert_eq!(checked_ms_from_timestamp(&t(10, -1)), None);
        assert_eq!(checked_ms_from_timestamp(&t(10, 1_000_000_000)), None);
        assert_eq!(checked_ms_from_timestamp(&t(10, i32::MIN)), None);
    }
}
