//! berth-bundles: the OCI image spec, turned into runtime bundles.
#![forbid(unsafe_code)]

pub mod apply;
pub mod digest;
pub mod fuzz;
pub mod image;
pub mod layer;
pub mod small_file;
pub mod spec;
pub mod tar_guard;
pub mod unpack;

pub use image::{Image, ImageRef, Platform};
pub use layer::{DiffIdCheck, Execution, LayerOptions};
pub use spec::Overrides;
pub use unpack::{UnpackOptions, unpack_bundle};
