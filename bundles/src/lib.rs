//! berth-bundles: the OCI image spec, turned into runtime bundles.
#![forbid(unsafe_code)]

pub mod apply;
pub mod digest;
