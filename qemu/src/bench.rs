//! Boot-time measurement: from QEMU's spawn to a console line, repeated;
//! in host time, or in the guest's own clock (the line's timestamp). Under
//! TCG each sample also says how much guest code QEMU had translated by
//! then: code that runs for the first time costs a translation each, which
//! is most of what a boot spends under TCG beyond its instructions.

use std::time::Duration;

use serde_json::json;

use crate::vm::{Accel, Appliance, Vm, VmConfig, VmError};

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

/// One boot measured up to its console line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSample {
    /// Host time since QEMU's spawn, or the guest's clock on the line
    /// ([`measure_guest_boot`]).
    pub time: Duration,
    /// Translation blocks QEMU's TCG had generated when the line came (its
    /// `info jit` "TB count", read with the guest's CPUs stopped); `None`
    /// under KVM, which translates nothing.
    pub translated_blocks: Option<u64>,
}

/// The "TB count" of QEMU's `info jit` (HMP) output.
pub fn tb_count(info_jit: &str) -> Option<u64> {
    info_jit.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("TB count")?;
        rest.trim().parse().ok()
    })
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
) -> Result<Vec<BootSample>, BenchError> {
    (0..runs)
        .map(|_| {
            let boot = boot_to_line(appliance, config, pattern, timeout)
                .map_err(|source| BenchError::Boot { source })?;
            let line = boot.line;
            let time = guest_timestamp(&line).ok_or(BenchError::NoTimestamp { line })?;
            Ok(BootSample {
                time,
                translated_blocks: boot.translated_blocks,
            })
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
) -> Result<Vec<BootSample>, VmError> {
    (0..runs)
        .map(|_| {
            boot_to_line(appliance, config, pattern, timeout).map(|boot| BootSample {
                time: boot.host,
                translated_blocks: boot.translated_blocks,
            })
        })
        .collect()
}

struct LineBoot {
    line: String,
    host: Duration,
    translated_blocks: Option<u64>,
}

/// One boot up to the first console line containing `pattern`: the line,
/// the host time since QEMU's spawn and, under TCG, the translation blocks
/// so far. The VM is then stopped.
fn boot_to_line(
    appliance: &Appliance,
    config: &VmConfig,
    pattern: &str,
    timeout: Duration,
) -> Result<LineBoot, VmError> {
    let vm = Vm::boot(appliance, config)?;
    let line = vm.or_dump(vm.wait_for_line(pattern, timeout))?;
    let host = vm.started_at().elapsed();
    let translated = match config.accel {
        Accel::Kvm => Ok(None),
        Accel::Tcg | Accel::TcgIcount => translated_blocks(&vm).map(Some),
    };
    if vm.qmp_quit().is_err() || vm.wait_exit(Duration::from_secs(30)).is_err() {
        vm.kill()?;
    }
    Ok(LineBoot {
        line,
        host,
        translated_blocks: translated?,
    })
}

/// Stops the guest's CPUs (QMP `stop`: the count should not grow while it
/// is read) and reads TCG's translation block count from HMP `info jit`.
fn translated_blocks(vm: &Vm) -> Result<u64, VmError> {
    vm.qmp_execute("stop", None)?;
    let command = "human-monitor-command";
    let out = vm.qmp_execute(command, Some(json!({ "command-line": "info jit" })))?;
    let text = out.as_str().unwrap_or_default();
    tb_count(text).ok_or_else(|| VmError::QmpReply {
        command: format!("{command} info jit"),
        reply: text.chars().take(200).collect(),
        expected: "a \"TB count\" line",
    })
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

/// The median translated-block count of samples that all have one (mean
/// of the middle two for an even count); `None` if any lacks it (KVM) or
/// there are none.
pub fn median_translated_blocks(samples: &[BootSample]) -> Option<u64> {
    let mut blocks: Vec<u64> = samples
        .iter()
        .map(|s| s.translated_blocks)
        .collect::<Option<_>>()?;
    blocks.sort_unstable();
    let n = blocks.len();
    match n {
        0 => None,
        n if !n.is_multiple_of(2) => Some(blocks[n / 2]),
        n => Some((blocks[n / 2 - 1] + blocks[n / 2]) / 2),
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
    fn tb_count_from_info_jit() {
        // QEMU 7.2's `info jit`, abridged.
        let out = "Translation buffer state:\n\
                   gen code size       41331203/1073736704\n\
                   TB count            76551\n\
                   TB avg target size  17 max=2356 bytes\n\
                   TB hash buckets     27955/32768 (85.31% head buckets used)\n";
        assert_eq!(tb_count(out), Some(76551));
        for none in [
            "",
            "TB count",
            "TB count  many",
            "Translation buffer state:\n",
        ] {
            assert_eq!(tb_count(none), None, "{none:?}");
        }
    }

    #[test]
    fn median_translated_blocks_needs_every_sample() {
        let sample = |n| BootSample {
            time: Duration::from_millis(1),
            translated_blocks: n,
        };
        let three = [sample(Some(300)), sample(Some(100)), sample(Some(200))];
        assert_eq!(median_translated_blocks(&three), Some(200));
        assert_eq!(
            median_translated_blocks(&[sample(Some(100)), sample(Some(201))]),
            Some(150)
        );
        assert_eq!(
            median_translated_blocks(&[sample(Some(100)), sample(None)]),
            None
        );
        assert_eq!(median_translated_blocks(&[]), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(30), ms(10), ms(20)]), ms(20));
        assert_eq!(median(&[ms(40), ms(10), ms(20), ms(30)]), ms(25));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
