//! The `kcdsync.v1` wire contract. Generated code lives here and only here:
//! other crates use these types and never hand-write wire messages.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kcdsync.v1");
}

/// The encoded FileDescriptorSet of `kcdsync.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kcdsync_descriptor.bin"));
