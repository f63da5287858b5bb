//! The ACPI power button, which is what QEMU's `system_powerdown` presses.
//!
//! The kernel does nothing with the button by itself: the ACPI `button`
//! driver turns it into a KEY_POWER key press on an input device, and
//! `evdev` exposes that device as `/dev/input/eventN`. PID 1 finds the
//! devices that can send KEY_POWER (their `capabilities/key` bitmap in
//! sysfs), watches them in its event loop, and treats a press like SIGPWR.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// linux/input-event-codes.h
pub const EV_KEY: u16 = 0x01;
pub const KEY_POWER: u16 = 116;

/// `struct input_event` on 64-bit Linux: a `timeval` (two 64-bit words),
/// then `type: u16`, `code: u16`, `value: i32`.
pub const INPUT_EVENT_SIZE: usize = 24;

/// True if the `capabilities/key` bitmap (hex words as sysfs prints them,
/// most significant first, 64 bits each on 64-bit kernels) has `key`.
pub fn bitmap_has(bitmap: &str, key: u16) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let index = usize::from(key / 64);
    let bit = key % 64;
    // The last word printed holds bits 0..63.
    let Some(pos) = words.len().checked_sub(index + 1) else {
        return false;
    };
    words
        .get(pos)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .is_some_and(|w| w & (1u64 << bit) != 0)
}

/// True if `buf` (whole input events) holds a KEY_POWER press.
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|ev| {
        let field = |at: usize| {
            ev.get(at..at + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_ne_bytes)
        };
        let value = ev
            .get(20..24)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes);
        field(16) == Some(EV_KEY) && field(18) == Some(KEY_POWER) && value == Some(1)
    })
}

/// `/dev/input/eventN` for every input device under `sys_class_input`
/// (normally `/sys/class/input`) that can send KEY_POWER.
pub fn find_power_buttons(sys_class_input: &Path, dev_input: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            let caps = std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .unwrap_or_default();
            bitmap_has(&caps, KEY_POWER)
        })
        .map(|e| dev_input.join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Opens the devices non-blocking and close-on-exec.
pub fn open_power_buttons(paths: &[PathBuf]) -> Vec<(PathBuf, File)> {
    paths
        .iter()
        .filter_map(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open(p)
                .map_err(|e| log::warn!("open power button {}: {e}", p.display()))
                .ok()
                .map(|f| (p.clone(), f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut ev = vec![0u8; 16];
        ev.extend(kind.to_ne_bytes());
        ev.extend(code.to_ne_bytes());
        ev.extend(value.to_ne_bytes());
        ev
    }

    #[test]
    fn bitmaps() {
        // The ACPI power button as a 6.x kernel prints it: KEY_POWER only.
        assert!(bitmap_has("10000000000000 0", KEY_POWER));
        assert!(!bitmap_has("10000000000000 0", 115));
        // A keyboard: many words, KEY_POWER among them.
        let kbd = "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe";
        assert!(bitmap_has(kbd, KEY_POWER), "{kbd}");
        assert!(!bitmap_has("0", KEY_POWER));
        assert!(!bitmap_has("", KEY_POWER));
        assert!(!bitmap_has("zz 0", KEY_POWER));
        assert!(bitmap_has("1", 0));
    }

    #[test]
    fn presses() {
        let mut buf = event(0, 0, 0); // EV_SYN
        assert!(!has_power_press(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 0)); // release
        assert!(!has_power_press(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 1)); // press
        assert!(has_power_press(&buf));
        assert!(!has_power_press(&event(EV_KEY, 115, 1)));
        // A torn read (partial event) is not a press.
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 1)[..20]));
    }

    #[test]
    fn finds_devices_by_capability() {
        let root = std::env::temp_dir().join(format!("berth-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, caps) in [
            ("event0", "10000000000000 0"),
            ("event1", "0"),
            ("mouse0", "10000000000000 0"),
        ] {
            let d = root.join(name).join("device/capabilities");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("key"), caps).unwrap();
        }
        assert_eq!(
            find_power_buttons(&root, Path::new("/dev/input")),
            vec![PathBuf::from("/dev/input/event0")]
        );
        assert!(find_power_buttons(&root.join("missing"), Path::new("/dev/input")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
