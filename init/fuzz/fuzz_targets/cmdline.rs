#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_init::fuzz::fuzz_cmdline(data);
});
