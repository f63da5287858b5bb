//! Boot-time measurement: from QEMU's spawn to a console line, repeated;
//! in host time, or in the guest's own clock (the line's timestamp).

use std::time::Duration;

use crate::vm::{Appliance, Vm, VmConfig, VmError};

/// Why a guest-time measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("boot the appliance")]
    Boot { source: VmError },
    #[error(
        "console line {line:?} has no guest timestamp (a `[seconds]` prefix, as printk and berth-init write)"
    )]
    NoTimestamp { line: String },
}

/// The guest clock a console line was stamped with: `[    1.616105] Run
/// /init` (printk) or `[     1.840] heartbeat: …` (berth-init's log).
pub fn guest_timestamp(line: &str) -> Option<Duration> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    let seconds: f64 = stamp.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Boots `appliance` `runs` times, like [`measure_boot`]; each sample is the
/// guest's clock on the first console line containing `pattern` (its
/// timestamp). With [`crate::vm::Accel::TcgIcount`] that clock counts guest
/// instructions, so the samples do not depend on the host.
pub fn measure_guest_boot(
    appliance: &Appliance,
    config: &VmConfig,
    pattern: &str,
    runs: usize,
    timeout: Duration,
) -> Result<Vec<Duration>, BenchError> {
    (0..runs)
        .map(|_| {
            let (line, _) = boot_to_line(appliance, config, pattern, timeout)
                .map_err(|source| BenchError::Boot { source })?;
            guest_timestamp(&line).ok_or(BenchError::NoTimestamp { line })
        })
        .collect()
}

/// Boots `appliance` `runs` times; each sample is the time from spawning QEMU
/// to the first console line containing `pattern`. Each VM is then stopped
/// with QMP `quit` (killed if that fails). On a failed run the whole console
/// of that run is printed to stderr and the error returned.
pub fn measure_boot(
    appliance: &Appliance,
    config: &VmConfig,
    pattern: &str,
    runs: usize,
    timeout: Duration,
) -> Result<Vec<Duration>, VmError> {
    (0..runs)
        .map(|_| boot_to_line(appliance, config, pattern, timeout).map(|(_, host)| host))
        .collect()
}

/// One boot up to the first console line containing `pattern`: the line and
/// the host time since QEMU's spawn. The VM is then stopped.
fn boot_to_line(
    appliance: &Appliance,
    config: &VmConfig,
    pattern: &str,
    timeout: Duration,
) -> Result<(String, Duration), VmError> {
    let vm = Vm::boot(appliance, config)?;
    let line = vm.or_dump(vm.wait_for_line(pattern, timeout))?;
    let host = vm.started_at().elapsed();
    if vm.qmp_quit().is_err() || vm.wait_exit(Duration::from_secs(30)).is_err() {
        vm.kill()?;
    }
    Ok((line, host))
}

/// The median of samples (mean of the middle two for an even count); zero
/// for none.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if !n.is_multiple_of(2) => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_timestamps_of_printk_and_berth_lines() {
        assert_eq!(
            guest_timestamp("[    1.616105] Run /init as init process"),
            Some(Duration::from_secs_f64(1.616105))
        );
        assert_eq!(
            guest_timestamp("[     1.840] heartbeat: beating every 2s"),
            Some(Duration::from_millis(1840))
        );
        for none in ["heartbeat: beating", "[x] y", "[ -1.0] y", "[1.0 y", ""] {
            assert_eq!(guest_timestamp(none), None, "{none:?}");
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(30), ms(10), ms(20)]), ms(20));
        assert_eq!(median(&[ms(40), ms(10), ms(20), ms(30)]), ms(25));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
