//! Boot-time measurement: from QEMU's spawn to a console line, repeated.

use std::time::Duration;

use crate::vm::{Appliance, Vm, VmConfig, VmError};

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
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let vm = Vm::boot(appliance, config)?;
        vm.or_dump(vm.wait_for_line(pattern, timeout))?;
        samples.push(vm.started_at().elapsed());
        if vm.qmp_quit().is_err() || vm.wait_exit(Duration::from_secs(30)).is_err() {
            vm.kill()?;
        }
    }
    Ok(samples)
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
    fn median_of_odd_even_and_empty() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(30), ms(10), ms(20)]), ms(20));
        assert_eq!(median(&[ms(40), ms(10), ms(20), ms(30)]), ms(25));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
