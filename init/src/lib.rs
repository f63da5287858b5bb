//! berth-init: the appliance manifest types and PID 1's building blocks.
#![forbid(unsafe_code)]
