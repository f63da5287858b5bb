//! The one clock PID 1 reads: CLOCK_MONOTONIC in milliseconds. It never
//! jumps (an NTP step or a wrong RTC cannot trigger or stall a restart), and
//! on a VM it starts near zero at boot, like the kernel's console stamps.

use nix::time::{ClockId, clock_gettime};

use crate::service::Millis;

/// Milliseconds on CLOCK_MONOTONIC. clock_gettime cannot fail for this
/// clock id on Linux; 0 stands in if it ever does rather than panicking.
pub fn now_ms() -> Millis {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let ms = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
            secs.saturating_mul(1000).saturating_add(ms)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic() {
        let a = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now_ms();
        assert!(b >= a + 5, "{a} {b}");
    }
}
