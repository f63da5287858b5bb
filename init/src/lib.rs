//! berth-init: the appliance manifest types and PID 1's building blocks.
//!
//! The binary (`main.rs`) is a thin shell over these modules: pure plans
//! (`order`, `bootplan`, `cmdline`, `modules`, `supervisor`) that unit tests
//! drive with a fake clock, and small executors (`event_loop`, `launcher`,
//! `boot`) that the root tests run for real.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::exit,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod beneath;
pub mod bootplan;
pub mod clock;
pub mod cmdline;
pub mod container;
pub mod event_loop;
pub mod fuzz;
pub mod identity;
pub mod launcher;
pub mod logging;
pub mod machine;
pub mod manifest;
pub mod modules;
pub mod net;
pub mod order;
pub mod power_button;
pub mod reaper;
pub mod rlimits;
pub mod rootfs;
pub mod service;
pub mod supervisor;
pub mod units;

pub use identity::IDENTITY;
