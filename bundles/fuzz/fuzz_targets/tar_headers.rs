#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = berth_bundles::fuzz::fuzz_tar_headers(data);
});
