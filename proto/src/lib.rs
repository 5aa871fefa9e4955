//! The `kcdsync.v1` wire contract. Generated code lives here and only here:
//! other crates use these types and never hand-write wire messages.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kcdsync.v1");
}
